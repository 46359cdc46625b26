// gemm_math.cuh — the implicit GEMM's math policies (deconv_gemm.cu): for each arithmetic (FFMA,
// DFMA, TF32 and 3×TF32 tensor cores, FP16/BF16 tensor cores) and C tile shape BM × BN (template
// parameters: deconv_gemm.cu instantiates each math's menu of tiles), how its operand slices are
// staged in shared memory and how one slice is multiplied into the accumulators.
#pragma once
#include "deconv_common.cuh"
#include "mma.cuh"


#ifndef GEMM_MAX_TAPS
#define GEMM_MAX_TAPS 256
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

// SIMT FMA: a (BM/TM) × (BN/TN) grid of threads, each TM × TN outputs. MinBlocks: the blocks per SM
// __launch_bounds__ asks the registers to allow (65536 / (256·MinBlocks) per thread at most).
template <typename T, int Tile_M, int Tile_N, int TM, int TN, int MinBlocks>
struct SimtMath {
    typedef T Element;
    typedef T Accumulator;
    static constexpr int BM = Tile_M, BN = Tile_N, BK = 8, PAD = 16 / sizeof(T) * 2;
    static constexpr int kVector = 16 / sizeof(T);  // elements per 16-byte shared load
    static constexpr int kStages = 2;  // double-buffered in static shared memory (run_double_buffered)
    // With cp.async every operand arrives packed in 16-byte chunks: the forward's and grad_input's
    // A (x, grad_output) channels-last in rows of K (m-major slices), B the weight k-major
    // ([tap][K][N], as the slices are), grad_weight's x and grad_output channels-last (k-major
    // slices). Without, every operand is the tensor's own elements, staged through registers.
    static constexpr bool kPacksOperands = kHasCpAsync;
    // The 128 × 128 loop fills its 128 registers: the forward's epilogue reads its output grid from
    // shared memory (deconv_gemm.cu, OutputGrid) rather than keep it live through the loop.
    static constexpr bool kRegisterBound = true;  // gemm_plan.GEMM_REGISTER_BOUND_MATHS
    static constexpr bool kPackRoundsTf32 = false, kPackedBNMajor = false;
    static constexpr int kMinBlocks = MinBlocks;
    static constexpr int kAccumulators = TM * TN;
    static constexpr int kThreadsN = BN / TN;
    static_assert((BM / TM) * (BN / TN) == kThreads, "one thread per TM × TN outputs");
    static_assert(kThreadsN >= 8, "a quarter warp shares its rows: its 16-byte loads of m-major A broadcast");
    // k-major slices: a thread's TM rows (TN columns) of one k are contiguous (vector loads). The
    // m-major A slice: BM rows of BK + kVector elements (48 bytes for float, 80 for double: an odd
    // number of 16-byte units, so a quarter warp's copies into one chunk of 8 rows are conflict-free).
    static constexpr int kRowA = BK + kVector;
    static constexpr int kSliceA = BK * (BM + PAD) > BM * kRowA ? BK * (BM + PAD) : BM * kRowA;
    static constexpr int kSliceB = BK * (BN + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return k * (BM + PAD) + m; }
    __device__ static __forceinline__ int a_packed_offset(int k, int m) { return m * kRowA + k; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * (BN + PAD) + n; }

    // A thread's TN columns: kGroupsN groups of 16 bytes (kGroupWidth columns), group g in the g-th
    // of kGroupsN stripes of the tile, at the thread's place in the stripe — so the 8 lanes of a
    // quarter warp read 8 consecutive 16-byte chunks of a k-major B row (one wavefront), where
    // TN consecutive columns would put them 32 bytes apart (two).
    static constexpr int kGroupsN = TN * sizeof(T) > 16 ? TN * (int)sizeof(T) / 16 : 1, kGroupWidth = TN / kGroupsN;
    static_assert(kGroupsN * kGroupWidth == TN && kThreadsN * kGroupWidth * kGroupsN == BN, "stripes that tile BN");
    static_assert(kGroupWidth == kVector, "a thread's columns in whole 16-byte loads");
    __device__ static __forceinline__ int column(int thread_n, int j) {
        return j / kGroupWidth * (BN / kGroupsN) + thread_n * kGroupWidth + j % kGroupWidth;
    }

    // Output (row, column) of accumulator i in the tile.
    __device__ static __forceinline__ int row_of(int i) { return (threadIdx.x / kThreadsN) * TM + i / TN; }
    __device__ static __forceinline__ int col_of(int i) { return column(threadIdx.x % kThreadsN, i % TN); }

