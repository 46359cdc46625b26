// deconv_gemm.cu — forward (one GEMM per stride phase), grad_input and grad_weight (split K) as
// implicit GEMMs: one core, four operand iterators (the conv passes; grad_weight on the tensors'
// own elements, or on packed ones).
//
// The core computes a tile of C[m][j] = Σ_kk A[m][kk] · B[kk][j], with A and B gathered from the
// tensors slice by slice (BK values of kk at a time) by the pass's iterator:
//   forward, stride phase r (per dim, 0 <= r < stride): the outputs o = r + stride·q form a dense
//     grid; only the taps k with (r + padding - k·dilation) divisible by stride reach them, from
//     input q + (r + padding - k·dilation)/stride. m = (n, q), j = output channel of the group,
//     kk = (tap of the phase, input channel). A phase that no tap reaches gets bias only.
//   grad_input: a strided, dilated correlation: m = (n, input position i), j = input channel,
//     kk = (tap, output channel); A = grad_output[n, co, i·stride + tap·dilation - padding].
//   grad_weight: m = input channel, j = an (output channel, tap) pair and kk = (n, i) over every
//     sample and input position: A = x, B = grad_output at i·stride + tap·dilation - padding. On
//     the tensors' own elements j is the weight's own layout (co outer); on packed ones it goes
//     tap by tap, j = tap·P + co (P: C_out/groups padded as the packing pads a row).
// Split K: where M × N gives too few tiles to fill the GPU (always for grad_weight, whose K is
// long; for the forward and grad_input of deep layers at small spatial size), K is split into
// `splits` parts (the outer part of blockIdx.z) whose partial tiles go to a workspace, one copy
// of the output per split in the accumulation type; deconv_gemm_split_reduce_* adds them in split
// order (and the forward's bias, once) — bitwise reproducible for a given split count. With one
// split the tiles are stored as they are, bias included, and no workspace is touched.
// Outside the tensors A and B read as zero. The conv iterators first build the phase's tap table
// in shared memory (offsets and weight tap index per tap), so their main loop walks kk = (tap,
// slice of BK channels) with counters; grad_weight walks (n, i) with carry cursors: no division
// in any main loop.
//
// Operand slices pass through shared memory in stages: three on the tensor cores (dynamic shared
// memory; the copies of slices s+1 and s+2 fly while slice s is multiplied), two on FFMA and DFMA
// (static; s+1 flies). Operands are first packed, once per pass, into the layouts the slices read,
// every row padded with zeros to a multiple of GEMM_PACK_ROW_BYTES (a 32-byte sector): the
// activations (x, grad_output) by deconv_gemm_pack_activation_* channels-last,
// [n][position][group][channel] (a caller's dense channels-last array already is that, and is
// read in place where no padding or rounding is needed: kernel_backend.reads_packed_in_place);
// the weight by deconv_gemm_pack_weight_*, per group [tap][N channel][K channel] for tf32/tf32x3
// (n-major slices, as A's) or [tap][K channel][N channel] for the others (k-major). Packed
// operands arrive by 16-byte cp.async, whole sectors per copy instruction; tf32 rounds them to
// TF32 in the packing, once. Which are packed (path_choice's KernelPath.packed): every operand
// of every pass. Below compute capability 8.0, which has no cp.async (CUDECONV_NO_CP_ASYNC,
// gemm_math.cuh), float and double read every operand element-wise through registers, loaded
// before and stored after the multiply (the forward's and grad_input's A gathered along
// positions, k-major).
//
// Versions (entry points deconv_{forward,grad_input,grad_weight}_gemm_<math>_<BM>x<BN>, one per
// tile of the math's menu in gemm_math.cuh, and the packings deconv_gemm_pack_{weight,activation}_
// <math> the launch layer runs before the GEMMs that read packed operands):
//   f32     exact FP32: 256 threads, 8×8 outputs per thread on FFMA on 128×128 (fewer on the
//           smaller tiles), BK = 8
//   f64     FP64: 64×64 tile, 4×4 per thread on DFMA, BK = 8
//   tf32    TF32 tensor cores (mma.m16n8k8, FP32 accumulation): 8 warps (32×64 each on 128×128),
//           BK = 16; the forward's and grad_input's A and B from m-/n-major slices by ldmatrix,
//           grad_weight's from k-major ones by 4-byte loads, unrounded in the loop
//   tf32x3  the split-TF32 trick: x = big + small (both TF32), three products
//           (big·small + small·big + big·big) per mma step: near-FP32 accuracy on tensor cores
//   f16     FP16 tensor cores (mma.m16n8k16, FP32 accumulation): BK = 32, the forward's and
//           grad_input's A by ldmatrix, every other operand by ldmatrix.trans; the output rounded
//           once to half
//   bf16    the same on BF16 tensor cores (__nv_bfloat16 storage)
// Every output is summed in a fixed order, so results are bitwise reproducible; no atomics. The
// workspaces are the packed operands and the split partials (splits × |output| accumulators). The
// direct kernels (deconv_forward.cu, deconv_backward.cu) stay as the plain reference versions.
//
// Limits the host checks (kernel_backend.py): taps per phase <= GEMM_MAX_TAPS; N·(spatial size)
// < 2^31; splits · phases · groups <= 65535 (grid z) and column tiles <= 65535 (grid y).
// 64-bit offsets into the tensors, 32-bit within a tile.
// The math policies (gemm_math.cuh) and the per-block problem (gemm_problem.cuh).
#include "gemm_problem.cuh"

