// gemm_math.cuh — the implicit GEMM's math policies (deconv_gemm.cu): for each arithmetic (FFMA,
// DFMA, TF32 and 3×TF32 tensor cores, FP16/BF16 tensor cores) its tile shape, how its operand
// slices are staged in shared memory and how one slice is multiplied into the accumulators.
#pragma once
#include "deconv_common.cuh"
#include "mma.cuh"


#ifndef GEMM_MAX_TAPS
#define GEMM_MAX_TAPS 256
#endif
#ifndef GEMM_TILE_FFMA
#define GEMM_TILE_FFMA 128
#endif
#ifndef GEMM_TILE_DFMA
#define GEMM_TILE_DFMA 64
#endif
#ifndef GEMM_TILE_MMA
#define GEMM_TILE_MMA 128
#endif
#ifndef GEMM_PACK_ROW_BYTES
#define GEMM_PACK_ROW_BYTES 32
#endif

// cp.async and mma.sync arrive with compute capability 8.0. Below it (sm_70, sm_75) a module holds
// the FFMA and DFMA maths only (deconv_gemm.cu leaves the tensor-core entry points out), and they
// stage their element-wise operands through registers, as the 16-bit maths do on every GPU: loaded
// before the multiply of the current slice, stored to shared memory after it. The same arithmetic
// in the same order, so the results are bitwise those of the cp.async path. -DCUDECONV_NO_CP_ASYNC
// asks for the register path on any target (the emulator's tests of it).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define CUDECONV_NO_MMA
#ifndef CUDECONV_NO_CP_ASYNC
#define CUDECONV_NO_CP_ASYNC
#endif
#endif

namespace gemm {

constexpr int kThreads = 256;
#ifdef CUDECONV_NO_CP_ASYNC
constexpr bool kHasCpAsync = false;
#else
constexpr bool kHasCpAsync = true;
#endif

enum class Pass { Forward, GradInput };  // grad_weight has an iterator of its own

// ---------------------------------------------------------------------------------------------
// Math policies: tile shape, operand staging and the multiply of one shared-memory slice.

// SIMT FMA: a (BM/TM) × (BN/TN) grid of threads, each TM × TN outputs.
template <typename T, int Tile, int PerThread>
struct SimtMath {
    typedef T Element;
    typedef T Accumulator;
    static constexpr int BM = Tile, BN = Tile, BK = 8, PAD = 16 / sizeof(T) * 2;
    static constexpr bool kAsync = kHasCpAsync;  // else staged through registers
    static constexpr bool kPacksWeight = false;  // B of the forward and grad_input: the weight's own elements
    static constexpr int kMinBlocks = 2;  // blocks per SM the registers must allow (<= 128 per thread)
    static constexpr int kAccumulators = PerThread * PerThread;
    static constexpr int kThreadsN = BN / PerThread;
    static_assert((BM / PerThread) * (BN / PerThread) == kThreads, "one thread per PerThread × PerThread outputs");
    // k-major slices: a thread's PerThread rows (columns) of one k are contiguous (vector loads)
    static constexpr int kSliceA = BK * (BM + PAD), kSliceB = BK * (BN + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return k * (BM + PAD) + m; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * (BN + PAD) + n; }

    // Output (row, column) of accumulator i in the tile.
    __device__ static __forceinline__ int row_of(int i) { return (threadIdx.x / kThreadsN) * PerThread + i / PerThread; }
    __device__ static __forceinline__ int col_of(int i) { return (threadIdx.x % kThreadsN) * PerThread + i % PerThread; }

    template <bool kPackedB>  // always false: this math reads the weight unpacked
    __device__ static __forceinline__ void multiply(const T* a, const T* b, T acc[kAccumulators]) {
        const int row0 = (threadIdx.x / kThreadsN) * PerThread, col0 = (threadIdx.x % kThreadsN) * PerThread;
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            T a_values[PerThread], b_values[PerThread];
#pragma unroll
            for (int i = 0; i < PerThread; ++i) a_values[i] = a[a_offset(k, row0 + i)];
#pragma unroll
            for (int j = 0; j < PerThread; ++j) b_values[j] = b[b_offset(k, col0 + j)];
#pragma unroll
            for (int i = 0; i < PerThread; ++i)
#pragma unroll
                for (int j = 0; j < PerThread; ++j) acc[i * PerThread + j] = fma(a_values[i], b_values[j], acc[i * PerThread + j]);
        }
    }
};