    // k-major A: per k, a thread's TM values of A and TN of B. m-major A: per kVector k's, one
    // 16-byte load of each of the thread's TM rows (as many loads as TM per k would take: a row's
    // kVector k's come at once), then kVector steps of TN values of B.
    template <bool kMMajorA, bool kNMajorB>  // kNMajorB always false: B's slices are k-major
    __device__ static __forceinline__ void multiply(const T* a, const T* b, T acc[kAccumulators]) {
        const int row0 = (threadIdx.x / kThreadsN) * TM, thread_n = threadIdx.x % kThreadsN;
        if constexpr (kMMajorA) {
#pragma unroll
            for (int kv = 0; kv < BK; kv += kVector) {
                T a_values[TM][kVector];
#pragma unroll
                for (int i = 0; i < TM; ++i) load_16_bytes(a_values[i], a + a_packed_offset(kv, row0 + i));
#pragma unroll
                for (int v = 0; v < kVector; ++v) {
                    T b_values[TN];
#pragma unroll
                    for (int j = 0; j < TN; j += kGroupWidth) load_16_bytes(b_values + j, b + b_offset(kv + v, column(thread_n, j)));
#pragma unroll
                    for (int i = 0; i < TM; ++i)
#pragma unroll
                        for (int j = 0; j < TN; ++j) acc[i * TN + j] = fma(a_values[i][v], b_values[j], acc[i * TN + j]);
                }
            }
        } else {
#pragma unroll
            for (int k = 0; k < BK; ++k) {
                T a_values[TM], b_values[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) a_values[i] = a[a_offset(k, row0 + i)];
#pragma unroll
                for (int j = 0; j < TN; j += kGroupWidth) load_16_bytes(b_values + j, b + b_offset(k, column(thread_n, j)));
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i * TN + j] = fma(a_values[i], b_values[j], acc[i * TN + j]);
            }
        }
    }

  private:
    // 16 bytes of shared memory (16-byte aligned) into registers: one LDS.128
    __device__ static __forceinline__ void load_16_bytes(T* to, const T* from) {
        alignas(16) T values[kVector];
        ld_shared_16(values, from);
#pragma unroll
        for (int v = 0; v < kVector; ++v) to[v] = values[v];
    }
};

// Tensor cores: 8 warps as WarpsM (rows) × WarpsN (columns) — 4 × 2 for 128-row tiles, else 2 × 4
// — each a warp tile of WM × WN = MI × NJ mma tiles of 16 × 8. Accumulator index ((i·NJ + j)·4 + r):
// mma tile (i, j), register r of the PTX C/D layout.
template <typename T, int Tile_M, int Tile_N, int SliceK, int Pad>
struct MmaTiles {
    typedef T Element;
    typedef float Accumulator;
    static constexpr int BM = Tile_M, BN = Tile_N, BK = SliceK, PAD = Pad;
    // slices in flight: 3 stages in dynamic shared memory (run_pipelined; gemm_plan.GEMM_STAGES)
    static constexpr int kStages = 3;
    static constexpr int WarpsM = BM >= 128 ? 4 : 2, WarpsN = kThreads / 32 / WarpsM;
    static constexpr int WM = BM / WarpsM, WN = BN / WarpsN, MI = WM / 16, NJ = WN / 8;
    static constexpr int kAccumulators = MI * NJ * 4;
    static_assert(MI >= 1 && NJ >= 2 && NJ % 2 == 0 && MI * 16 == WM && NJ * 8 == WN,
                  "warp tiles of whole 16 × 8 mma tiles, an even number of them across (B by pairs)");
    __device__ static __forceinline__ int warp_row() { return (threadIdx.x / 32 / WarpsN) * WM; }
    __device__ static __forceinline__ int warp_col() { return (threadIdx.x / 32 % WarpsN) * WN; }
    __device__ static __forceinline__ int row_of(int i) {
        const int lane = threadIdx.x % 32;
        return warp_row() + (i / (4 * NJ)) * 16 + (lane >> 2) + ((i % 4) >= 2 ? 8 : 0);
    }
    __device__ static __forceinline__ int col_of(int i) {
        const int lane = threadIdx.x % 32;
        return warp_col() + (i / 4 % NJ) * 8 + 2 * (lane % 4) + (i % 2);
    }
};