namespace gemm {

// ---------------------------------------------------------------------------------------------
// Operand staging. This thread's elements of a gathered slice of an operand `Columns` wide (A: BM,
// grad_weight's B and the unpacked weight: BN) are the rows k = threadIdx.x / Columns + r·kStep
// (r < kRows) at column threadIdx.x % Columns; the operand iterator says where each comes from (or
// null: zero).

template <class M, int Columns>
struct SliceRows {
    static_assert(kThreads % Columns == 0 && M::BK * Columns % kThreads == 0, "rows the block's threads divide");
    static constexpr int kRows = M::BK * Columns / kThreads, kStep = kThreads / Columns;
    __device__ static __forceinline__ int k(int r) { return threadIdx.x / Columns + r * kStep; }
    __device__ static __forceinline__ int column() { return threadIdx.x % Columns; }
};
template <class M> using RowsA = SliceRows<M, M::BM>;
template <class M> using RowsB = SliceRows<M, M::BN>;

// 16-byte chunks and shared-memory banks. A warp's copy instruction stores its 16-byte chunks a
// quarter warp (8 lanes) at a time, one wavefront when the 8 chunks fall in distinct 16-byte bank
// groups (16-byte offsets distinct mod 8), and reads its sources in whole 32-byte sectors when it
// takes both chunks of each sector it touches. The maps below keep both: a quarter warp takes
// either 8 consecutive chunks of one row, or the same chunk of 8 consecutive rows whose pitch is
// an odd number of 16-byte units (the padded rows of gemm_math.cuh: 80 bytes m-major, tile width +
// 8 elements k-major), and a warp always both chunks of a sector.

// A k-major slice `Columns` wide in 16-byte chunks of consecutive columns — the packed weight's B
// (f16, bf16, f32, f64: N channels) and grad_weight's packed A and B (channels of x and
// grad_output): a row of the slice is kPerRow = Columns / kWidth chunks. A row of 8 chunks or more
// is taken by consecutive threads (a quarter warp: 8 consecutive chunks of a row); a narrower one
// (f16's 32 columns: 4 chunks of an 80-byte row) by octets of threads, lane e of octet o taking row
// 8·(o / kPerRow) + e at chunk o mod kPerRow (a quarter warp: one chunk of 8 rows). This thread's
// chunks are the rows k(i) = k(0) + i·kRowStep (i < kChunks), at column column(). A narrow tile's
// slice has fewer chunks than the block has threads: only the first BK·kPerRow threads copy
// (active()).
template <class M, int Columns>
struct PackedChunks {
    static constexpr int kWidth = 16 / sizeof(typename M::Element), kPerRow = Columns / kWidth;
    static constexpr int kCount = M::BK * kPerRow, kRowStep = kThreads / kPerRow;
    static constexpr int kChunks = kCount >= kThreads ? kCount / kThreads : 1;
    static constexpr bool kOctets = kPerRow < 8;
    static_assert(kThreads % kPerRow == 0 && (kCount % kThreads == 0 || kThreads % kCount == 0),
                  "every chunk of the slice, once");
    static_assert(kOctets ? kPerRow % 2 == 0 && M::BK % 8 == 0 : kPerRow % 8 == 0,
                  "quarter warps in distinct bank groups, warps on whole sectors");
    __device__ static __forceinline__ bool active() { return kCount >= kThreads || (int)threadIdx.x < kCount; }
    __device__ static __forceinline__ int k(int i) {
        return (kOctets ? threadIdx.x / (8 * kPerRow) * 8 + threadIdx.x % 8 : threadIdx.x / kPerRow) + i * kRowStep;
    }
    __device__ static __forceinline__ int column() {
        return (kOctets ? threadIdx.x / 8 % kPerRow : threadIdx.x % kPerRow) * kWidth;
    }
    __device__ static __forceinline__ int column(int) { return column(); }
};

// The same slice with a thread's chunks in one row (grad_weight's B: one (sample, position) cursor
// per thread, not per chunk): kThreadsPerRow consecutive threads share a row, chunk i of thread t
// at column t % kThreadsPerRow + i·kThreadsPerRow — so a quarter warp takes 8 consecutive chunks of
// a row, and a warp whole 32-byte sectors.
template <class M, int Columns>
struct PackedRowChunks {
    typedef PackedChunks<M, Columns> Spread;
    static constexpr int kWidth = Spread::kWidth, kChunks = Spread::kChunks;
    static constexpr int kThreadsPerRow = Spread::kPerRow / kChunks, kCount = Spread::kCount;
    static_assert(kThreadsPerRow % 8 == 0, "a quarter warp's chunks consecutive in one row");
    __device__ static __forceinline__ bool active() { return Spread::active(); }
    __device__ static __forceinline__ int k(int) { return threadIdx.x / kThreadsPerRow; }
    __device__ static __forceinline__ int column(int i) { return (threadIdx.x % kThreadsPerRow + i * kThreadsPerRow) * kWidth; }
};

// Slices whose rows (of the tile's `Side`) hold K contiguously — the packed activation's A (Side
// BM) and, on maths with kPackedBNMajor, the packed weight's B (Side BN): row r of the slice is BK
// K channels, kPerRow 16-byte chunks in an 80-byte row; kThreadsPerRow threads share a row (one row
// per thread, as the element-wise A: the row's position state stays one per thread). Lane e of the
// block's octet o takes row 8·(o / kThreadsPerRow) + e, copy i its chunk c + i·kThreadsPerRow with
// c = o mod kThreadsPerRow: a quarter warp stores one chunk of 8 consecutive rows (distinct bank
// groups), and a warp's octets take chunks c = 0, 1, … of the same rows (whole sectors). Where a row
// has fewer chunks than threads (narrow sides), only the octets with c < kPerRow copy (active()).
template <class M, int Side>
struct RowChunks {
    static constexpr int kWidth = 16 / sizeof(typename M::Element), kPerRow = M::BK / kWidth;
    static constexpr int kThreadsPerRow = kThreads / Side;
    static constexpr int kChunks = kPerRow >= kThreadsPerRow ? kPerRow / kThreadsPerRow : 1;
    static_assert(kThreads % Side == 0 && M::BK % kWidth == 0 &&
                  (kPerRow % kThreadsPerRow == 0 || kThreadsPerRow % kPerRow == 0), "every chunk of the slice, once");
    static_assert(kThreadsPerRow % 2 == 0 && (kThreadsPerRow <= 4 || kThreadsPerRow % 4 == 0) && kPerRow % 2 == 0,
                  "a warp takes both chunks of every sector it touches");
    __device__ static __forceinline__ int row() { return threadIdx.x / (8 * kThreadsPerRow) * 8 + threadIdx.x % 8; }
    __device__ static __forceinline__ int chunk() { return threadIdx.x / 8 % kThreadsPerRow; }
    __device__ static __forceinline__ bool active() { return chunk() < kPerRow; }
    __device__ static __forceinline__ int k(int i) { return (chunk() + i * kThreadsPerRow) * kWidth; }
};
template <class M> using ActivationChunks = RowChunks<M, M::BM>;
template <class M> using WeightRowChunks = RowChunks<M, M::BN>;


// This thread's staged registers: A's rows (unless the activation arrives packed), then (unless the
// weight does) B's; at least one, an array's least size.
template <class M, class Ops>
struct Staged {
    static constexpr int kA = Ops::kPackedA ? 0 : RowsA<M>::kRows, kB = Ops::kPackedB ? 0 : RowsB<M>::kRows;
    static constexpr int kCount = kA + kB > 0 ? kA + kB : 1;
};

// One element-wise operand value (without cp.async) for its staged register: zero where `from` is null.
template <typename T>
__device__ __forceinline__ T load_element(const T* from) { return from ? __ldg(from) : T(0.0f); }

// Issues the slice's copies into buffers a and b (zero where the source is null): cp.async of
// 16-byte chunks for the packed operands; the element-wise operands (float and double without
// cp.async) are loaded into `staged`, for store_staged once the multiply is done.
// The iterator describes this thread's rows of each operand in order: a_first(), then
// a_next(previous) (b_first, b_next for B); its a_chunk(i) is chunk i of ActivationChunks, its
// b_chunk(i) chunk i of WeightRowChunks (kPackedBNMajor) or PackedChunks (null: zero). Where both
// operands go element-wise on a square tile their rows coincide: one walk serves both (grad_weight's
// rows are cursors whose carries would otherwise be paid twice).
template <class M, class Ops>
__device__ __forceinline__ void fetch_slice(typename M::Element staged[Staged<M, Ops>::kCount],
                                            typename M::Element* a, typename M::Element* b, const Ops& ops) {
    typedef typename M::Element T;
    constexpr bool kOneWalk = !Ops::kPackedA && !Ops::kPackedB && M::BM == M::BN;
    if constexpr (kOneWalk) {
        auto row = ops.a_first();
#pragma unroll
        for (int r = 0; r < RowsA<M>::kRows; ++r) {
            if (r) row = ops.a_next(row);
            staged[r] = load_element(ops.a_source(row));
            staged[Staged<M, Ops>::kA + r] = load_element(ops.b_source(row));
        }
    } else {
        if constexpr (Ops::kPackedA && Ops::kMMajorA) {
            typedef ActivationChunks<M> Chunks;
            if (Chunks::active()) {
#pragma unroll
                for (int i = 0; i < Chunks::kChunks; ++i) {
                    const T* from = ops.a_chunk(i);
                    cp_async_16(a + M::a_packed_offset(Chunks::k(i), Chunks::row()), from ? from : ops.any_a,
                                from ? 16 : 0);
                }
            }
        } else if constexpr (Ops::kPackedA) {
            typedef typename Ops::ChunksA Chunks;  // k-major: grad_weight's packed x
            if (Chunks::active()) {
#pragma unroll
                for (int i = 0; i < Chunks::kChunks; ++i) {
                    const T* from = ops.a_chunk(i);
                    cp_async_16(a + M::a_offset(Chunks::k(i), Chunks::column()), from ? from : ops.any_a, from ? 16 : 0);
                }
            }
        } else {
            auto row = ops.a_first();
#pragma unroll
            for (int r = 0; r < RowsA<M>::kRows; ++r) {
                if (r) row = ops.a_next(row);
                staged[r] = load_element(ops.a_source(row));
            }
        }
        if constexpr (!Ops::kPackedB) {
            auto row = ops.b_first();
#pragma unroll
            for (int r = 0; r < RowsB<M>::kRows; ++r) {
                if (r) row = ops.b_next(row);
                staged[Staged<M, Ops>::kA + r] = load_element(ops.b_source(row));
            }
        } else if constexpr (Ops::kNMajorB) {
            typedef WeightRowChunks<M> Chunks;
            if (Chunks::active()) {
#pragma unroll
                for (int i = 0; i < Chunks::kChunks; ++i) {
                    const T* from = ops.b_chunk(i);
                    cp_async_16(b + M::b_packed_offset(Chunks::k(i), Chunks::row()), from ? from : ops.any_b,
                                from ? 16 : 0);
                }
            }
        } else {
            typedef typename Ops::ChunksB Chunks;  // PackedChunks or PackedRowChunks
            if (Chunks::active()) {
#pragma unroll
                for (int i = 0; i < Chunks::kChunks; ++i) {
                    const T* from = ops.b_chunk(i);
                    cp_async_16(b + M::b_offset(Chunks::k(i), Chunks::column(i)), from ? from : ops.any_b,
                                from ? 16 : 0);
                }
            }
        }
    }
}
template <class M, class Ops>
__device__ __forceinline__ void store_staged(const typename M::Element staged[Staged<M, Ops>::kCount],
                                             typename M::Element* a, typename M::Element* b) {
    if constexpr (!Ops::kPackedA) {
#pragma unroll
        for (int r = 0; r < RowsA<M>::kRows; ++r) a[M::a_offset(RowsA<M>::k(r), RowsA<M>::column())] = staged[r];
    }
    if constexpr (!Ops::kPackedB) {
#pragma unroll
        for (int r = 0; r < RowsB<M>::kRows; ++r)
            b[M::b_offset(RowsB<M>::k(r), RowsB<M>::column())] = staged[Staged<M, Ops>::kA + r];
    }
}

// ---------------------------------------------------------------------------------------------
// The core: C tile = Σ over the iterator's slices of A·B, the slices pipelined through shared
// memory, then the epilogue.
// Ops: steps (slices), begin() / advance() (the first / next slice), kPackedA / kPackedB (A / B
// arrive packed, in 16-byte chunks) and kMMajorA / kNMajorB (their slices are in rows of K),
// a_first() / a_next(row) and b_first() / b_next(row) (this thread's rows of each element-wise
// operand's slice, in order), a_source(row) and b_source(row) (null: zero), else a_chunk(i) /
// b_chunk(i), any_a / any_b (valid, 16-byte aligned addresses for zero-filled copies),
// row_offset(row) / column_offset(col) (-1 outside C) and store(row offset, column offset, column,
// value).

// The tile's accumulators to C through the iterator (which skips what lies outside).
template <class M, class Ops>
__device__ __forceinline__ void store_tile(const Ops& ops, const typename M::Accumulator acc[M::kAccumulators],
                                           int block_m, int block_n) {
    long long row_offset = -1;
    int last_row = -1;
#pragma unroll
    for (int i = 0; i < M::kAccumulators; ++i) {
        const int row = block_m + M::row_of(i), col = block_n + M::col_of(i);
        if (row != last_row) {  // accumulators come row by row (SIMT) or in pairs of a row (mma)
            row_offset = ops.row_offset(row);
            last_row = row;
        }
        const long long column_offset = ops.column_offset(col);
        if (row_offset >= 0 && column_offset >= 0) ops.store(row_offset, column_offset, col, acc[i]);
    }
}

// Two stages (M::kStages == 2: FFMA and DFMA, whose element-wise operands may be staged through
// registers), in static shared memory: each step issues the next slice's copies (and loads),
// multiplies the current one, stores the staged registers, waits for its own copies, and one
// barrier makes the next slice visible to all and frees the current one for refilling. (A single
// loop with one fetch site, the first slice fetched in its first iteration, is less code but costs
// the 128×128 FFMA tiles spills at their 128-register bound.)
template <class M, class Ops>
__device__ void run_double_buffered(Ops& ops, int block_m, int block_n) {
    typedef typename M::Element T;
    typedef typename M::Accumulator A;
    __shared__ __align__(16) T a_slices[2][M::kSliceA];
    __shared__ __align__(16) T b_slices[2][M::kSliceB];
    A acc[M::kAccumulators];
#pragma unroll
    for (int i = 0; i < M::kAccumulators; ++i) acc[i] = A(0);

    T staged[Staged<M, Ops>::kCount];
    constexpr bool kCopies = Ops::kPackedA || Ops::kPackedB;  // any cp.async to wait for
    const int steps = ops.steps;
    if (steps > 0) {
        ops.begin();
        fetch_slice<M>(staged, a_slices[0], b_slices[0], ops);
        if constexpr (kCopies) cp_async_commit();
        store_staged<M, Ops>(staged, a_slices[0], b_slices[0]);
        if constexpr (kCopies) cp_async_wait<0>();
        __syncthreads();
    }
    for (int step = 0; step < steps; ++step) {
        const int buffer = step & 1;
        const bool has_next = step + 1 < steps;
        if (has_next) {
            ops.advance();
            fetch_slice<M>(staged, a_slices[buffer ^ 1], b_slices[buffer ^ 1], ops);  // in flight during the multiply
            if constexpr (kCopies) cp_async_commit();
        }
        M::template multiply<Ops::kMMajorA, Ops::kNMajorB>(a_slices[buffer], b_slices[buffer], acc);
        if (has_next) store_staged<M, Ops>(staged, a_slices[buffer ^ 1], b_slices[buffer ^ 1]);
        if constexpr (kCopies) cp_async_wait<0>();
        __syncthreads();  // the next slice is in place for all; everyone is done with `buffer`
    }
    store_tile<M>(ops, acc, block_m, block_n);
}

// The stages' slices in dynamic shared memory (gemm_plan.gemm_dynamic_shared_bytes: more than the
// 48 KiB a block gets without opting in): kStages × (an A slice, then a B slice).
extern __shared__ __align__(16) unsigned char gemm_stages[];

// kStages >= 3 (the tensor cores, whose operands all arrive packed by cp.async): slices s + 1 ..
// s + kStages - 1 are in flight while slice s is multiplied. Every thread commits one cp.async
// group per slice, empty past the last, so cp_async_wait<kStages - 2> means "my copies of the
// slice about to be multiplied have landed"; the barrier after it makes them everyone's and
// tells that everyone is done with the previous step's buffer, which this step refills. One
// barrier per step.
template <class M, class Ops>
__device__ void run_pipelined(Ops& ops, int block_m, int block_n) {
    typedef typename M::Element T;
    typedef typename M::Accumulator A;
    constexpr int kStages = M::kStages;
    static_assert(Ops::kPackedA && Ops::kPackedB, "every operand by cp.async: nothing staged through registers");
    constexpr int kStage = M::kSliceA + M::kSliceB;  // elements per stage: A's slice, then B's
    T* const stages = reinterpret_cast<T*>(gemm_stages);
    A acc[M::kAccumulators];
#pragma unroll
    for (int i = 0; i < M::kAccumulators; ++i) acc[i] = A(0);

    T* const no_staging = nullptr;  // fetch_slice's staged registers: none (every operand is packed)
    const int steps = ops.steps;
    if (steps > 0) ops.begin();
#pragma unroll
    for (int stage = 0; stage < kStages - 1; ++stage) {  // the prologue: slices 0 .. kStages - 2
        if (stage < steps) {
            if (stage > 0) ops.advance();
            fetch_slice<M>(no_staging, stages + stage * kStage, stages + stage * kStage + M::kSliceA, ops);
        }
        cp_async_commit();
    }
    // offsets of step % kStages's stage and of (step - 1) % kStages's, without a division
    int buffer = 0, refill = (kStages - 1) * kStage;
    for (int step = 0; step < steps; ++step) {
        cp_async_wait<kStages - 2>();
        __syncthreads();  // slice `step` is in place for all; everyone is done with step - 1's buffer
        if (step + kStages - 1 < steps) {
            ops.advance();
            fetch_slice<M>(no_staging, stages + refill, stages + refill + M::kSliceA, ops);
        }
        cp_async_commit();
        M::template multiply<Ops::kMMajorA, Ops::kNMajorB>(stages + buffer, stages + buffer + M::kSliceA, acc);
        refill = buffer;
        buffer = buffer == (kStages - 1) * kStage ? 0 : buffer + kStage;
    }
    cp_async_wait<0>();  // no copy outlives the block (the empty groups past the last slice)
    store_tile<M>(ops, acc, block_m, block_n);
}

template <class M, class Ops>
__device__ __forceinline__ void run_gemm(Ops& ops, int block_m, int block_n) {
    if constexpr (M::kStages > 2) run_pipelined<M>(ops, block_m, block_n);
    else run_double_buffered<M>(ops, block_m, block_n);
}

// ---------------------------------------------------------------------------------------------
// Iterator 1 and 2: forward by stride phase and grad_input. K walks (tap, slice of BK channels);
// a slice never spans two taps.

template <class X, class Y> struct SameType { static constexpr bool value = false; };
template <class X> struct SameType<X, X> { static constexpr bool value = true; };

// The first of `slices` K slices split s of `splits` sums: ⌊s·slices/splits⌋, so the splits differ by
// at most one slice and none is empty while splits <= slices.
__device__ __forceinline__ int split_begin(int s, int slices, int splits) {
    return (int)((long long)s * slices / splits);
}

// blockIdx.z = split · (phases · groups) + phase · groups + group (grad_input: one phase).
template <Pass P>
__device__ __forceinline__ int phase_groups(const Geometry& g) {
    return P == Pass::Forward ? g.stride[0] * g.stride[1] * g.stride[2] * g.groups : g.groups;
}

// What the epilogue needs of a block's Problem to place C's rows in dst (Problem::dst_row), kept in
// shared memory where the main loop is at its register bound (ConvOperands::kGridInShared): the
// forward's phase grid (q_ext, dst_offset) would otherwise stay live in registers through the loop.
struct OutputGrid {
    int q_ext[3], dst_mul[3], dst_offset[3], dst_ext[3];
    int m_size, q_total, dst_channels, first_channel;
    OutputGrid() = default;
    template <Pass P>
    __device__ explicit OutputGrid(const Problem<P>& p)
        : m_size(p.m_size), q_total(p.q_total), dst_channels(p.dst_channels), first_channel(p.group * p.nc) {
        for (int d = 0; d < 3; ++d) {
            q_ext[d] = p.q_ext[d];
            dst_mul[d] = p.dst_mul[d];
            dst_offset[d] = p.dst_offset[d];
            dst_ext[d] = p.dst_ext[d];
        }
    }
    __device__ __forceinline__ long long dst_row(int m) const {
        return gemm::dst_row(m, m_size, q_total, q_ext, dst_mul, dst_offset, dst_ext, dst_channels, first_channel);
    }
};

template <Pass P, class M>
struct ConvOperands {
    typedef typename M::Element T;
    typedef typename M::Accumulator A;
    Problem<P> p;
    // else A is src's own elements and B the weight's, one per thread and row
    static constexpr bool kPackedA = M::kPacksOperands, kPackedB = M::kPacksOperands;
    // the epilogue reads the block's output grid from shared memory (the forward's phase grid is
    // not the kernel parameters' own, as grad_input's is) where the math's loop needs every register
    static constexpr bool kGridInShared = P == Pass::Forward && M::kRegisterBound;
    const OutputGrid* grid;  // kGridInShared: set by conv_gemm
    // the slices' layouts (multiply): the packed activation in rows of K; the packed weight too where
    // the math packs it N-major, else k-major (as every element-wise operand)
    static constexpr bool kMMajorA = kPackedA, kNMajorB = kPackedB && M::kPackedBNMajor;
    typedef PackedChunks<M, M::BN> ChunksB;  // the k-major packed weight's (fetch_slice)
    const TapEntry* taps;
    const T* any_a;
    const T* any_b;
    const T* bias;
    T* dst;
    A* workspace;             // splits copies of dst; used only when splits > 1
    A* partial;               // this split's copy of dst in the workspace
    int has_bias, steps, dst_spatial, src_spatial;
    int splits, split, first_step, slices_per_tap;  // this block's K: steps [first_step, first_step + steps)
    // this thread's row of A (an output / input position) and column of B (N channels: a chunk's, packed)
    const T* src_row;     // src[n, group·KC, 0], packed: (n, position 0, group); null past the last row
    int a_stride;         // packed: elements per (sample, position), groups × the padded K channels
    const T* w_column;    // B (c = 0, j, tap 0) of the group: packed, j the chunk's first (N-major: the row's); null past the last column
    int b_stride_c;       // elements per K channel: a packed row (N-major packing: 1), or the weight's stride
    int q[3];
    // the current slice
    int tap, c0, a_position;  // a_position -1: outside src
    long long b_tap;          // offset of the tap's B: packed, its first row; else its index

