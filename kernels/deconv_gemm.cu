// deconv_gemm.cu — forward (one GEMM per stride phase) and grad_input as implicit GEMMs.
//
// One core, two operand iterators. Both passes are C[m][j] = Σ_kk A[m][kk] · B[kk][j] with
//   A[m][kk] = src[n, group·KC + c, q·src_mul + offset(t)]   (zero outside src)
//   B[kk][j] = weight element (c, j, tap(t)) of the group
//   kk = (t, c): a tap t of the table and a channel c < KC; m = (n, q), q on a dense spatial grid
// and C[m][j] goes to dst[n, group·NC + j, q·dst_mul + dst_offset] (+ bias[group·NC + j]).
//   forward, stride phase r (per dim, 0 <= r < stride): the outputs o = r + stride·q form a dense
//     grid; only the taps k with (r + padding - k·dilation) divisible by stride reach them, from
//     input q + (r + padding - k·dilation)/stride. src = x, KC = C_in/groups, NC = C_out/groups,
//     src_mul = 1, dst_mul = stride, dst_offset = r. A phase that no tap reaches gets bias only.
//   grad_input: a strided, dilated correlation. src = grad_output, q = input position,
//     offset(k) = k·dilation - padding, src_mul = stride, KC = C_out/groups, NC = C_in/groups.
// (grad_weight — M = C_in/groups, N = C_out/groups·taps, K = N·in_spatial — is a third iterator
// over the same tiles, to come.)
//
// Each block computes a BM × BN tile of C for one (phase, group) (blockIdx.z); it first builds
// the phase's tap table in shared memory (offsets and weight tap index per tap), so the main loop
// walks kk = (tap, slice of BK channels) with counters and no division. Operand slices are double
// buffered in shared memory, stored k-major ([BK][BM + pad], [BK][BN + pad]): element-wise
// cp.async (4 or 8 bytes, zero-filled outside the tensor) for float and double — the copies of
// slice s+1 fly while slice s is multiplied; __half goes through registers (cp.async moves 4 bytes
// at least and neighbouring halves of a slice are not neighbours in memory), loaded before and
// stored after the multiply of the current slice.
//
// Versions (entry points deconv_{forward,grad_input}_gemm_<math>):
//   f32     exact FP32: 128×128 tile, 256 threads, 8×8 outputs per thread on FFMA, BK = 8
//   f64     FP64: 64×64 tile, 4×4 per thread on DFMA, BK = 8
//   tf32    TF32 tensor cores (mma.m16n8k8, FP32 accumulation): 128×128, 8 warps of 32×64, BK = 16;
//           operands rounded with cvt.rna.tf32
//   tf32x3  the split-TF32 trick: x = big + small (both TF32), three products
//           (big·small + small·big + big·big) per mma step: near-FP32 accuracy on tensor cores
//   f16     FP16 tensor cores (mma.m16n8k16, FP32 accumulation): 128×128, BK = 32, fragments by
//           ldmatrix.trans; the output rounded once to half
// The summation order is fixed, so every result is bitwise reproducible; no workspace, no atomics.
// The direct kernels (deconv_forward.cu, deconv_backward.cu) stay as the plain reference versions.
//
// Limits the host checks (kernel_backend.py): taps per phase <= GEMM_MAX_TAPS; N·(spatial size)
// < 2^31; phases·groups <= 65535. 64-bit offsets into the tensors, 32-bit within a tile.
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