// TF32 (Split3 = false) or 3×TF32 (true). A fragment (PTX m16n8k8 .tf32): a0 (g, t), a1 (g+8, t),
// a2 (g, t+4), a3 (g+8, t+4); B: b0 (t, g), b1 (t+4, g); g = lane >> 2, t = lane % 4. Every
// operand arrives packed (TF32-rounded for tf32, so its main loop rounds nothing; tf32x3 splits
// both in the loop), in one of two slice layouts:
//   rows of K (the forward's and grad_input's A, the packed activation, m-major; their B, the
//     weight packed N-major, n-major): rows of 16 floats + 4 of padding (80 bytes: the 8 rows an
//     ldmatrix reads fall in distinct banks); read as b16 pairs, an 8 × 8 ldmatrix matrix is 8 rows
//     × 4 floats, so ldmatrix.x4 (not .trans) gives a0..a3 of a 16 × 8 tile, ldmatrix.x2 b0, b1.
//   k-major (grad_weight's A and B, both channels-last activations whose rows of a (sample,
//     position) hold consecutive channels): rows of BM + 8 (BN + 8) floats, ≡ 8 mod 32 for every
//     tile of the menu, each fragment register one 4-byte load — the warp's 32 loads, rows t and
//     columns g, hit banks 8t + g, all distinct (ldmatrix cannot transpose 32-bit elements).
template <bool Split3, int Tile_M, int Tile_N, int MinBlocks>
struct Tf32Math : MmaTiles<float, Tile_M, Tile_N, 16, 4> {
    typedef MmaTiles<float, Tile_M, Tile_N, 16, 4> Tiles;
    using Tiles::BM;
    using Tiles::BN;
    using Tiles::BK;
    using Tiles::PAD;
    using Tiles::MI;
    using Tiles::NJ;
    using Tiles::kAccumulators;
    using Tiles::warp_row;
    using Tiles::warp_col;
    static constexpr bool kPacksOperands = true;  // every operand of every pass, in 16-byte chunks
    static constexpr bool kRegisterBound = false;
    static constexpr bool kPackRoundsTf32 = !Split3;
    static constexpr int kMinBlocks = MinBlocks;
    static constexpr bool kPackedBNMajor = true;  // the forward's and grad_input's B: rows of K
    static constexpr int kRowA = BM + 8, kRowB = BN + 8;  // k-major rows
    static constexpr int kSliceA = BK * kRowA > BM * (BK + PAD) ? BK * kRowA : BM * (BK + PAD);
    static constexpr int kSliceB = BK * kRowB > BN * (BK + PAD) ? BK * kRowB : BN * (BK + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return k * kRowA + m; }
    __device__ static __forceinline__ int a_packed_offset(int k, int m) { return m * (BK + PAD) + k; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * kRowB + n; }
    __device__ static __forceinline__ int b_packed_offset(int k, int n) { return n * (BK + PAD) + k; }
    // 3×TF32: each value split into its TF32 part (big, in place) and the TF32 rest (small)
    __device__ static __forceinline__ void split(unsigned* r, int count, unsigned* small) {
#pragma unroll
        for (int i = 0; i < count; ++i) {
            const float x = __uint_as_float(r[i]);
            r[i] = float_to_tf32(x);
            small[i] = float_to_tf32(x - __uint_as_float(r[i]));
        }
    }
    // mma tile (i, j) of the warp tile: big·big, after the small products for 3×TF32 (they would
    // vanish next to the big one)
    __device__ static __forceinline__ void multiply_tile(float acc[kAccumulators], int i, int j, const unsigned a_big[4],
                                                         const unsigned a_small[4], const unsigned b_big[2],
                                                         const unsigned b_small[2]) {
        float* c = acc + (i * NJ + j) * 4;
        if (Split3) {
            mma_m16n8k8_tf32(c, a_small, b_big, c);
            mma_m16n8k8_tf32(c, a_big, b_small, c);
        }
        mma_m16n8k8_tf32(c, a_big, b_big, c);
    }
    // kMMajorA / kNMajorB: A's / B's slice is in rows of K (else k-major)
    template <bool kMMajorA, bool kNMajorB>
    __device__ static __forceinline__ void multiply(const float* a, const float* b, float acc[kAccumulators]) {
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const int row0 = warp_row(), col0 = warp_col();
#pragma unroll
        for (int k = 0; k < BK; k += 8) {
            unsigned a_big[MI][4], a_small[MI][4], b_big[NJ][2], b_small[NJ][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                if constexpr (kMMajorA) {
                    // matrices (rows 0-7, k 0-3), (rows 8-15, k 0-3), (rows 0-7, k 4-7), (rows 8-15, k 4-7)
                    ldmatrix_x4(a_big[i], a + a_packed_offset(k + (lane / 16) * 4, row0 + i * 16 + lane % 16));
                } else {
                    const float* a0 = a + a_offset(k + t, row0 + i * 16 + g);
                    a_big[i][0] = __float_as_uint(a0[0]);
                    a_big[i][1] = __float_as_uint(a0[8]);
                    a_big[i][2] = __float_as_uint(a0[4 * kRowA]);
                    a_big[i][3] = __float_as_uint(a0[4 * kRowA + 8]);
                }
                if (Split3) split(a_big[i], 4, a_small[i]);
            }
            // B: column tile j, b0 = (k + t, g), b1 = (k + t + 4, g), each tile multiplied as it
            // arrives (two B registers live, not the warp tile's 2·NJ: the 128 × 128 tile stays
            // within 128 registers). Rows of K: ldmatrix.x2 of the matrices (tile j, k 0-3) and (tile j, k 4-7).
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                if constexpr (kNMajorB) {
                    ldmatrix_x2(b_big[j], b + b_packed_offset(k + lane / 8 % 2 * 4, col0 + j * 8 + lane % 8));
                } else {
                    const float* b0 = b + b_offset(k + t, col0 + j * 8 + g);
                    b_big[j][0] = __float_as_uint(b0[0]);
                    b_big[j][1] = __float_as_uint(b0[4 * kRowB]);
                }
                if (Split3) split(b_big[j], 2, b_small[j]);
#pragma unroll
                for (int i = 0; i < MI; ++i) multiply_tile(acc, i, j, a_big[i], a_small[i], b_big[j], b_small[j]);
            }
        }
    }
};

