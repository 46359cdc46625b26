// Kernels for tests/test_emulator.py: one per emulator feature, results checked against NumPy.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// Shared-memory tree reduction: one partial sum per block.
extern "C" __global__ void __launch_bounds__(256) block_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float partial[256];
    const unsigned t = threadIdx.x;
    const unsigned i = blockIdx.x * blockDim.x + t;
    partial[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) partial[t] += partial[t + half];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

extern "C" __global__ void axpy(float a, const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}

// Per warp: the sum by __shfl_down_sync (lane 0), and by __shfl_xor_sync (every lane).
extern "C" __global__ void warp_sums(const float* x, float* down_sum, float* xor_sum, double* xor_sum_f64, long long* xor_sum_i64) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float down = x[i], butterfly = x[i];
    double wide = x[i];
    long long integer = (long long)(x[i] * 1000.0f) + (1ll << 40);
    for (int offset = 16; offset > 0; offset /= 2) {
        down += __shfl_down_sync(0xffffffffu, down, offset);
        butterfly += __shfl_xor_sync(0xffffffffu, butterfly, offset);
        wide += __shfl_xor_sync(0xffffffffu, wide, offset);
        integer += __shfl_xor_sync(0xffffffffu, integer, offset);
    }
    if (threadIdx.x % 32 == 0) down_sum[i / 32] = down;
    xor_sum[i] = butterfly;
    xor_sum_f64[i] = wide;
    xor_sum_i64[i] = integer;
}

// Inclusive scan within segments of `width` lanes with __shfl_up_sync, plus a broadcast of the
// segment's first value with __shfl_sync and a half-precision rotate.
extern "C" __global__ void warp_scan(const int* x, int* scan, int* first, __half* rotated, int width) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % width;
    int value = x[i];
    for (int offset = 1; offset < width; offset *= 2) {
        const int up = __shfl_up_sync(0xffffffffu, value, offset, width);
        if (lane >= offset) value += up;
    }
    scan[i] = value;
    first[i] = __shfl_sync(0xffffffffu, x[i], 0, width);
    rotated[i] = __shfl_sync(0xffffffffu, __int2half_rn(x[i]), (threadIdx.x + 1) % 32);
}

extern "C" __global__ void votes(const float* x, unsigned* ballots, int* any, int* all, unsigned* active) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int warp = blockIdx.x * ((blockDim.x + 31) / 32) + threadIdx.x / 32;
    const unsigned ballot = __ballot_sync(0xffffffffu, x[i] > 0.0f);
    const int some = __any_sync(0xffffffffu, x[i] > 0.0f);
    const int every = __all_sync(0xffffffffu, x[i] > 0.0f);
    if (threadIdx.x % 32 == 0) {
        ballots[warp] = ballot;
        any[warp] = some;
        all[warp] = every;
        active[warp] = __activemask();
    }
}

// Lanes 16..31 leave before the full-warp shuffle: a bug the emulator must report.
extern "C" __global__ void shuffle_after_exit(float* x) {
    if (threadIdx.x % 32 >= 16) return;
    x[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 1);
}

extern "C" __global__ void block_votes(const int* x, int* count, int* any, int* all) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int c = __syncthreads_count(x[i] > 0);
    const int o = __syncthreads_or(x[i] > 0);
    const int a = __syncthreads_and(x[i] > 0);
    if (threadIdx.x == 0) {
        count[blockIdx.x] = c;
        any[blockIdx.x] = o;
        all[blockIdx.x] = a;
    }
}