// Tensor cores: 8 warps as 4 (rows) × 2 (columns), each a 32 × 64 tile of 2 × 8 mma tiles of 16 × 8.
// Accumulator index ((i·8 + j)·4 + r): mma tile (i, j), register r of the PTX C/D layout.
template <typename T, int StepK, int SliceK, int Pad>
struct MmaTiles {
    typedef T Element;
    typedef float Accumulator;
    static constexpr int BM = GEMM_TILE_MMA, BN = GEMM_TILE_MMA, BK = SliceK, PAD = Pad;
    static constexpr int kAccumulators = 2 * 8 * 4;
    static_assert(BM == 128 && BN == 128 && kThreads == 256, "8 warps as 4 × 2 warp tiles of 32 × 64");
    __device__ static __forceinline__ int warp_row() { return (threadIdx.x / 32 / 2) * 32; }
    __device__ static __forceinline__ int warp_col() { return (threadIdx.x / 32 % 2) * 64; }
    __device__ static __forceinline__ int row_of(int i) {
        const int lane = threadIdx.x % 32;
        return warp_row() + (i / 32) * 16 + (lane >> 2) + ((i % 4) >= 2 ? 8 : 0);
    }
    __device__ static __forceinline__ int col_of(int i) {
        const int lane = threadIdx.x % 32;
        return warp_col() + (i / 4 % 8) * 8 + 2 * (lane % 4) + (i % 2);
    }
};

// TF32 (Split3 = false) or 3×TF32 (true). A fragment (PTX m16n8k8 .tf32): a0 (g, t), a1 (g+8, t),
// a2 (g, t+4), a3 (g+8, t+4); B: b0 (t, g), b1 (t+4, g); g = lane >> 2, t = lane % 4. A slices are
// m-major rows of 16 floats + 4 of padding (80 bytes: the 8 rows an ldmatrix reads fall in
// distinct banks); read as b16 pairs, an 8 × 8 ldmatrix matrix is 8 rows × 4 floats, so
// ldmatrix.x4 (not .trans) gives a0..a3 of a 16 × 8 tile. B slices are k-major, as the packed
// weight's 16-byte chunks land, rows of 128 + 8 floats: b0 and b1 are one 4-byte load each, and
// the warp's 32 loads (rows t, columns g) hit banks 8t + g, all distinct. The packed weight is
// already TF32 (rounded in the packing): only tf32x3 splits it, and grad_weight's B is rounded here.
template <bool Split3>
struct Tf32Math : MmaTiles<float, 8, 16, 4> {
    static constexpr bool kAsync = true;
    static constexpr bool kPacksWeight = true, kPackRoundsTf32 = !Split3;
    // 2 blocks per SM (<= 128 registers) for tf32; 3×TF32 keeps twice the fragments and takes one
    static constexpr int kMinBlocks = Split3 ? 1 : 2;
    static constexpr int kRowB = BN + 8;
    static constexpr int kSliceA = BM * (BK + PAD), kSliceB = BK * kRowB;
    __device__ static __forceinline__ int a_offset(int k, int m) { return m * (BK + PAD) + k; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * kRowB + n; }
    __device__ static __forceinline__ void round(unsigned* r, int count, unsigned* small) {
#pragma unroll
        for (int i = 0; i < count; ++i) {
            const float x = __uint_as_float(r[i]);
            r[i] = float_to_tf32(x);
            if (Split3) small[i] = float_to_tf32(x - __uint_as_float(r[i]));
        }
    }
    template <bool kPackedB>
    __device__ static __forceinline__ void multiply(const float* a, const float* b, float acc[kAccumulators]) {
        const int lane = threadIdx.x % 32;
        const int row0 = warp_row(), col0 = warp_col();
#pragma unroll
        for (int k = 0; k < BK; k += 8) {
            unsigned a_big[2][4], a_small[2][4], b_big[8][2], b_small[8][2];
            // A: matrices (rows 0-7, k 0-3), (rows 8-15, k 0-3), (rows 0-7, k 4-7), (rows 8-15, k 4-7)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                ldmatrix_x4(a_big[i], a + a_offset(k + (lane / 16) * 4, row0 + i * 16 + lane % 16));
                round(a_big[i], 4, a_small[i]);
            }
            // B: column tile j, b0 = (k + t, g), b1 = (k + t + 4, g)
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float* b0 = b + b_offset(k + lane % 4, col0 + j * 8 + lane / 4);
                b_big[j][0] = __float_as_uint(b0[0]);
                b_big[j][1] = __float_as_uint(b0[4 * kRowB]);
                if (Split3 || !kPackedB) round(b_big[j], 2, b_small[j]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    float* c = acc + (i * 8 + j) * 4;
                    if (Split3) {  // the small products first: they would vanish next to the big one
                        mma_m16n8k8_tf32(c, a_small[i], b_big[j], c);
                        mma_m16n8k8_tf32(c, a_big[i], b_small[j], c);
                    }
                    mma_m16n8k8_tf32(c, a_big[i], b_big[j], c);
                }
        }
    }
};

