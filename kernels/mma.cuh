// Tensor-core and asynchronous-copy primitives: the only place kernels touch these instructions.
//
//   mma_m16n8k8_tf32    mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32    D = A·B + C
//   mma_m16n8k16_f16    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
//   mma_m16n8k16_bf16   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//   float_to_tf32       cvt.rna.tf32.f32 (round to nearest, ties away; low 13 bits zero)
//   ldmatrix_x{1,2,4}[_trans]   ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//   cp_async_{4,8,16}   cp.async.{ca,ca,cg}.shared.global with src-size (the rest zero-filled)
//   cp_async_commit / cp_async_wait<N> / cp_async_wait_all
//   ld_shared_16        ld.shared.v4.b32: 16 bytes (16-byte aligned) of shared memory, one access
//
// Registers are arrays numbered as in the PTX ISA ("Matrix Fragments for mma.m16n8k8 / m16n8k16");
// an f16/bf16 register holds two elements, the lower-numbered one in the low 16 bits. With
// groupID = lane >> 2 and tig = lane % 4:
//   tf32 A (16×8):  a0 (g, tig)   a1 (g+8, tig)   a2 (g, tig+4)   a3 (g+8, tig+4)
//   tf32 B (8×8):   b0 (tig, g)   b1 (tig+4, g)
//   f16  A (16×16): a0 (g, 2tig..+1)  a1 (g+8, 2tig..+1)  a2 (g, 2tig+8..+9)  a3 (g+8, 2tig+8..+9)
//   f16  B (16×8):  b0 (2tig..+1, g)  b1 (2tig+8..+9, g)
//   C, D (16×8):    c0 (g, 2tig)  c1 (g, 2tig+1)  c2 (g+8, 2tig)  c3 (g+8, 2tig+1)
// ldmatrix: lanes 8i..8i+7 give the shared-memory addresses of matrix i's 8 rows (16 bytes each,
// 16-byte aligned); lane t gets r[i] = row t/4, columns 2(t%4), 2(t%4)+1 (with _trans: rows
// 2(t%4), 2(t%4)+1 of column t/4). Copies issued by cp_async_* may be read only after the
// cp_async_wait that covers their commit group, and by other threads only after a
// __syncthreads() that follows it.
//
// On the GPU each wrapper is inline PTX (sm_80 or newer; NVRTC and nvcc). Under CUDECONV_EMULATOR
// each calls the CPU emulator's implementation of the instruction (cudeconv/emulator/cudeconv_emu.h),
// which follows the same layouts, so a misplaced register fails on the CPU as on the GPU.
#pragma once

#ifdef CUDECONV_EMULATOR

__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    cudeconv_emu::mma_m16n8k8_tf32(d, a, b, c);
}
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    cudeconv_emu::mma_m16n8k16_f16(d, a, b, c);
}
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    cudeconv_emu::mma_m16n8k16_bf16(d, a, b, c);
}
__device__ __forceinline__ unsigned float_to_tf32(float x) { return cudeconv_emu::float_to_tf32(x); }

__device__ __forceinline__ void ldmatrix_x1(unsigned r[1], const void* row) { cudeconv_emu::ldmatrix_sync<1, false>(r, row); }
__device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const void* row) { cudeconv_emu::ldmatrix_sync<2, false>(r, row); }
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) { cudeconv_emu::ldmatrix_sync<4, false>(r, row); }
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned r[1], const void* row) { cudeconv_emu::ldmatrix_sync<1, true>(r, row); }
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const void* row) { cudeconv_emu::ldmatrix_sync<2, true>(r, row); }
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* row) { cudeconv_emu::ldmatrix_sync<4, true>(r, row); }