    __device__ __forceinline__ ConvOperands(const Geometry& g, const T* src, const T* w, const T* bias_, int has_bias_,
                                            T* dst_, A* workspace_, int splits_, const TapEntry* taps_, int block_m,
                                            int block_n)
        : p(g, blockIdx.z % phase_groups<P>(g)), taps(taps_), any_a(src), any_b(w), bias(bias_), dst(dst_),
          workspace(workspace_), has_bias(has_bias_), splits(splits_) {
        split = blockIdx.z / phase_groups<P>(g);
        slices_per_tap = (p.kc + M::BK - 1) / M::BK;
        const int total = p.tap_total * slices_per_tap;
        first_step = split_begin(split, total, splits);
        steps = split_begin(split + 1, total, splits) - first_step;
        src_spatial = p.src_ext[0] * p.src_ext[1] * p.src_ext[2];
        dst_spatial = p.dst_ext[0] * p.dst_ext[1] * p.dst_ext[2];
        partial = workspace + split * ((long long)g.N * p.dst_channels * dst_spatial);
        const int m = block_m + (kPackedA ? ActivationChunks<M>::row() : RowsA<M>::column());
        src_row = nullptr;
        q[0] = q[1] = q[2] = 0;
        const int packed_channels = packed_row<T>(p.kc);
        a_stride = g.groups * packed_channels;
        if (m < p.m_size) {
            const int n = m / p.q_total;
            unflatten3(m % p.q_total, p.q_ext, q);
            src_row = kPackedA ? src + (long long)n * src_spatial * a_stride + p.group * packed_channels
                               : src + ((long long)n * p.src_channels + (long long)p.group * p.kc) * src_spatial;
        }
        const WeightAsB& b = p.weight;
        if constexpr (kNMajorB) {
            b_stride_c = 1;  // K innermost: a row per (tap, N channel) of packed_row(kc) elements
            const int j = block_n + WeightRowChunks<M>::row();
            w_column = j < p.nc ? w + p.group * b.template packed_group_elements<T, true>() + (long long)j * packed_row<T>(p.kc)
                                : nullptr;
        } else if constexpr (kPackedB) {
            b_stride_c = b.template row<T>();
            const int j = block_n + ChunksB::column();
            w_column = j < p.nc ? w + p.group * b.template packed_group_elements<T, false>() + j : nullptr;
        } else {
            b_stride_c = b.stride_c;
            const int j = block_n + RowsB<M>::column();
            w_column = j < p.nc ? w + p.group * b.group_elements + (long long)j * b.stride_j : nullptr;
        }
    }