// FP16 and BF16. Every operand arrives packed by 16-byte cp.async, in one of two slice layouts:
//   k-major (the forward's and grad_input's B, the weight packed [tap][K][N]; grad_weight's A and
//     B, both channels-last activations): rows of tile + 8 halves (272, 144 or 80 bytes, an odd
//     number of 16-byte units, so the 8 rows one ldmatrix reads fall in distinct banks), fragments
//     by ldmatrix.trans — A (m16n8k16): matrices (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7),
//     (k 8-15, m 8-15) = a0..a3; B: (k 0-7, n), (k 8-15, n) = b0, b1;
//   rows of K (the forward's and grad_input's A, the packed activation, m-major): rows of 32 + 8
//     halves (80 bytes), by ldmatrix (not .trans): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
//     (rows 0-7, k 8-15), (rows 8-15, k 8-15) are a0..a3.
// The two types share the layouts (16-bit elements); only the mma instruction differs.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                                             const __half*) {
    mma_m16n8k16_f16(d, a, b, c);
}
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                                             const __nv_bfloat16*) {
    mma_m16n8k16_bf16(d, a, b, c);
}

template <typename T16, int Tile_M, int Tile_N, int MinBlocks>
struct Mma16Math : MmaTiles<T16, Tile_M, Tile_N, 32, 8> {
    typedef MmaTiles<T16, Tile_M, Tile_N, 32, 8> Tiles;
    using Tiles::MI;
    using Tiles::NJ;
    using Tiles::BM;
    using Tiles::BN;
    using Tiles::BK;
    using Tiles::PAD;
    using Tiles::kAccumulators;
    using Tiles::warp_row;
    using Tiles::warp_col;
    static constexpr bool kPacksOperands = true;  // every operand of every pass, in 16-byte chunks
    static constexpr bool kRegisterBound = false;
    static constexpr bool kPackRoundsTf32 = false;
    static constexpr bool kPackedBNMajor = false;  // the packed weight's slices are k-major (ldmatrix.trans)
    static constexpr int kMinBlocks = MinBlocks;
    static constexpr int kSliceA = BK * (BM + PAD) > BM * (BK + PAD) ? BK * (BM + PAD) : BM * (BK + PAD);
    static constexpr int kSliceB = BK * (BN + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return k * (BM + PAD) + m; }
    __device__ static __forceinline__ int a_packed_offset(int k, int m) { return m * (BK + PAD) + k; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * (BN + PAD) + n; }
    template <bool kMMajorA, bool kNMajorB>  // kNMajorB always false: B's slices are k-major
    __device__ static __forceinline__ void multiply(const T16* a, const T16* b, float acc[kAccumulators]) {
        const int lane = threadIdx.x % 32;
        const int row0 = warp_row(), col0 = warp_col();
#pragma unroll
        for (int k = 0; k < BK; k += 16) {
            unsigned a_frag[MI][4], b_frag[NJ][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                if constexpr (kMMajorA)
                    ldmatrix_x4(a_frag[i], a + a_packed_offset(k + (lane / 16) * 8, row0 + i * 16 + lane % 16));
                else
                    ldmatrix_x4_trans(a_frag[i], a + a_offset(k + lane % 8 + (lane / 16) * 8, row0 + i * 16 + (lane / 8 % 2) * 8));
            }
            // B by pairs of column tiles, each pair multiplied as it arrives (four B registers live)
#pragma unroll
            for (int j = 0; j < NJ; j += 2) {
                unsigned pair[4];
                ldmatrix_x4_trans(pair, b + b_offset(k + lane % 16, col0 + j * 8 + (lane / 16) * 8));
                b_frag[j][0] = pair[0];
                b_frag[j][1] = pair[1];
                b_frag[j + 1][0] = pair[2];
                b_frag[j + 1][1] = pair[3];
#pragma unroll
                for (int i = 0; i < MI; ++i) {
                    mma_m16n8k16(acc + (i * NJ + j) * 4, a_frag[i], b_frag[j], acc + (i * NJ + j) * 4, a);
                    mma_m16n8k16(acc + (i * NJ + j + 1) * 4, a_frag[i], b_frag[j + 1], acc + (i * NJ + j + 1) * 4, a);
                }
            }
        }
    }
};