// FP16 and BF16: fragments by ldmatrix.trans from the k-major slices (rows of 136 halves: 272
// bytes, so the 8 rows one ldmatrix reads fall in distinct banks). A (m16n8k16): matrices (k 0-7,
// m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15) = a0..a3; B: (k 0-7, n), (k 8-15, n)
// = b0, b1. The two types share the layout (16-bit elements); only the mma instruction differs.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                                             const __half*) {
    mma_m16n8k16_f16(d, a, b, c);
}
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                                             const __nv_bfloat16*) {
    mma_m16n8k16_bf16(d, a, b, c);
}

template <typename T16>
struct Mma16Math : MmaTiles<T16, 16, 32, 8> {
    typedef MmaTiles<T16, 16, 32, 8> Tiles;
    using Tiles::BM;
    using Tiles::BN;
    using Tiles::BK;
    using Tiles::PAD;
    using Tiles::kAccumulators;
    using Tiles::warp_row;
    using Tiles::warp_col;
    static constexpr bool kAsync = false;
    static constexpr bool kPacksWeight = true, kPackRoundsTf32 = false;
    static constexpr int kMinBlocks = 1;  // the staged registers of the next slice: ~170 registers
    static constexpr int kSliceA = BK * (BM + PAD), kSliceB = BK * (BN + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return k * (BM + PAD) + m; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * (BN + PAD) + n; }
    template <bool kPackedB>  // the packed weight reads like any other B slice
    __device__ static __forceinline__ void multiply(const T16* a, const T16* b, float acc[kAccumulators]) {
        const int lane = threadIdx.x % 32;
        const int row0 = warp_row(), col0 = warp_col();
#pragma unroll
        for (int k = 0; k < BK; k += 16) {
            unsigned a_frag[2][4], b_frag[8][2];
#pragma unroll
            for (int i = 0; i < 2; ++i)
                ldmatrix_x4_trans(a_frag[i], a + a_offset(k + lane % 8 + (lane / 16) * 8, row0 + i * 16 + (lane / 8 % 2) * 8));
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                unsigned pair[4];
                ldmatrix_x4_trans(pair, b + b_offset(k + lane % 16, col0 + j * 8 + (lane / 16) * 8));
                b_frag[j][0] = pair[0];
                b_frag[j][1] = pair[1];
                b_frag[j + 1][0] = pair[2];
                b_frag[j + 1][1] = pair[3];
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    mma_m16n8k16(acc + (i * 8 + j) * 4, a_frag[i], b_frag[j], acc + (i * 8 + j) * 4, a);
        }
    }
};

typedef Mma16Math<__half> F16Math;
typedef Mma16Math<__nv_bfloat16> Bf16Math;
typedef SimtMath<float, GEMM_TILE_FFMA, 8> F32Math;
typedef SimtMath<double, GEMM_TILE_DFMA, 4> F64Math;

}  // namespace gemm