    __device__ __forceinline__ void set_tap(const TapEntry& e) {
        int pos[3];
        bool inside = src_row != nullptr;
        for (int d = 0; d < 3; ++d) {
            pos[d] = q[d] * p.src_mul[d] + e.offset[d];
            inside = inside && pos[d] >= 0 && pos[d] < p.src_ext[d];
        }
        a_position = inside ? flatten3(pos, p.src_ext) : -1;
        if constexpr (kNMajorB) b_tap = (long long)e.index * p.nc * packed_row<T>(p.kc);
        else if constexpr (kPackedB) b_tap = (long long)e.index * p.kc * b_stride_c;
        else b_tap = e.index;
    }
    __device__ __forceinline__ void begin() {  // step first_step: (tap, slice of channels)
        tap = first_step / slices_per_tap;
        c0 = first_step % slices_per_tap * M::BK;
        set_tap(taps[tap]);
    }
    __device__ __forceinline__ void advance() {
        c0 += M::BK;
        if (c0 >= p.kc) {
            c0 = 0;
            set_tap(taps[++tap]);
        }
    }
    // a row of the slice is a channel c
    __device__ __forceinline__ int a_first() const { return c0 + RowsA<M>::k(0); }
    __device__ __forceinline__ int a_next(int c) const { return c + RowsA<M>::kStep; }
    __device__ __forceinline__ int b_first() const { return c0 + RowsB<M>::k(0); }
    __device__ __forceinline__ int b_next(int c) const { return c + RowsB<M>::kStep; }
    __device__ __forceinline__ const T* a_source(int c) const {
        return a_position >= 0 && c < p.kc ? src_row + (long long)c * src_spatial + a_position : nullptr;
    }
    // chunk i of ActivationChunks (packed A): 16 bytes of K channels from the slice's c0 on
    __device__ __forceinline__ const T* a_chunk(int i) const {
        const int c = c0 + ActivationChunks<M>::k(i);
        return a_position >= 0 && c < p.kc ? src_row + (long long)a_position * a_stride + c : nullptr;
    }
    __device__ __forceinline__ const T* b_at(int c) const {
        return w_column && c < p.kc ? w_column + b_tap + (long long)c * b_stride_c : nullptr;
    }
    __device__ __forceinline__ const T* b_source(int c) const { return b_at(c); }  // unpacked
    __device__ __forceinline__ const T* b_chunk(int i) const {  // packed
        if constexpr (kNMajorB) return b_at(c0 + WeightRowChunks<M>::k(i));
        else return b_at(c0 + ChunksB::k(i));
    }