namespace gemm {

constexpr int kThreads = 256;

enum class Pass { Forward, GradInput };

// ---------------------------------------------------------------------------------------------
// Math policies: tile shape, operand staging and the multiply of one shared-memory slice.

// SIMT FMA: a (BM/TM) × (BN/TN) grid of threads, each TM × TN outputs.
template <typename T, int Tile, int PerThread>
struct SimtMath {
    typedef T Element;
    typedef T Accumulator;
    static constexpr int BM = Tile, BN = Tile, BK = 8, PAD = 16 / sizeof(T) * 2;
    static constexpr bool kAsync = true;
    static constexpr int kAccumulators = PerThread * PerThread;
    static constexpr int kThreadsN = BN / PerThread;
    // k-major slices: a thread's PerThread rows (columns) of one k are contiguous (vector loads)
    static constexpr int kSliceA = BK * (BM + PAD), kSliceB = BK * (BN + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return k * (BM + PAD) + m; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * (BN + PAD) + n; }

    // Output (row, column) of accumulator i in the tile.
    __device__ static __forceinline__ int row_of(int i) { return (threadIdx.x / kThreadsN) * PerThread + i / PerThread; }
    __device__ static __forceinline__ int col_of(int i) { return (threadIdx.x % kThreadsN) * PerThread + i % PerThread; }

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
// a2 (g, t+4), a3 (g+8, t+4); B: b0 (t, g), b1 (t+4, g); g = lane >> 2, t = lane % 4. Slices are
// m-major (n-major for B) rows of 16 floats + 4 of padding (80 bytes: the 8 rows an ldmatrix reads
// fall in distinct banks); read as b16 pairs, an 8 × 8 ldmatrix matrix is 8 rows × 4 floats, so
// ldmatrix.x4 (not .trans) gives a0..a3 of a 16 × 8 tile, or b0, b1 of two 8-column tiles.
template <bool Split3>
struct Tf32Math : MmaTiles<float, 8, 16, 4> {
    static constexpr bool kAsync = true;
    static constexpr int kSliceA = BM * (BK + PAD), kSliceB = BN * (BK + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return m * (BK + PAD) + k; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return n * (BK + PAD) + k; }
    __device__ static __forceinline__ void round(unsigned* r, int count, unsigned* small) {
#pragma unroll
        for (int i = 0; i < count; ++i) {
            const float x = __uint_as_float(r[i]);
            r[i] = float_to_tf32(x);
            if (Split3) small[i] = float_to_tf32(x - __uint_as_float(r[i]));
        }
    }
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
            // B: matrices (n 0-7, k 0-3), (n 0-7, k 4-7) of column tile j, then of tile j + 1
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                unsigned pair[4], small[4];
                ldmatrix_x4(pair, b + b_offset(k + (lane / 8 % 2) * 4, col0 + j * 8 + (lane / 16) * 8 + lane % 8));
                round(pair, 4, small);
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    b_big[j][r] = pair[r];
                    b_big[j + 1][r] = pair[2 + r];
                    b_small[j][r] = small[r];
                    b_small[j + 1][r] = small[2 + r];
                }
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

// FP16: fragments by ldmatrix.trans from the k-major slices (rows of 136 halves: 272 bytes, so
// the 8 rows one ldmatrix reads fall in distinct banks). A (m16n8k16): matrices (k 0-7, m 0-7),
// (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15) = a0..a3; B: (k 0-7, n), (k 8-15, n) = b0, b1.
struct F16Math : MmaTiles<__half, 16, 32, 8> {
    static constexpr bool kAsync = false;
    static constexpr int kSliceA = BK * (BM + PAD), kSliceB = BK * (BN + PAD);
    __device__ static __forceinline__ int a_offset(int k, int m) { return k * (BM + PAD) + m; }
    __device__ static __forceinline__ int b_offset(int k, int n) { return k * (BN + PAD) + n; }
    __device__ static __forceinline__ void multiply(const __half* a, const __half* b, float acc[kAccumulators]) {
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
                for (int j = 0; j < 8; ++j) mma_m16n8k16_f16(acc + (i * 8 + j) * 4, a_frag[i], b_frag[j], acc + (i * 8 + j) * 4);
        }
    }
};

typedef SimtMath<float, GEMM_TILE_FFMA, 8> F32Math;
typedef SimtMath<double, GEMM_TILE_DFMA, 4> F64Math;

// ---------------------------------------------------------------------------------------------
// The problem one block works on: its pass, phase and group, and the tap table.

struct TapEntry {
    int offset[3];  // src position = q·src_mul + offset, per dim
    int index;      // flat tap index in the weight
};

// Taps along one dim that reach the block's phase: k = first + j·step, j < count.
struct TapRun {
    int first, step, count;
};

template <Pass P>
struct Problem {
    int q_ext[3], src_ext[3], src_mul[3], dst_ext[3], dst_mul[3], dst_offset[3];
    TapRun runs[3];
    int src_channels, dst_channels;  // channel counts of the whole tensors
    int kc, nc;                      // channels per group on the K and N sides
    int q_total, m_size, tap_total;
    long long w_group;               // first weight element of the group
    int w_stride_c, w_stride_j;      // weight element stride per K channel and per N channel
    int group;

