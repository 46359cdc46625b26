// Test kernels for kernels/mma.cuh: each loads fragments from global memory with the PTX ISA's
// layout formulas written out here (not the emulator's), calls one wrapper and stores the result
// by the documented layout, so tests/test_mma_primitives.py can compare with NumPy. Also a
// 64×64 tiled matrix product on cp.async double buffering + ldmatrix + mma (tf32, f16, bf16).
// Sections: fragment layout probes, ldmatrix, cp.async, the tiled product.
#include "../../kernels/mma.cuh"

// ---- fragment layout probes (one warp) ------------------------------------------------------
// swap_registers != 0 swaps a1 and a2 before the mma: a deliberately misplaced register.

// The deliberate mistake: a1 and a2 swapped.
__device__ __forceinline__ void misplace(unsigned a[4]) {
    const unsigned t = a[1];
    a[1] = a[2];
    a[2] = t;
}

// C and D (16×8 row-major float): ci at row groupID (+8 for c2, c3), column 2·tig + (i & 1).
__device__ __forceinline__ void load_accumulator(const float* matrix, float c[4]) {
    const int group = threadIdx.x % 32 >> 2, tig = threadIdx.x % 4;
    for (int i = 0; i < 4; ++i) c[i] = matrix[(group + (i >= 2 ? 8 : 0)) * 8 + 2 * tig + (i & 1)];
}
__device__ __forceinline__ void store_accumulator(float* matrix, const float d[4]) {
    const int group = threadIdx.x % 32 >> 2, tig = threadIdx.x % 4;
    for (int i = 0; i < 4; ++i) matrix[(group + (i >= 2 ? 8 : 0)) * 8 + 2 * tig + (i & 1)] = d[i];
}

// D (16×8) = A (16×8) · B (8×8) + C, all row-major float. round_operands: cvt.rna first, else
// the raw float bits are passed (the tensor core then ignores their low 13 bits).
extern "C" __global__ void __launch_bounds__(32)
probe_mma_tf32(const float* a_matrix, const float* b_matrix, const float* c_matrix, float* d_matrix,
               int round_operands, int swap_registers) {
    const int lane = threadIdx.x, group = lane >> 2, tig = lane % 4;
    const float a_values[4] = {a_matrix[group * 8 + tig], a_matrix[(group + 8) * 8 + tig],
                               a_matrix[group * 8 + tig + 4], a_matrix[(group + 8) * 8 + tig + 4]};
    const float b_values[2] = {b_matrix[tig * 8 + group], b_matrix[(tig + 4) * 8 + group]};
    unsigned a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = round_operands ? float_to_tf32(a_values[i]) : __float_as_uint(a_values[i]);
    for (int i = 0; i < 2; ++i) b[i] = round_operands ? float_to_tf32(b_values[i]) : __float_as_uint(b_values[i]);
    if (swap_registers) misplace(a);
    float c[4], d[4];
    load_accumulator(c_matrix, c);
    mma_m16n8k8_tf32(d, a, b, c);
    store_accumulator(d_matrix, d);
}

__device__ __forceinline__ unsigned pack_halves(unsigned short low, unsigned short high) {
    return static_cast<unsigned>(low) | static_cast<unsigned>(high) << 16;
}

// D (16×8) = A (16×16) · B (16×8) + C; A and B hold f16 (is_bf16 == 0) or bf16 bit patterns.
extern "C" __global__ void __launch_bounds__(32)
probe_mma_k16(const unsigned short* a_matrix, const unsigned short* b_matrix, const float* c_matrix,
              float* d_matrix, int is_bf16, int swap_registers) {
    const int lane = threadIdx.x, group = lane >> 2, tig = lane % 4;
    unsigned a[4], b[2];
    // ai: row groupID (+8 for a2, a3, a6, a7), column 2·tig + (i & 1) (+8 for i >= 4)
    for (int r = 0; r < 4; ++r) {
        const int row = group + ((r & 1) ? 8 : 0), col = 2 * tig + ((r & 2) ? 8 : 0);
        a[r] = pack_halves(a_matrix[row * 16 + col], a_matrix[row * 16 + col + 1]);
    }
    // bi: row 2·tig + (i & 1) (+8 for i >= 2), column groupID
    for (int r = 0; r < 2; ++r) {
        const int row = 2 * tig + r * 8;
        b[r] = pack_halves(b_matrix[row * 8 + group], b_matrix[(row + 1) * 8 + group]);
    }
    if (swap_registers) misplace(a);
    float c[4], d[4];
    load_accumulator(c_matrix, c);
    if (is_bf16)
        mma_m16n8k16_bf16(d, a, b, c);
    else
        mma_m16n8k16_f16(d, a, b, c);
    store_accumulator(d_matrix, d);
}