    __device__ __forceinline__ long long row_offset(int row) const {
        return kGridInShared ? grid->dst_row(row) : p.dst_row(row);
    }
    __device__ __forceinline__ long long column_offset(int col) const {
        return col < p.nc ? (long long)col * dst_spatial : -1;
    }
    // Split, a partial sum goes to this split's copy in the accumulation type (the reduction adds
    // the splits, then the bias); where that type is the output's, one store serves both cases.
    __device__ __forceinline__ void store(long long row_offset, long long column_offset, int col, A value) const {
        if (P == Pass::Forward && has_bias && splits == 1) value += load(bias + p.group * p.nc + col);
        if constexpr (SameType<A, T>::value) {
            (splits > 1 ? partial : dst)[row_offset + column_offset] = value;
        } else if (splits > 1) {
            partial[row_offset + column_offset] = value;
        } else {
            dst[row_offset + column_offset] = from_acc<T>(value);
        }
    }
};

template <Pass P, class M>
__device__ void conv_gemm(const typename M::Element* __restrict__ src, const typename M::Element* __restrict__ w,
                          const typename M::Element* __restrict__ bias, int has_bias,
                          typename M::Element* __restrict__ dst, typename M::Accumulator* __restrict__ workspace,
                          int splits, const Geometry g) {
    __shared__ TapEntry taps[GEMM_MAX_TAPS];
    const int block_m = blockIdx.x * M::BM, block_n = blockIdx.y * M::BN;
    ConvOperands<P, M> ops(g, src, w, bias, has_bias, dst, workspace, splits, taps, block_m, block_n);
    if (block_m >= ops.p.m_size) return;  // a phase with fewer rows than the largest: the whole block leaves
    for (int t = threadIdx.x; t < ops.p.tap_total; t += kThreads) taps[t] = ops.p.tap(g, t);
    if constexpr (ConvOperands<P, M>::kGridInShared) {  // 64 bytes (gemm_plan.GEMM_OUTPUT_GRID_BYTES)
        __shared__ OutputGrid grid;
        if (threadIdx.x == 0) grid = OutputGrid(ops.p);
        ops.grid = &grid;
    }
    __syncthreads();
    run_gemm<M>(ops, block_m, block_n);
}

// ---------------------------------------------------------------------------------------------
// Iterator 3: grad_weight on the tensors' own elements (FFMA and DFMA without cp.async). C[ci][j]
// with j = (co, tap) (the weight's own layout), K = (n, i) over every sample and input position:
// A[ci][(n, i)] = x[n, group·C_in/g + ci, i] and
// B[(n, i)][(co, tap)] = grad_output[n, group·C_out/g + co, i·stride + tap·dilation - padding]
// (zero outside). blockIdx.z = group·splits + split: split s sums the slices [s·per, (s+1)·per) of
// K and writes its partial tile to workspace[s] (a fixed-order reduction adds them up), or
// straight to grad_weight when there is one split. Each thread walks its positions with a cursor
// (n, i_d, i_h, i_w) advanced by carries: no division in the loop.

struct Cursor {
    int n, flat, i[3];
    __device__ __forceinline__ void advance(int delta, const int ext[3], int spatial) {
        flat += delta;
        i[2] += delta;
        while (i[2] >= ext[2]) {
            i[2] -= ext[2];
            if (++i[1] == ext[1]) {
                i[1] = 0;
                if (++i[0] == ext[0]) {
                    i[0] = 0;
                    ++n;
                    flat -= spatial;
                }
            }
        }
    }
};

// What both grad_weight iterators share: the block's group and its split of K (blockIdx.z =
// group·splits + split), cursors into the (sample, position) pairs, and the epilogue's rows and
// stores — grad_weight's row (ci of the group) of C_out/groups · taps values, or this split's copy
// of it in the workspace.
template <class M>
struct WeightGradSplit {
    typedef typename M::Element T;
    typedef typename M::Accumulator A;
    const Geometry& g;
    const T* any_a;
    const T* any_b;
    T* grad_weight;
    A* workspace;
    int steps, splits, group, split, cin_g, cout_g, taps, in_spatial, out_spatial;
    int first;  // this split's first slice of BK pairs

    __device__ __forceinline__ WeightGradSplit(const Geometry& g_, const T* x, const T* grad_output, T* grad_weight_,
                                               A* workspace_, int splits_)
        : g(g_), any_a(x), any_b(grad_output), grad_weight(grad_weight_), workspace(workspace_), splits(splits_) {
        group = blockIdx.z / splits;
        split = blockIdx.z % splits;
        cin_g = g.cin_g();
        cout_g = g.cout_g();
        taps = g.taps();
        in_spatial = g.in_spatial();
        out_spatial = g.out_spatial();
        const int slices = (g.N * in_spatial + M::BK - 1) / M::BK;  // N·in_spatial < 2^31 (the host checks)
        first = split_begin(split, slices, splits);
        steps = split_begin(split + 1, slices, splits) - first;
    }
    // the cursor at (sample, position) number `flat` = n·in_spatial + position
    __device__ __forceinline__ Cursor start_of(int flat) const {
        Cursor c;
        c.n = flat / in_spatial;
        c.flat = flat % in_spatial;
        unflatten3(c.flat, g.in, c.i);
        return c;
    }
    __device__ __forceinline__ void begin() {}
    __device__ __forceinline__ long long row_offset(int row) const {
        if (row >= cin_g) return -1;
        const long long weight_row = ((long long)group * cin_g + row) * cout_g * taps;
        return splits > 1 ? (long long)split * g.C_in * cout_g * taps + weight_row : weight_row;
    }
    __device__ __forceinline__ void store(long long row_offset, long long column_offset, int, A value) const {
        if (splits > 1) workspace[row_offset + column_offset] = value;
        else grad_weight[row_offset + column_offset] = from_acc<T>(value);
    }
};

template <class M>
struct WeightGradOperands : WeightGradSplit<M> {
    typedef WeightGradSplit<M> Split;
    typedef typename M::Element T;
    using Split::g;
    using Split::cin_g;
    using Split::cout_g;
    using Split::taps;
    using Split::in_spatial;
    using Split::out_spatial;
    static constexpr bool kPackedA = false, kPackedB = false, kMMajorA = false, kNMajorB = false;
    // A's and B's rows of a slice coincide on square tiles: one cursor serves both
    static constexpr bool kOneCursor = M::BM == M::BN;
    const T* x_row;          // x[0, group·cin_g + ci, 0]; null past the last row
    const T* go_column;      // grad_output[0, group·cout_g + co, 0]; null past the last column
    int offset[3];           // of this thread's tap: position = i·stride + offset, per dim
    long long x_sample, go_sample;  // elements between samples
    Cursor a_cursor, b_cursor;  // positions of this thread's first row of the current slice, per operand