    __device__ __forceinline__ Problem(const Geometry& g, int phase_group) {
        group = phase_group % g.groups;
        int phase = phase_group / g.groups;
        int r[3];
        for (int d = 2; d >= 0; --d) {
            r[d] = P == Pass::Forward ? phase % g.stride[d] : 0;
            phase /= g.stride[d];
        }
        const int taps = g.taps();
        const int cin_g = g.cin_g(), cout_g = g.cout_g();
        for (int d = 0; d < 3; ++d) {
            if (P == Pass::Forward) {
                q_ext[d] = max(0, (g.out[d] - r[d] + g.stride[d] - 1) / g.stride[d]);
                src_ext[d] = g.in[d];
                src_mul[d] = 1;
                dst_ext[d] = g.out[d];
                dst_mul[d] = g.stride[d];
                dst_offset[d] = r[d];
                // k·dilation ≡ r + padding (mod stride): a run of step stride / gcd(stride, dilation)
                int step = g.stride[d], a = g.dil[d];
                while (a) { const int t = step % a; step = a; a = t; }  // gcd
                step = g.stride[d] / step;
                int first = -1;
                for (int k = 0; k < step && k < g.k[d]; ++k)
                    if ((r[d] + g.pad[d] - k * g.dil[d]) % g.stride[d] == 0) { first = k; break; }
                runs[d] = TapRun{first < 0 ? 0 : first, step, first < 0 ? 0 : (g.k[d] - 1 - first) / step + 1};
            } else {
                q_ext[d] = g.in[d];
                src_ext[d] = g.out[d];
                src_mul[d] = g.stride[d];
                dst_ext[d] = g.in[d];
                dst_mul[d] = 1;
                dst_offset[d] = 0;
                runs[d] = TapRun{0, 1, g.k[d]};
            }
        }
        src_channels = P == Pass::Forward ? g.C_in : g.C_out;
        dst_channels = P == Pass::Forward ? g.C_out : g.C_in;
        kc = P == Pass::Forward ? cin_g : cout_g;
        nc = P == Pass::Forward ? cout_g : cin_g;
        w_group = (long long)group * cin_g * cout_g * taps;
        w_stride_c = P == Pass::Forward ? cout_g * taps : taps;
        w_stride_j = P == Pass::Forward ? taps : cout_g * taps;
        q_total = q_ext[0] * q_ext[1] * q_ext[2];
        m_size = g.N * q_total;
        tap_total = runs[0].count * runs[1].count * runs[2].count;
    }

    __device__ __forceinline__ TapEntry tap(const Geometry& g, int t) const {
        int j[3];
        j[2] = t % runs[2].count;
        j[1] = t / runs[2].count % runs[1].count;
        j[0] = t / runs[2].count / runs[1].count;
        TapEntry e;
        int k[3];
        for (int d = 0; d < 3; ++d) {
            k[d] = runs[d].first + j[d] * runs[d].step;
            e.offset[d] = P == Pass::Forward ? (dst_offset[d] + g.pad[d] - k[d] * g.dil[d]) / g.stride[d]
                                             : k[d] * g.dil[d] - g.pad[d];
        }
        e.index = (k[0] * g.k[1] + k[1]) * g.k[2] + k[2];
        return e;
    }