// Every thread of every block hits each atomic once; `values` are small non-negative ints.
extern "C" __global__ void atomics(const int* values, int* i32, unsigned* u32, unsigned long long* u64, float* f32,
                                   double* f64, __half* f16, __nv_bfloat16* bf16, long long* i64,
                                   unsigned short* u16, int* exchanged) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = values[i];
    atomicAdd(&i32[0], v);
    atomicSub(&i32[1], v);
    atomicMax(&i32[2], v - 50);
    atomicMin(&i32[3], v - 50);
    atomicAdd(&u32[0], (unsigned)v);
    atomicMax(&u32[1], (unsigned)v);
    atomicMin(&u32[2], (unsigned)v + 1u);
    atomicAdd(&u64[0], (unsigned long long)v << 33);
    atomicMax(&u64[1], (unsigned long long)v << 33);
    atomicMin(&u64[2], ((unsigned long long)v + 1ull) << 33);
    atomicMax(&i64[0], -(long long)v * 3000000000ll);
    atomicMin(&i64[1], -(long long)v * 3000000000ll);
    atomicAdd(&f32[0], (float)v);
    atomicAdd(&f64[0], v * 0.5);
    atomicAdd(&f16[0], __int2half_rn(v));
    atomicAdd(&bf16[0], __float2bfloat16(1.0f));
    // Counters incremented through compare-and-swap loops.
    int seen = i32[4];
    for (;;) {
        const int previous = atomicCAS(&i32[4], seen, seen + 1);
        if (previous == seen) break;
        seen = previous;
    }
    unsigned long long seen64 = u64[3];
    for (;;) {
        const unsigned long long previous = atomicCAS(&u64[3], seen64, seen64 + 3ull);
        if (previous == seen64) break;
        seen64 = previous;
    }
    unsigned short seen16 = u16[0];
    for (;;) {
        const unsigned short previous = atomicCAS(&u16[0], seen16, (unsigned short)(seen16 + 1));
        if (previous == seen16) break;
        seen16 = previous;
    }
    // Each thread swaps its index in and records what it took out: a permutation of
    // {initial, 0, ..., n-1} minus the final value.
    exchanged[i] = atomicExch(&i32[5], i);
    atomicExch(&u32[3], 7u);
    atomicExch(&f32[1], 2.5f);
}

// Reverses each block's slice through dynamic shared memory.
extern "C" __global__ void reverse_blocks(const float* x, float* y) {
    extern __shared__ float staged[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    staged[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = staged[blockDim.x - 1 - threadIdx.x];
}

// Reads dynamic shared memory nobody wrote: the emulator fills it with 0xff bytes (NaN).
extern "C" __global__ void read_unwritten_shared(float* y) {
    extern __shared__ __align__(16) unsigned char raw[];
    y[threadIdx.x] = reinterpret_cast<const float*>(raw)[threadIdx.x];
}

// Every thread records what it sees of the built-in index variables.
extern "C" __global__ void indices(unsigned* out) {
    const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    unsigned* o = out + 12 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
    o[6] = blockDim.x;  o[7] = blockDim.y;  o[8] = blockDim.z;
    o[9] = gridDim.x;   o[10] = gridDim.y;  o[11] = gridDim.z;
}

// A template behind two extern "C" entry points.
template <typename T>
__device__ __forceinline__ void scale_impl(T* x, T factor, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * factor + T(1);
}
extern "C" __global__ void scale_f32(float* x, float factor, int n) { scale_impl(x, factor, n); }
extern "C" __global__ void scale_f64(double* x, double factor, int n) { scale_impl(x, factor, n); }

// Half precision in and out; float accumulation.
extern "C" __global__ void half_axpy(__half a, const __half* x, __half* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half(__half2float(a) * __half2float(x[i]) + __half2float(y[i]));
}

extern "C" __global__ void to_bfloat16(const float* x, unsigned short* bits, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) bits[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
}

struct Affine {
    int n;
    float scale;
    double shift;
};

extern "C" __global__ void affine(Affine p, const float* x, double* y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) y[i] = x[i] * p.scale + p.shift;
}

extern "C" __global__ void checked(const float* x) {
    assert(x[threadIdx.x] >= 0.0f);
}

extern "C" __global__ void hello(int tag) {
    if (threadIdx.x == 1 && blockIdx.x == 1) printf("hello from block %d thread %d, tag %d\n", blockIdx.x, threadIdx.x, tag);
}

extern "C" __global__ void __launch_bounds__(64) small_blocks_only(int* x) { x[threadIdx.x] = 1; }

extern "C" __global__ void fast_math(const float* x, float* y) {
    const int i = threadIdx.x;
    const float v = x[i];
    y[4 * i + 0] = __expf(v) + __logf(v + 2.0f);
    y[4 * i + 1] = __fdividef(v, 3.0f) + rsqrtf(v + 1.0f);
    y[4 * i + 2] = __fmaf_rn(v, 2.0f, 1.0f) + fminf(v, 0.5f) + fmaxf(v, 0.5f);
    y[4 * i + 3] = (float)(min(i, 3) + max(i, 3) + min(3u, (unsigned)i)) + max(v, 0.25f);
}