    __device__ __forceinline__ WeightGradOperands(const Geometry& g_, const T* x, const T* grad_output, T* grad_weight_,
                                                  typename M::Accumulator* workspace_, int splits_, int block_m,
                                                  int block_n)
        : Split(g_, x, grad_output, grad_weight_, workspace_, splits_) {
        x_sample = (long long)g.C_in * in_spatial;
        go_sample = (long long)g.C_out * out_spatial;
        const int ci = block_m + RowsA<M>::column();
        x_row = ci < cin_g ? x + ((long long)this->group * cin_g + ci) * in_spatial : nullptr;
        const int j = block_n + RowsB<M>::column();
        go_column = nullptr;
        if (j < cout_g * taps) {
            const int co = j / taps;
            int k[3];
            unflatten3(j % taps, g.k, k);
            for (int d = 0; d < 3; ++d) offset[d] = k[d] * g.dil[d] - g.pad[d];
            go_column = grad_output + ((long long)this->group * cout_g + co) * out_spatial;
        }
        a_cursor = this->start_of(this->first * M::BK + RowsA<M>::k(0));
        if constexpr (!kOneCursor) b_cursor = this->start_of(this->first * M::BK + RowsB<M>::k(0));
    }

    __device__ __forceinline__ void advance() {
        a_cursor.advance(M::BK, g.in, in_spatial);
        if constexpr (!kOneCursor) b_cursor.advance(M::BK, g.in, in_spatial);
    }

    // a row of the slice is a (sample, input position): the cursor, moved on by kStep per row
    __device__ __forceinline__ Cursor a_first() const { return a_cursor; }
    __device__ __forceinline__ Cursor a_next(Cursor c) const {
        c.advance(RowsA<M>::kStep, g.in, in_spatial);
        return c;
    }
    __device__ __forceinline__ Cursor b_first() const {
        if constexpr (kOneCursor) return a_cursor;
        else return b_cursor;
    }
    __device__ __forceinline__ Cursor b_next(Cursor c) const {
        c.advance(RowsB<M>::kStep, g.in, in_spatial);
        return c;
    }
    __device__ __forceinline__ const T* a_source(const Cursor& c) const {
        return x_row && c.n < g.N ? x_row + c.n * x_sample + c.flat : nullptr;
    }
    __device__ __forceinline__ const T* b_source(const Cursor& c) const {
        if (!go_column || c.n >= g.N) return nullptr;
        int pos[3];
        bool inside = true;
#pragma unroll
        for (int d = 0; d < 3; ++d) {
            pos[d] = c.i[d] * g.stride[d] + offset[d];
            inside = inside && pos[d] >= 0 && pos[d] < g.out[d];
        }
        return inside ? go_column + c.n * go_sample + flatten3(pos, g.out) : nullptr;
    }

    __device__ __forceinline__ long long column_offset(int col) const { return col < cout_g * taps ? col : -1; }
};

// Iterator 4: grad_weight on the packed activations, for the maths that pack them
// (kPacksOperands: the tensor cores, and FFMA and DFMA with cp.async). x and grad_output arrive channels-last,
// [n][position][group][channels padded to GEMM_PACK_ROW_BYTES] (deconv_gemm_pack_activation_*,
// TF32-rounded for tf32), so a row k = (n, i) of a slice holds consecutive input channels of x
// and, at one tap, consecutive output channels of grad_output: both slices k-major, in 16-byte
// chunks (PackedChunks). The C columns are j = tap·P + co, P = C_out/groups padded as the packing
// pads it, so a chunk never spans two taps; the epilogue maps them back to the weight's (co, tap)
// and leaves out the padding's. A's rows are consecutive (sample, position) pairs of the packed x:
// one offset walks them; a thread's B chunks share a row (PackedRowChunks), whose
// (sample, position) one carry cursor walks; each chunk adds its own tap's offsets.
template <class M>
struct WeightGradPackedOperands : WeightGradSplit<M> {
    typedef WeightGradSplit<M> Split;
    typedef typename M::Element T;
    using Split::g;
    using Split::cin_g;
    using Split::cout_g;
    using Split::taps;
    using Split::in_spatial;
    typedef PackedChunks<M, M::BM> ChunksA;
    typedef PackedRowChunks<M, M::BN> ChunksB;  // one row per thread: one cursor
    static constexpr bool kPackedA = true, kPackedB = true, kMMajorA = false, kNMajorB = false;
    int out_channels_row;     // P: C_out/groups padded as the packing pads a row
    int total;                // K: N·in_spatial (sample, position) pairs, < 2^31 (the host checks)
    int k0;                   // the current slice's first pair
    const T* x_chunk;         // packed x at pair 0, this thread's chunk of channels; null past C_in/groups
    int x_stride;             // elements per (sample, position) of packed x
    // per chunk of B: packed grad_output at (0, position 0) and the chunk's output channels (null:
    // padding or past the last column), and its tap's offsets: output position = i·stride + offset
    const T* go_chunk[ChunksB::kChunks];
    int offset[ChunksB::kChunks][3];
    int go_stride;            // elements per (sample, position) of packed grad_output
    Cursor b_cursor;          // (sample, input position) of this thread's B row of the current slice

    __device__ __forceinline__ WeightGradPackedOperands(const Geometry& g_, const T* x, const T* grad_output,
                                                        T* grad_weight_, typename M::Accumulator* workspace_,
                                                        int splits_, int block_m, int block_n)
        : Split(g_, x, grad_output, grad_weight_, workspace_, splits_) {
        const int group = this->group;
        total = g.N * in_spatial;
        k0 = this->first * M::BK;
        const int x_row = packed_row<T>(cin_g);
        out_channels_row = packed_row<T>(cout_g);
        x_stride = g.groups * x_row;
        go_stride = g.groups * out_channels_row;
        const int ci = block_m + ChunksA::column();
        x_chunk = ci < cin_g ? x + group * x_row + ci : nullptr;
#pragma unroll
        for (int c = 0; c < ChunksB::kChunks; ++c) {
            const int j = block_n + ChunksB::column(c), tap = j / out_channels_row, co = j % out_channels_row;
            go_chunk[c] = nullptr;
            int k[3];
            unflatten3(tap < taps ? tap : 0, g.k, k);
            for (int d = 0; d < 3; ++d) offset[c][d] = k[d] * g.dil[d] - g.pad[d];
            if (tap < taps && co < cout_g) go_chunk[c] = grad_output + group * out_channels_row + co;
        }
        b_cursor = this->start_of(k0 + ChunksB::k(0));
    }