    // Offset of C row m in dst, without the channel (-1 past the last row).
    __device__ __forceinline__ long long dst_row(int m) const {
        if (m >= m_size) return -1;
        const int n = m / q_total;
        int q[3], pos[3];
        unflatten3(m % q_total, q_ext, q);
        for (int d = 0; d < 3; ++d) pos[d] = q[d] * dst_mul[d] + dst_offset[d];
        return ((long long)n * dst_channels + (long long)group * nc) * (dst_ext[0] * dst_ext[1] * dst_ext[2]) +
               flatten3(pos, dst_ext);
    }
};

// ---------------------------------------------------------------------------------------------
// Operand staging: which elements of a slice this thread moves, and their addresses.

template <class M>
struct Stager {
    typedef typename M::Element T;
    static constexpr int BM = M::BM, BN = M::BN, BK = M::BK;
    static constexpr int kRowsA = BK * BM / kThreads, kStepA = kThreads / BM;
    static constexpr int kRowsB = BK * BN / kThreads, kStepB = kThreads / BN;
    static_assert(kThreads % BM == 0 && kThreads % BN == 0 && kRowsA >= 1 && kRowsB >= 1, "tile/thread mismatch");

    const T* src_row;  // src[n, group·KC, 0]; null past the last row
    int q[3];
    const T* w_column;  // weight element (c = 0, j, tap 0) of the group; null past the last column
    const T* any_src;   // a valid address for zero-filled copies
    const T* any_w;
    int src_spatial, w_stride_c;
    // the current tap, for this thread's row
    int a_position;  // -1: outside src
    int b_tap;

    template <class Prob>
    __device__ __forceinline__ Stager(const Prob& p, const T* src, const T* w, int block_m, int block_n)
        : any_src(src), any_w(w), w_stride_c(p.w_stride_c) {
        src_spatial = p.src_ext[0] * p.src_ext[1] * p.src_ext[2];
        const int m = block_m + threadIdx.x % BM;
        src_row = nullptr;
        q[0] = q[1] = q[2] = 0;
        if (m < p.m_size) {
            const int n = m / p.q_total;
            unflatten3(m % p.q_total, p.q_ext, q);
            src_row = src + ((long long)n * p.src_channels + (long long)p.group * p.kc) * src_spatial;
        }
        const int j = block_n + threadIdx.x % BN;
        w_column = j < p.nc ? w + p.w_group + (long long)j * p.w_stride_j : nullptr;
    }

    template <class Prob>
    __device__ __forceinline__ void set_tap(const Prob& p, const TapEntry& e) {
        int pos[3];
        bool inside = src_row != nullptr;
        for (int d = 0; d < 3; ++d) {
            pos[d] = q[d] * p.src_mul[d] + e.offset[d];
            inside = inside && pos[d] >= 0 && pos[d] < p.src_ext[d];
        }
        a_position = inside ? flatten3(pos, p.src_ext) : -1;
        b_tap = e.index;
    }

    // Source of A element (k, this thread's row) / B element (k, this thread's column) of the
    // slice at channel c0, or null where it is zero.
    __device__ __forceinline__ const T* a_source(int k, int c0, int kc) const {
        const int c = c0 + k;
        return a_position >= 0 && c < kc ? src_row + (long long)c * src_spatial + a_position : nullptr;
    }
    __device__ __forceinline__ const T* b_source(int k, int c0, int kc) const {
        const int c = c0 + k;
        return w_column && c < kc ? w_column + (long long)c * w_stride_c + b_tap : nullptr;
    }

