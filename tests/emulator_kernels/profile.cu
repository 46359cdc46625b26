// Kernels for tests/test_emulator_profile.py: memory traffic that can be counted by hand. Each is
// launched with whole warps; `repeat` runs the access that many times per thread.
#include "../../kernels/mma.cuh"

// out[t] = in[t * stride] (floats): one load and one store instruction per thread.
extern "C" __global__ void strided_copy(const float* in, float* out, int stride, int repeat) {
    for (int r = 0; r < repeat; ++r) out[threadIdx.x] = in[threadIdx.x * stride];
}

// Every thread reads in[0].
extern "C" __global__ void broadcast_read(const float* in, float* out) { out[threadIdx.x] = in[0] + 1.0f; }

extern "C" __global__ void copy_doubles(const double* in, double* out) { out[threadIdx.x] = in[threadIdx.x]; }

extern "C" __global__ void copy_float4(const float4* in, float4* out) { out[threadIdx.x] = in[threadIdx.x]; }

// Thread t copies 16 bytes into its shared row with cp.async, then stores the row's first value.
extern "C" __global__ void copy_through_cp_async(const float* in, float* out) {
    __shared__ __align__(16) float rows[256][4];
    cp_async_16(rows[threadIdx.x], in + 4 * threadIdx.x, 16);
    cp_async_wait_all();
    out[threadIdx.x] = rows[threadIdx.x][0];
}

// Twice, thread t copies 16 bytes into its shared row with cp.async, the odd threads zero-filling
// (nothing read): each time, one instruction whose lanes read memory or not, as on the GPU (the
// source's ternaries may become two calls on the CPU).
extern "C" __global__ void copy_or_zero_fill_twice(const float* in, float* out) {
    __shared__ __align__(16) float rows[2][256][4];
    for (int r = 0; r < 2; ++r) {
        const bool odd = threadIdx.x % 2;
        cp_async_16(rows[r][threadIdx.x], odd ? in : in + 4 * threadIdx.x, odd ? 0 : 16);
    }
    cp_async_wait_all();
    out[threadIdx.x] = rows[0][threadIdx.x][0] + rows[1][threadIdx.x][1];
}

// Lane l loads 16 bytes of shared memory by ld_shared_16 at l·`stride_chunks`·16 bytes.
extern "C" __global__ void vector_shared_loads(float* out, int stride_chunks) {
    __shared__ __align__(16) float chunks[32 * 4 * 4];
    for (int i = threadIdx.x; i < 32 * 4 * 4; i += blockDim.x) chunks[i] = static_cast<float>(i);
    __syncthreads();
    alignas(16) float values[4];
    ld_shared_16(values, chunks + 4 * stride_chunks * threadIdx.x);
    out[threadIdx.x] = values[0] + values[3];
}

// Shared-memory tiles of 32 x `width` floats: lane l writes row l, column 0 (a column: 32 lanes at a
// stride of `width` words), then, after a barrier, reads element (0, 0) (a broadcast).
template <int width>
__device__ void column_then_broadcast(float* out) {
    __shared__ float tile[32][width];
    tile[threadIdx.x % 32][0] = static_cast<float>(threadIdx.x);
    __syncthreads();
    out[threadIdx.x] = tile[0][0];
}
extern "C" __global__ void column_of_unpadded_tile(float* out) { column_then_broadcast<32>(out); }
extern "C" __global__ void column_of_padded_tile(float* out) { column_then_broadcast<33>(out); }

// Lane l stores and loads 8 (double) and 16 bytes (float4) at consecutive addresses of shared memory.
extern "C" __global__ void wide_shared_accesses(float* out) {
    __shared__ double pairs[32];
    __shared__ float4 quads[32];
    pairs[threadIdx.x] = threadIdx.x;
    quads[threadIdx.x] = make_float4(1.0f, 2.0f, 3.0f, 4.0f);
    __syncwarp();
    const float4 q = quads[threadIdx.x ^ 1];
    out[threadIdx.x] = static_cast<float>(pairs[threadIdx.x ^ 1]) + q.x + q.w;
}

// One warp: ldmatrix.x4 of 32 rows of 16 bytes `row_stride` bytes apart, then one mma.
extern "C" __global__ void __launch_bounds__(32) ldmatrix_then_mma(float* out, int row_stride) {
    __shared__ __align__(16) unsigned char buffer[32 * 128];
    for (int i = 0; i < 32 * 128 / 32; ++i) buffer[threadIdx.x * (32 * 128 / 32) + i] = 0;
    __syncthreads();
    unsigned a[4];
    ldmatrix_x4(a, buffer + threadIdx.x * row_stride);
    const unsigned b[2] = {a[0], a[1]};
    const float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float d[4];
    mma_m16n8k16_f16(d, a, b, c);
    out[threadIdx.x] = d[0];
}