    __device__ __forceinline__ void advance() {
        k0 += M::BK;
        b_cursor.advance(M::BK, g.in, in_spatial);
    }
    // chunk i of ChunksA: x's channels at pair k0 + its row (null: zero)
    __device__ __forceinline__ const T* a_chunk(int i) const {
        const int k = k0 + ChunksA::k(i);
        return x_chunk && k < total ? x_chunk + (long long)k * x_stride : nullptr;
    }
    // chunk i of ChunksB: grad_output's channels at the row's output position for the chunk's tap
    __device__ __forceinline__ const T* b_chunk(int i) const {
        const Cursor& c = b_cursor;
        if (!go_chunk[i] || c.n >= g.N) return nullptr;
        int pos[3];
        bool inside = true;
#pragma unroll
        for (int d = 0; d < 3; ++d) {
            pos[d] = c.i[d] * g.stride[d] + offset[i][d];
            inside = inside && (unsigned)pos[d] < (unsigned)g.out[d];  // 0 <= pos < out, one compare
        }
        return inside ? go_chunk[i] + ((long long)c.n * this->out_spatial + flatten3(pos, g.out)) * go_stride
                      : nullptr;
    }

    // column j = tap·P + co: the weight's (co, tap), -1 in the padding
    __device__ __forceinline__ long long column_offset(int col) const {
        const int tap = col / out_channels_row, co = col % out_channels_row;
        return tap < taps && co < cout_g ? co * taps + tap : -1;
    }
};

// x and grad_output: packed (deconv_gemm_pack_activation_*) where the math packs them.
template <class M>
__device__ void weight_grad_gemm(const typename M::Element* __restrict__ x,
                                 const typename M::Element* __restrict__ grad_output,
                                 typename M::Element* __restrict__ grad_weight,
                                 typename M::Accumulator* __restrict__ workspace, int splits, const Geometry g) {
    const int block_m = blockIdx.x * M::BM, block_n = blockIdx.y * M::BN;
    if constexpr (M::kPacksOperands) {
        WeightGradPackedOperands<M> ops(g, x, grad_output, grad_weight, workspace, splits, block_m, block_n);
        run_gemm<M>(ops, block_m, block_n);
    } else {
        WeightGradOperands<M> ops(g, x, grad_output, grad_weight, workspace, splits, block_m, block_n);
        run_gemm<M>(ops, block_m, block_n);
    }
}

// The weight packed for the forward (grad_input = 0) or grad_input GEMM (WeightAsB): one element
// per thread and step of a grid-stride loop, in packed order (coalesced stores), zeros past the
// row's channels; NMajor (kPackedBNMajor): per group [tap][N channel][K channel], rows padded in K,
// else [tap][K channel][N channel], rows padded in N; RoundTf32: each rounded to TF32 (cvt.rna),
// once, for the tf32 math.
template <typename T, bool RoundTf32, bool NMajor>
__device__ void pack_weight(const T* __restrict__ w, T* __restrict__ packed, int grad_input, const Geometry g) {
    const WeightAsB b(g, grad_input != 0);
    const int outer = NMajor ? b.nc : b.kc, inner = NMajor ? b.kc : b.nc;  // channels per packed row, per tap
    const int row = packed_row<T>(inner);
    const long long rows_per_group = (long long)b.taps * outer;
    const long long count = g.groups * rows_per_group * row;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(e % row);
        const long long packed_row_index = e / row;
        const int group = (int)(packed_row_index / rows_per_group), tap_channel = (int)(packed_row_index % rows_per_group);
        const int tap = tap_channel / outer, o = tap_channel % outer;
        const int c = NMajor ? i : o, j = NMajor ? o : i;
        T value = T(0.0f);
        if (i < inner) value = w[group * b.group_elements + (long long)c * b.stride_c + (long long)j * b.stride_j + tap];
        if constexpr (RoundTf32) value = __uint_as_float(float_to_tf32(value));
        packed[e] = value;
    }
}

// The activation packed for the forward's (x; grad_input = 0) or grad_input's GEMM (grad_output):
// [n][position][group][K channel], the K channels of a group padded with zeros to whole
// GEMM_PACK_ROW_BYTES — so A arrives by 16-byte cp.async into its m-major slices (channels-last, as
// cuDNN transposes internally). One element per thread and step of a grid-stride loop, in packed
// order (coalesced stores); RoundTf32: each rounded to TF32 (cvt.rna), once, for the tf32 math.
template <typename T, bool RoundTf32>
__device__ void pack_activation(const T* __restrict__ src, T* __restrict__ packed, int grad_input, const Geometry g) {
    const int channels = grad_input ? g.C_out : g.C_in, kc = channels / g.groups;
    const int spatial = grad_input ? g.out_spatial() : g.in_spatial(), row = packed_row<T>(kc);
    const long long count = (long long)g.N * spatial * g.groups * row;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(e % row);
        const long long position_group = e / row;
        const int group = (int)(position_group % g.groups);
        const long long sample_position = position_group / g.groups;
        const int position = (int)(sample_position % spatial), n = (int)(sample_position / spatial);
        T value = T(0.0f);
        if (c < kc) value = src[((long long)n * channels + (long long)group * kc + c) * spatial + position];
        if constexpr (RoundTf32) value = __uint_as_float(float_to_tf32(value));
        packed[e] = value;
    }
}

// The split partials of an output (count elements; channel = e / spatial % channels) added in
// split order, then the forward's bias once: bitwise reproducible for a given split count.
template <typename T>
__device__ void reduce_splits(const typename Acc<T>::type* __restrict__ workspace, T* __restrict__ out, int splits,
                              long long count, const T* __restrict__ bias, int has_bias, int channels, int spatial) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x) {
        typename Acc<T>::type sum = workspace[e];
        for (int s = 1; s < splits; ++s) sum += workspace[s * count + e];
        if (has_bias) sum += load(bias + (int)(e / spatial % channels));
        out[e] = from_acc<T>(sum);
    }
}

}  // namespace gemm

// ---------------------------------------------------------------------------------------------
// Entry points

// deconv_<pass>_gemm_<math>_<BM>x<BN>: one entry point per pass, math and tile of the menus
// (gemm_math.cuh). MATH is the math's tile template.
#define DECONV_GEMM_FORWARD(MATH_NAME, T, MATH, BM, BN)                                                           \
    extern "C" __global__ void __launch_bounds__(gemm::kThreads, MATH<BM, BN>::kMinBlocks)                        \
        deconv_forward_gemm_##MATH_NAME##_##BM##x##BN(const T* x, const T* w, const T* bias, int has_bias, T* y,  \
                                                     MATH<BM, BN>::Accumulator* workspace, int splits,            \
                                                     DECONV_GEOMETRY_PARAMS) {                                    \
        gemm::conv_gemm<gemm::Pass::Forward, MATH<BM, BN>>(x, w, bias, has_bias, y, workspace, splits,            \
                                                           DECONV_GEOMETRY_ARGS);                                 \
    }
#define DECONV_GEMM_GRAD_INPUT(MATH_NAME, T, MATH, BM, BN)                                                        \
    extern "C" __global__ void __launch_bounds__(gemm::kThreads, MATH<BM, BN>::kMinBlocks)                        \
        deconv_grad_input_gemm_##MATH_NAME##_##BM##x##BN(const T* grad_output, const T* w, T* grad_input,         \
                                                        MATH<BM, BN>::Accumulator* workspace, int splits,         \
                                                        DECONV_GEOMETRY_PARAMS) {                                 \
        gemm::conv_gemm<gemm::Pass::GradInput, MATH<BM, BN>>(grad_output, w, nullptr, 0, grad_input, workspace,   \
                                                             splits, DECONV_GEOMETRY_ARGS);                       \
    }
#define DECONV_GEMM_GRAD_WEIGHT(MATH_NAME, T, MATH, BM, BN)                                                       \
    extern "C" __global__ void __launch_bounds__(gemm::kThreads, MATH<BM, BN>::kMinBlocks)                        \
        deconv_grad_weight_gemm_##MATH_NAME##_##BM##x##BN(const T* x, const T* grad_output, T* grad_weight,       \
                                                         MATH<BM, BN>::Accumulator* workspace, int splits,        \
                                                         DECONV_GEOMETRY_PARAMS) {                                \
        gemm::weight_grad_gemm<MATH<BM, BN>>(x, grad_output, grad_weight, workspace, splits, DECONV_GEOMETRY_ARGS); \
    }