extern "C" __global__ void __launch_bounds__(256) round_to_tf32(const float* x, unsigned* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = float_to_tf32(x[i]);
}

// A warp-collective misused: `exit_lane` returns before the mma (-1: none). Launched with
// fewer than 32 threads it runs in a partial warp.
extern "C" __global__ void probe_mma_misuse(float* d_matrix, int exit_lane) {
    if (static_cast<int>(threadIdx.x) == exit_lane) return;
    const unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    const float c[4] = {1, 1, 1, 1};
    float d[4];
    mma_m16n8k8_tf32(d, a, b, c);
    d_matrix[threadIdx.x] = d[0];
}

// ---- ldmatrix ----------------------------------------------------------------------------------
// rows: 32 rows of 8 b16 elements; the row that lane l addresses (matrix l / 8, row l % 8) is
// stored in shared memory at slot (5·l + 3) % 32, 24 elements apart, so the result depends on
// each lane's own address. out[lane·4 + i] = register i. variant: 1, 2, 4 (+ 8 for .trans).
// address_offset moves every address by that many bytes (misaligned, or out of shared memory).
extern "C" __global__ void __launch_bounds__(32)
probe_ldmatrix(const unsigned short* rows, unsigned* out, int variant, int address_offset, int use_global_address) {
    constexpr int kRowStride = 24;
    __shared__ __align__(16) unsigned short tile[32 * kRowStride];
    const int lane = threadIdx.x;
    const int slot = (5 * lane + 3) % 32;
    for (int c = 0; c < 8; ++c) tile[slot * kRowStride + c] = rows[lane * 8 + c];
    __syncthreads();
    const unsigned char* row = reinterpret_cast<const unsigned char*>(
        use_global_address ? rows + lane * 8 : tile + slot * kRowStride);
    row += address_offset;
    unsigned r[4] = {0, 0, 0, 0};
    switch (variant) {
        case 1: ldmatrix_x1(r, row); break;
        case 2: ldmatrix_x2(r, row); break;
        case 4: ldmatrix_x4(r, row); break;
        case 9: ldmatrix_x1_trans(r, row); break;
        case 10: ldmatrix_x2_trans(r, row); break;
        case 12: ldmatrix_x4_trans(r, row); break;
    }
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// ---- cp.async ----------------------------------------------------------------------------------
// Each thread copies 4 floats (16 bytes, or `copy_bytes` 4/8 of them) from source + 4·thread
// with src-size `source_bytes` and reads its destination before the wait (before[]) and after
// (after[]); with read_neighbour the read after the wait is of the next thread's copy, and
// neighbour_barrier puts the __syncthreads that makes it visible in between.
extern "C" __global__ void __launch_bounds__(128)
probe_cp_async(const float* source, float* before, float* after, int copy_bytes, int source_bytes,
               int source_offset_floats, int read_neighbour, int neighbour_barrier) {
    __shared__ __align__(16) float staging[128 * 4];
    const int t = threadIdx.x;
    float* destination = staging + 4 * t;
    const float* from = source + 4 * t + source_offset_floats;
    if (copy_bytes == 4) cp_async_4(destination, from, source_bytes);
    else if (copy_bytes == 8) cp_async_8(destination, from, source_bytes);
    else cp_async_16(destination, from, source_bytes);
    cp_async_commit();
    for (int i = 0; i < 4; ++i) before[4 * t + i] = destination[i];
    cp_async_wait<0>();
    if (neighbour_barrier) __syncthreads();
    const float* seen = read_neighbour ? staging + 4 * ((t + 1) % blockDim.x) : destination;
    for (int i = 0; i < 4; ++i) after[4 * t + i] = seen[i];
}

// Three commit groups in flight, one float4 each; observed[stage·12 + group·4 + i] is the
// destination of `group` after wait<2>, wait<1>, wait<0> (stage 0, 1, 2): groups 0..stage must
// have landed by then, the newer ones may still be in flight. One thread.
extern "C" __global__ void __launch_bounds__(32) probe_cp_async_groups(const float* source, float* observed) {
    __shared__ __align__(16) float staging[12];
    if (threadIdx.x != 0) return;
    for (int group = 0; group < 3; ++group) {
        cp_async_16(staging + 4 * group, source + 4 * group, 16);
        cp_async_commit();
    }
    cp_async_wait<2>();
    for (int i = 0; i < 12; ++i) observed[i] = staging[i];
    cp_async_wait<1>();
    for (int i = 0; i < 12; ++i) observed[12 + i] = staging[i];
    cp_async_wait<0>();
    for (int i = 0; i < 12; ++i) observed[24 + i] = staging[i];
}

// A cp.async whose destination is global memory (not allowed).
extern "C" __global__ void probe_cp_async_to_global(const float* source, float* destination) {
    cp_async_16(destination, source, 16);
    cp_async_wait_all();
}

// ---- the tiled product: C (M×N, float) = A (M×K) · B -----------------------------------------
// A block of 128 threads (4 warps, 2×2, each 32×32 of C as 2×4 mma tiles) computes a 64×64 tile
// of C, looping over K in slices of 64 bytes per row: 16 floats (tf32) or 32 halves. Slices are
// double-buffered in shared memory: the cp.async copies of slice k+1 are in flight while slice k
// is multiplied. Rows in shared memory are padded by 16 bytes, so the 8 rows an ldmatrix reads
// fall in distinct banks. Requires M, N multiples of 64 and K a multiple of the slice.
//   tf32: A row-major M×K, B given transposed (N×K row-major: the mma's "col" operand), both
//         float, rounded with cvt.rna.tf32 after ldmatrix.
//   f16 / bf16: A row-major M×K, B row-major K×N, bit patterns; B fragments by ldmatrix.trans.
namespace tiled {
constexpr int kTile = 64, kThreads = 128, kSliceBytes = 64, kPadBytes = 16;
constexpr int kRowBytes = kSliceBytes + kPadBytes;  // one row of a K-slice in shared memory

// Copies a rows × 64-byte block (row stride `stride_bytes` in global memory) into shared memory
// rows of `shared_row_bytes`, 16 bytes per cp.async.
__device__ __forceinline__ void copy_block(unsigned char* shared, int shared_row_bytes, const unsigned char* global,
                                           long long stride_bytes, int rows, int row_bytes) {
    const int chunks_per_row = row_bytes / 16;
    for (int chunk = threadIdx.x; chunk < rows * chunks_per_row; chunk += kThreads) {
        const int row = chunk / chunks_per_row, column = chunk % chunks_per_row;
        cp_async_16(shared + row * shared_row_bytes + column * 16, global + row * stride_bytes + column * 16, 16);
    }
}

template <bool IsTf32, bool IsBf16>
__device__ void product(const void* a_matrix, const void* b_matrix, float* c_matrix, int m_size, int n_size, int k_size) {
    constexpr int kElementBytes = IsTf32 ? 4 : 2;
    constexpr int kSliceElements = kSliceBytes / kElementBytes;
    constexpr int kStepK = IsTf32 ? 8 : 16;  // k of one mma
    // B slice: tf32 N rows of 64 bytes; f16 kSliceElements rows of the 64 columns (128 bytes + pad)
    constexpr int kBRowBytes = IsTf32 ? kRowBytes : kTile * 2 + kPadBytes;
    constexpr int kBRows = IsTf32 ? kTile : kSliceElements;
    __shared__ __align__(16) unsigned char a_tiles[2][kTile * kRowBytes];
    __shared__ __align__(16) unsigned char b_tiles[2][kBRows * kBRowBytes];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_m = (warp / 2) * 32, warp_n = (warp % 2) * 32;
    const int block_m = blockIdx.y * kTile, block_n = blockIdx.x * kTile;
    const unsigned char* a_bytes = static_cast<const unsigned char*>(a_matrix);
    const unsigned char* b_bytes = static_cast<const unsigned char*>(b_matrix);
    const long long a_stride = static_cast<long long>(k_size) * kElementBytes;
    const long long b_stride = static_cast<long long>(IsTf32 ? k_size : n_size) * kElementBytes;

    auto load_slice = [&](int slice, int buffer) {
        const long long k0 = static_cast<long long>(slice) * kSliceElements;
        copy_block(a_tiles[buffer], kRowBytes, a_bytes + block_m * a_stride + k0 * kElementBytes, a_stride, kTile,
                   kSliceBytes);
        if (IsTf32)
            copy_block(b_tiles[buffer], kBRowBytes, b_bytes + block_n * b_stride + k0 * kElementBytes, b_stride, kTile,
                       kSliceBytes);
        else
            copy_block(b_tiles[buffer], kBRowBytes, b_bytes + k0 * b_stride + block_n * kElementBytes, b_stride,
                       kSliceElements, kTile * 2);
        cp_async_commit();
    };

    float acc[2][4][4];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    const int slices = k_size / kSliceElements;
    load_slice(0, 0);
    for (int slice = 0; slice < slices; ++slice) {
        const int buffer = slice & 1;
        if (slice + 1 < slices) {
            load_slice(slice + 1, buffer ^ 1);
            cp_async_wait<1>();  // this slice has landed; the next may still be in flight
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        for (int k0 = 0; k0 < kSliceElements; k0 += kStepK) {
            unsigned a[2][4], b[4][2];
            // A: matrices (rows 0-7, k lo), (rows 8-15, k lo), (rows 0-7, k hi), (rows 8-15, k hi)
            for (int i = 0; i < 2; ++i) {
                const int row = warp_m + i * 16 + lane % 16;
                const int k = k0 + (lane / 16) * (kStepK / 2);
                ldmatrix_x4(a[i], a_tiles[buffer] + row * kRowBytes + k * kElementBytes);
            }
            for (int j = 0; j < 4; j += 2) {
                unsigned pair[4];
                if (IsTf32) {
                    // B^T rows n: matrices (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi)
                    const int n = warp_n + j * 8 + (lane / 16) * 8 + lane % 8;
                    const int k = k0 + ((lane / 8) % 2) * 4;
                    ldmatrix_x4(pair, b_tiles[buffer] + n * kBRowBytes + k * 4);
                } else {
                    // B rows k: matrices (k 0-7, n lo), (k 8-15, n lo), (k 0-7, n hi), (k 8-15, n hi)
                    const int k = k0 + lane % 16;
                    const int n = warp_n + j * 8 + (lane / 16) * 8;
                    ldmatrix_x4_trans(pair, b_tiles[buffer] + k * kBRowBytes + n * 2);
                }
                b[j][0] = pair[0];
                b[j][1] = pair[1];
                b[j + 1][0] = pair[2];
                b[j + 1][1] = pair[3];
            }
            if (IsTf32) {
                for (int i = 0; i < 2; ++i)
                    for (int r = 0; r < 4; ++r) a[i][r] = float_to_tf32(__uint_as_float(a[i][r]));
                for (int j = 0; j < 4; ++j)
                    for (int r = 0; r < 2; ++r) b[j][r] = float_to_tf32(__uint_as_float(b[j][r]));
            }
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 4; ++j) {
                    if (IsTf32) mma_m16n8k8_tf32(acc[i][j], a[i], b[j], acc[i][j]);
                    else if (IsBf16) mma_m16n8k16_bf16(acc[i][j], a[i], b[j], acc[i][j]);
                    else mma_m16n8k16_f16(acc[i][j], a[i], b[j], acc[i][j]);
                }
        }
        __syncthreads();  // every warp is done with this buffer before it is refilled
    }
    const int group = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            for (int half = 0; half < 2; ++half) {
                const int row = block_m + warp_m + i * 16 + group + half * 8;
                const int col = block_n + warp_n + j * 8 + 2 * tig;
                float* out = c_matrix + static_cast<long long>(row) * n_size + col;
                out[0] = acc[i][j][2 * half];
                out[1] = acc[i][j][2 * half + 1];
            }
}
}  // namespace tiled

extern "C" __global__ void __launch_bounds__(tiled::kThreads)
tiled_product_tf32(const float* a, const float* b_transposed, float* c, int m, int n, int k) {
    tiled::product<true, false>(a, b_transposed, c, m, n, k);
}
extern "C" __global__ void __launch_bounds__(tiled::kThreads)
tiled_product_f16(const unsigned short* a, const unsigned short* b, float* c, int m, int n, int k) {
    tiled::product<false, false>(a, b, c, m, n, k);
}
extern "C" __global__ void __launch_bounds__(tiled::kThreads)
tiled_product_bf16(const unsigned short* a, const unsigned short* b, float* c, int m, int n, int k) {
    tiled::product<false, true>(a, b, c, m, n, k);
}