// ---------------------------------------------------------------------------------------------
// The menus of tiles (deconv_gemm.cu instantiates each; gemm_plan.py's GEMM_TILES mirrors them):
//   FFMA and the tensor cores: forward and grad_input 128×128, 128×64, 64×64 and 128×32 (N, the
//     output channels of a group, narrow); grad_weight 128×128, 64×128, 64×64 and 32×128 (M,
//     C_in/groups, narrow)
//   DFMA: forward and grad_input 64×64 and 64×32; grad_weight 64×64 and 32×64
// MinBlocks grows as the accumulators shrink, so a small tile's block takes fewer registers and
// more of them share an SM (the wave gemm_plan.py sizes grids by).

// FFMA: 8 × 8 outputs per thread on 128×128, 8 × 4 / 4 × 8 on the half tiles, 4 × 4 on the rest;
// 2 blocks per SM from 32 outputs per thread (grad_weight's 64 × 128 spills within 3 blocks' 80
// registers), 4 below.
template <int BM, int BN>
struct FfmaShape {
    static constexpr int TM = BM == 128 && BN >= 64 ? 8 : 4, TN = BM * BN / kThreads / TM;
    static constexpr int kMinBlocks = TM * TN >= 32 ? 2 : 4;
};
template <int BM, int BN>
using F32Math = SimtMath<float, BM, BN, FfmaShape<BM, BN>::TM, FfmaShape<BM, BN>::TN, FfmaShape<BM, BN>::kMinBlocks>;
template <int BM, int BN>
using F64Math = SimtMath<double, BM, BN, BM >= 64 ? 4 : 2, BM * BN / kThreads / (BM >= 64 ? 4 : 2), 2>;

// Tensor cores, by accumulators per thread (BM·BN / 256): tf32 2 blocks per SM from 32 (<= 128
// registers; grad_weight's 64 × 128 needs more than 3 blocks' 80), 3 below; 3×TF32 keeps twice
// the fragments: 1, 2, 3; FP16/BF16 2.
template <int BM, int BN>
struct MmaBlocks {
    static constexpr int kAccumulators = BM * BN / kThreads;
    static constexpr int kTf32 = kAccumulators >= 32 ? 2 : 3;
    static constexpr int kTf32x3 = kAccumulators >= 64 ? 1 : kAccumulators >= 32 ? 2 : 3;
    static constexpr int k16 = 2;
};
template <int BM, int BN>
using Tf32MathTile = Tf32Math<false, BM, BN, MmaBlocks<BM, BN>::kTf32>;
template <int BM, int BN>
using Tf32x3MathTile = Tf32Math<true, BM, BN, MmaBlocks<BM, BN>::kTf32x3>;
template <int BM, int BN>
using F16Math = Mma16Math<__half, BM, BN, MmaBlocks<BM, BN>::k16>;
template <int BM, int BN>
using Bf16Math = Mma16Math<__nv_bfloat16, BM, BN, MmaBlocks<BM, BN>::k16>;

}  // namespace gemm