// The packing of the maths that read their operands packed (kPacksOperands), before their forward and grad_input.
#define DECONV_GEMM_PACK_WEIGHT(MATH_NAME, T, MATH, BM, BN)                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        deconv_gemm_pack_weight_##MATH_NAME(const T* w, T* packed_w, int grad_input, DECONV_GEOMETRY_PARAMS) {    \
        gemm::pack_weight<T, MATH<BM, BN>::kPackRoundsTf32, MATH<BM, BN>::kPackedBNMajor>(w, packed_w, grad_input, \
                                                                                        DECONV_GEOMETRY_ARGS);    \
    }

// The activations' packing (x or grad_output), of the maths that read them packed (kPacksOperands:
// the forward's and grad_input's A, grad_weight's A and B).
#define DECONV_GEMM_PACK_ACTIVATION(MATH_NAME, T, MATH, BM, BN)                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        deconv_gemm_pack_activation_##MATH_NAME(const T* src, T* packed_src, int grad_input,                      \
                                                DECONV_GEOMETRY_PARAMS) {                                         \
        gemm::pack_activation<T, MATH<BM, BN>::kPackRoundsTf32>(src, packed_src, grad_input, DECONV_GEOMETRY_ARGS); \
    }

// The maths this module holds (CUDECONV_WANTS, module_select.cuh): ENTRY(name, storage type, tile
// template, BM, BN) for each. The tensor-core maths need compute capability 8.0 (CUDECONV_NO_MMA,
// gemm_math.cuh): an sm_70 or sm_75 module holds the f32 and f64 GEMMs (and the split reduces) only.
#if CUDECONV_WANTS(F32)
#define GEMM_F32(ENTRY, BM, BN) ENTRY(f32, float, gemm::F32Math, BM, BN)
#else
#define GEMM_F32(ENTRY, BM, BN)
#endif
#if CUDECONV_WANTS(F64)
#define GEMM_F64(ENTRY, BM, BN) ENTRY(f64, double, gemm::F64Math, BM, BN)
#else
#define GEMM_F64(ENTRY, BM, BN)
#endif
#if CUDECONV_WANTS(TF32) && !defined(CUDECONV_NO_MMA)
#define GEMM_TF32(ENTRY, BM, BN) ENTRY(tf32, float, gemm::Tf32MathTile, BM, BN)
#else
#define GEMM_TF32(ENTRY, BM, BN)
#endif
#if CUDECONV_WANTS(TF32X3) && !defined(CUDECONV_NO_MMA)
#define GEMM_TF32X3(ENTRY, BM, BN) ENTRY(tf32x3, float, gemm::Tf32x3MathTile, BM, BN)
#else
#define GEMM_TF32X3(ENTRY, BM, BN)
#endif
#if CUDECONV_WANTS(F16) && !defined(CUDECONV_NO_MMA)
#define GEMM_F16(ENTRY, BM, BN) ENTRY(f16, __half, gemm::F16Math, BM, BN)
#else
#define GEMM_F16(ENTRY, BM, BN)
#endif
#if CUDECONV_WANTS(BF16) && !defined(CUDECONV_NO_MMA)
#define GEMM_BF16(ENTRY, BM, BN) ENTRY(bf16, __nv_bfloat16, gemm::Bf16Math, BM, BN)
#else
#define GEMM_BF16(ENTRY, BM, BN)
#endif
// The FFMA and tensor-core maths share their menus; DFMA has its own.
#define GEMM_MAIN_MENU(ENTRY, BM, BN) \
    GEMM_F32(ENTRY, BM, BN) GEMM_TF32(ENTRY, BM, BN) GEMM_TF32X3(ENTRY, BM, BN) GEMM_F16(ENTRY, BM, BN) GEMM_BF16(ENTRY, BM, BN)

// The kernels every GEMM of a math shares, in its support module (CUDECONV_WANTS_GEMM_SUPPORT,
// module_select.cuh): the packings, the same for every tile and pass (rows padded to a sector,
// whatever BN) — without cp.async (CUDECONV_NO_CP_ASYNC, below compute capability 8.0) FFMA and
// DFMA read every operand as it is, and have none — and the split-K reduce of each storage type.
#if CUDECONV_WANTS_GEMM_SUPPORT
#ifndef CUDECONV_NO_CP_ASYNC
GEMM_F32(DECONV_GEMM_PACK_WEIGHT, 128, 128)
GEMM_F64(DECONV_GEMM_PACK_WEIGHT, 64, 64)
GEMM_F32(DECONV_GEMM_PACK_ACTIVATION, 128, 128)
GEMM_F64(DECONV_GEMM_PACK_ACTIVATION, 64, 64)
#endif
GEMM_TF32(DECONV_GEMM_PACK_WEIGHT, 128, 128)
GEMM_TF32X3(DECONV_GEMM_PACK_WEIGHT, 128, 128)
GEMM_F16(DECONV_GEMM_PACK_WEIGHT, 128, 128)
GEMM_BF16(DECONV_GEMM_PACK_WEIGHT, 128, 128)
GEMM_TF32(DECONV_GEMM_PACK_ACTIVATION, 128, 128)
GEMM_TF32X3(DECONV_GEMM_PACK_ACTIVATION, 128, 128)
GEMM_F16(DECONV_GEMM_PACK_ACTIVATION, 128, 128)
GEMM_BF16(DECONV_GEMM_PACK_ACTIVATION, 128, 128)

#define DECONV_GEMM_SPLIT_REDUCE(SUFFIX, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        deconv_gemm_split_reduce_##SUFFIX(const Acc<T>::type* workspace, T* out, int splits, long long count,     \
                                          const T* bias, int has_bias, int channels, int spatial) {               \
        gemm::reduce_splits<T>(workspace, out, splits, count, bias, has_bias, channels, spatial);                 \
    }
CUDECONV_FOR_EACH_DTYPE(DECONV_GEMM_SPLIT_REDUCE)
#endif

// The menus (gemm_math.cuh), each entry point kept where CUDECONV_WANTS_GEMM(pass, BM, BN) says so.
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_FORWARD, 128, 128)
GEMM_MAIN_MENU(DECONV_GEMM_FORWARD, 128, 128)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_FORWARD, 128, 64)
GEMM_MAIN_MENU(DECONV_GEMM_FORWARD, 128, 64)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_FORWARD, 64, 64)
GEMM_MAIN_MENU(DECONV_GEMM_FORWARD, 64, 64)
GEMM_F64(DECONV_GEMM_FORWARD, 64, 64)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_FORWARD, 128, 32)
GEMM_MAIN_MENU(DECONV_GEMM_FORWARD, 128, 32)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_FORWARD, 64, 32)
GEMM_F64(DECONV_GEMM_FORWARD, 64, 32)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_INPUT, 128, 128)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_INPUT, 128, 128)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_INPUT, 128, 64)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_INPUT, 128, 64)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_INPUT, 64, 64)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_INPUT, 64, 64)
GEMM_F64(DECONV_GEMM_GRAD_INPUT, 64, 64)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_INPUT, 128, 32)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_INPUT, 128, 32)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_INPUT, 64, 32)
GEMM_F64(DECONV_GEMM_GRAD_INPUT, 64, 32)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_WEIGHT, 128, 128)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_WEIGHT, 128, 128)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_WEIGHT, 64, 128)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_WEIGHT, 64, 128)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_WEIGHT, 64, 64)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_WEIGHT, 64, 64)
GEMM_F64(DECONV_GEMM_GRAD_WEIGHT, 64, 64)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_WEIGHT, 32, 128)
GEMM_MAIN_MENU(DECONV_GEMM_GRAD_WEIGHT, 32, 128)
#endif
#if CUDECONV_WANTS_GEMM(CUDECONV_PASS_GRAD_WEIGHT, 32, 64)
GEMM_F64(DECONV_GEMM_GRAD_WEIGHT, 32, 64)
#endif