    // cp.async path: copies of the slice into buffer `a`, `b` (zero-filled where null).
    __device__ __forceinline__ void copy(T* a, T* b, int c0, int kc) const {
#pragma unroll
        for (int i = 0; i < kRowsA; ++i) {
            const int k = threadIdx.x / BM + i * kStepA;
            const T* from = a_source(k, c0, kc);
            async_copy(a + M::a_offset(k, threadIdx.x % BM), from ? from : any_src, from ? (int)sizeof(T) : 0);
        }
#pragma unroll
        for (int i = 0; i < kRowsB; ++i) {
            const int k = threadIdx.x / BN + i * kStepB;
            const T* from = b_source(k, c0, kc);
            async_copy(b + M::b_offset(k, threadIdx.x % BN), from ? from : any_w, from ? (int)sizeof(T) : 0);
        }
        cp_async_commit();
    }
    __device__ static __forceinline__ void async_copy(float* to, const float* from, int bytes) { cp_async_4(to, from, bytes); }
    __device__ static __forceinline__ void async_copy(double* to, const double* from, int bytes) { cp_async_8(to, from, bytes); }
    __device__ static __forceinline__ void async_copy(__half*, const __half*, int) {}

    // register path: load the slice into registers, later store them into the buffers.
    __device__ __forceinline__ void load(T staged[kRowsA + kRowsB], int c0, int kc) const {
#pragma unroll
        for (int i = 0; i < kRowsA; ++i) {
            const T* from = a_source(threadIdx.x / BM + i * kStepA, c0, kc);
            staged[i] = from ? __ldg(from) : T(0.0f);
        }
#pragma unroll
        for (int i = 0; i < kRowsB; ++i) {
            const T* from = b_source(threadIdx.x / BN + i * kStepB, c0, kc);
            staged[kRowsA + i] = from ? __ldg(from) : T(0.0f);
        }
    }
    __device__ __forceinline__ void store(const T staged[kRowsA + kRowsB], T* a, T* b) const {
#pragma unroll
        for (int i = 0; i < kRowsA; ++i) a[M::a_offset(threadIdx.x / BM + i * kStepA, threadIdx.x % BM)] = staged[i];
#pragma unroll
        for (int i = 0; i < kRowsB; ++i) b[M::b_offset(threadIdx.x / BN + i * kStepB, threadIdx.x % BN)] = staged[kRowsA + i];
    }
};

// ---------------------------------------------------------------------------------------------
// The core

template <Pass P, class M>
__device__ void implicit_gemm(const typename M::Element* __restrict__ src, const typename M::Element* __restrict__ w,
                              const typename M::Element* __restrict__ bias, int has_bias,
                              typename M::Element* __restrict__ dst, const Geometry g) {
    typedef typename M::Element T;
    typedef typename M::Accumulator A;
    constexpr int BM = M::BM, BN = M::BN, BK = M::BK;
    __shared__ __align__(16) T a_slices[2][M::kSliceA];
    __shared__ __align__(16) T b_slices[2][M::kSliceB];
    __shared__ TapEntry taps[GEMM_MAX_TAPS];

    const Problem<P> p(g, blockIdx.z);
    const int block_m = blockIdx.x * BM, block_n = blockIdx.y * BN;
    if (block_m >= p.m_size) return;  // a phase with fewer rows than the largest: the whole block leaves

    for (int t = threadIdx.x; t < p.tap_total; t += kThreads) taps[t] = p.tap(g, t);
    __syncthreads();

    Stager<M> stager(p, src, w, block_m, block_n);
    A acc[M::kAccumulators];
#pragma unroll
    for (int i = 0; i < M::kAccumulators; ++i) acc[i] = A(0);

    // kk walks (tap, channel slice); a slice never spans two taps.
    const int slices_per_tap = (p.kc + BK - 1) / BK;
    const int steps = p.tap_total * slices_per_tap;
    int tap = 0, c0 = 0;
    T staged[Stager<M>::kRowsA + Stager<M>::kRowsB];
    if (steps > 0) {
        stager.set_tap(p, taps[0]);
        if constexpr (M::kAsync) {
            stager.copy(a_slices[0], b_slices[0], 0, p.kc);
        } else {
            stager.load(staged, 0, p.kc);
            stager.store(staged, a_slices[0], b_slices[0]);
            __syncthreads();
        }
    }
    for (int step = 0; step < steps; ++step) {
        const int buffer = step & 1;
        const bool has_next = step + 1 < steps;
        if (has_next) {  // the next slice's (tap, c0)
            c0 += BK;
            if (c0 >= p.kc) {
                c0 = 0;
                stager.set_tap(p, taps[++tap]);
            }
        }
        if constexpr (M::kAsync) {
            if (has_next) {
                stager.copy(a_slices[buffer ^ 1], b_slices[buffer ^ 1], c0, p.kc);
                cp_async_wait<1>();  // this slice has landed; the next one may be in flight
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();
            M::multiply(a_slices[buffer], b_slices[buffer], acc);
            __syncthreads();  // everyone is done with `buffer` before it is refilled
        } else {
            if (has_next) stager.load(staged, c0, p.kc);  // in flight during the multiply
            M::multiply(a_slices[buffer], b_slices[buffer], acc);
            if (has_next) stager.store(staged, a_slices[buffer ^ 1], b_slices[buffer ^ 1]);
            __syncthreads();
        }
    }

    // Epilogue: each accumulator to its (row, column); bias in the forward pass.
    const int dst_spatial = p.dst_ext[0] * p.dst_ext[1] * p.dst_ext[2];
    long long row_offset = -1;
    int last_row = -1;
#pragma unroll
    for (int i = 0; i < M::kAccumulators; ++i) {
        const int row = block_m + M::row_of(i), j = block_n + M::col_of(i);
        if (row != last_row) {  // accumulators come row by row (SIMT) or in pairs of a row (mma)
            row_offset = p.dst_row(row);
            last_row = row;
        }
        if (row_offset < 0 || j >= p.nc) continue;
        A value = acc[i];
        if (P == Pass::Forward && has_bias) value += load(bias + p.group * p.nc + j);
        dst[row_offset + (long long)j * dst_spatial] = from_acc<T>(value);
    }
}

}  // namespace gemm

// ---------------------------------------------------------------------------------------------
// Entry points

#define DECONV_GEMM_ENTRY_POINTS(MATH_NAME, T, MATH)                                                              \
    extern "C" __global__ void __launch_bounds__(gemm::kThreads)                                                  \
        deconv_forward_gemm_##MATH_NAME(const T* x, const T* w, const T* bias, int has_bias, T* y,                \
                                        DECONV_GEOMETRY_PARAMS) {                                                 \
        gemm::implicit_gemm<gemm::Pass::Forward, MATH>(x, w, bias, has_bias, y, DECONV_GEOMETRY_ARGS);            \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(gemm::kThreads)                                                  \
        deconv_grad_input_gemm_##MATH_NAME(const T* grad_output, const T* w, T* grad_input,                       \
                                           DECONV_GEOMETRY_PARAMS) {                                              \
        gemm::implicit_gemm<gemm::Pass::GradInput, MATH>(grad_output, w, nullptr, 0, grad_input,                  \
                                                         DECONV_GEOMETRY_ARGS);                                   \
    }

DECONV_GEMM_ENTRY_POINTS(f32, float, gemm::F32Math)
DECONV_GEMM_ENTRY_POINTS(f64, double, gemm::F64Math)
DECONV_GEMM_ENTRY_POINTS(tf32, float, gemm::Tf32Math<false>)
DECONV_GEMM_ENTRY_POINTS(tf32x3, float, gemm::Tf32Math<true>)
DECONV_GEMM_ENTRY_POINTS(f16, __half, gemm::F16Math)