__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* gmem_src, int src_bytes,
                                           const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()) {
    cudeconv_emu::cp_async<4>(smem_dst, gmem_src, src_bytes, site_file, site_line);
}
__device__ __forceinline__ void cp_async_8(void* smem_dst, const void* gmem_src, int src_bytes,
                                           const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()) {
    cudeconv_emu::cp_async<8>(smem_dst, gmem_src, src_bytes, site_file, site_line);
}
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes,
                                           const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()) {
    cudeconv_emu::cp_async<16>(smem_dst, gmem_src, src_bytes, site_file, site_line);
}
__device__ __forceinline__ void cp_async_commit() { cudeconv_emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0, "cp.async.wait_group takes a non-negative group count");
    cudeconv_emu::cp_async_wait_group(N);
}
// one 16-byte access for the profile's banks and the race detector (the CPU compiler would split it)
__device__ __forceinline__ void ld_shared_16(void* to, const void* from) { cudeconv_emu::load_shared<16>(to, from); }
__device__ __forceinline__ void cp_async_wait_all() { cudeconv_emu::cp_async_wait_all(); }

#else  // the GPU: inline PTX

// D = A·B + C with f32 accumulators; SHAPE_TYPES completes "mma.sync.aligned.".
#define CUDECONV_MMA_F32(NAME, SHAPE_TYPES)                                                                  \
    __device__ __forceinline__ void NAME(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) { \
        asm volatile("mma.sync.aligned." SHAPE_TYPES " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "               \
                     "{%10,%11,%12,%13};\n"                                                                   \
                     : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                         \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),                      \
                       "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));                                           \
    }
CUDECONV_MMA_F32(mma_m16n8k8_tf32, "m16n8k8.row.col.f32.tf32.tf32.f32")
CUDECONV_MMA_F32(mma_m16n8k16_f16, "m16n8k16.row.col.f32.f16.f16.f32")
CUDECONV_MMA_F32(mma_m16n8k16_bf16, "m16n8k16.row.col.f32.bf16.bf16.f32")
#undef CUDECONV_MMA_F32
__device__ __forceinline__ unsigned float_to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ldmatrix_x{1,2,4}[_trans]: REGISTERS is the PTX operand list, the rest its output constraints.
#define CUDECONV_LDMATRIX(NAME, COUNT, SUFFIX, REGISTERS, ...)                                            \
    __device__ __forceinline__ void NAME(unsigned r[COUNT], const void* row) {                             \
        asm volatile("ldmatrix.sync.aligned.m8n8.x" #COUNT SUFFIX ".shared.b16 " REGISTERS ";\n"          \
                     : __VA_ARGS__ : "r"(shared_address(row)));                                           \
    }
CUDECONV_LDMATRIX(ldmatrix_x1, 1, "", "{%0}, [%1]", "=r"(r[0]))
CUDECONV_LDMATRIX(ldmatrix_x2, 2, "", "{%0,%1}, [%2]", "=r"(r[0]), "=r"(r[1]))
CUDECONV_LDMATRIX(ldmatrix_x4, 4, "", "{%0,%1,%2,%3}, [%4]", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
CUDECONV_LDMATRIX(ldmatrix_x1_trans, 1, ".trans", "{%0}, [%1]", "=r"(r[0]))
CUDECONV_LDMATRIX(ldmatrix_x2_trans, 2, ".trans", "{%0,%1}, [%2]", "=r"(r[0]), "=r"(r[1]))
CUDECONV_LDMATRIX(ldmatrix_x4_trans, 4, ".trans", "{%0,%1,%2,%3}, [%4]", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]),
                  "=r"(r[3]))
#undef CUDECONV_LDMATRIX

// .ca (cache in L1) for 4 and 8 bytes, .cg (L2 only) for 16 bytes, the only size .cg allows.
__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* gmem_src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(shared_address(smem_dst)), "l"(gmem_src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_8(void* smem_dst, const void* gmem_src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n"
                 :: "r"(shared_address(smem_dst)), "l"(gmem_src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(shared_address(smem_dst)), "l"(gmem_src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void ld_shared_16(void* to, const void* from) {
    *static_cast<uint4*>(to) = *static_cast<const uint4*>(from);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0, "cp.async.wait_group takes a non-negative group count");
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

#endif
