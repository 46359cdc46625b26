// deconv_grad_bias.cu — the bias gradient of the transposed convolution y = conv_transpose(x, w) + b:
//
//   grad_bias[co] = Σ_n Σ_o grad_output[n, co, o]
//
// Versions (both deterministic, no atomics):
//   deconv_grad_bias_*:   one block per output channel, a block reduction over (n, o) in a fixed
//                         order (warp shuffles, then warp 0) — the plain reference version.
//   deconv_grad_bias_slabs_* then deconv_grad_bias_combine_*: the parallel grad_bias. Block
//                         (slab, co) reduces one slab of channel co's N·out_spatial values (each
//                         thread four loads in flight, then the block reduction) into
//                         partial[co, slab]; one thread per channel then adds its slabs in order.
//                         Enough blocks to fill the GPU when channels are few (3 or 21), and
//                         deterministic: every sum has a fixed order.
// A source of its own so that a step on the GEMMs compiles no direct kernel. Entry points for
// __half and __nv_bfloat16 (float accumulation), float and double.
#include "deconv_common.cuh"

// ---------------------------------------------------------------------------------------------
// Kernels

template <typename T>
__device__ void grad_bias(const T* __restrict__ gy, T* __restrict__ gb, int N, int C_out,
                          int out_spatial) {
    typedef typename Acc<T>::type A;
    for (int co = blockIdx.x; co < C_out; co += gridDim.x) {
        A sum = 0;
        for (SampleCursor at(threadIdx.x, out_spatial); at.n < N; at.advance(blockDim.x, out_spatial))
            sum += load(gy + ((long long)at.n * C_out + co) * out_spatial + at.pos);
        sum = block_sum(sum);
        if (threadIdx.x == 0) gb[co] = from_acc<T>(sum);
    }
}

// Block (slab, co): the values e in [slab·per_slab, (slab+1)·per_slab) of channel co, e = n·out_spatial + o.
template <typename T>
__device__ void grad_bias_slabs(const T* __restrict__ gy, typename Acc<T>::type* __restrict__ partial, int N, int C_out,
                                int out_spatial, int slabs, int per_slab) {
    typedef typename Acc<T>::type A;
    const int co = blockIdx.y, slab = blockIdx.x;
    const long long total = (long long)N * out_spatial;
    const long long begin = (long long)slab * per_slab;
    const int count = (int)min((long long)per_slab, total - begin);
    const int stride = blockDim.x;
    A sums[4] = {0, 0, 0, 0};
    SampleCursor at((int)(begin % out_spatial) + (int)threadIdx.x, out_spatial);
    at.n += (int)(begin / out_spatial);
    // four independent sums: four loads in flight per thread
    int e = threadIdx.x;
    for (; e + 3 * stride < count; e += 4 * stride) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            sums[u] += load(gy + ((long long)at.n * C_out + co) * out_spatial + at.pos);
            at.advance(stride, out_spatial);
        }
    }
    for (; e < count; e += stride) {
        sums[0] += load(gy + ((long long)at.n * C_out + co) * out_spatial + at.pos);
        at.advance(stride, out_spatial);
    }
    const A sum = block_sum((sums[0] + sums[1]) + (sums[2] + sums[3]));
    if (threadIdx.x == 0) partial[(long long)co * slabs + slab] = sum;
}

template <typename T>
__device__ void grad_bias_combine(const typename Acc<T>::type* __restrict__ partial, T* __restrict__ gb, int C_out,
                                  int slabs) {
    for (int co = blockIdx.x * blockDim.x + threadIdx.x; co < C_out; co += gridDim.x * blockDim.x) {
        typename Acc<T>::type sum = 0;
        for (int s = 0; s < slabs; ++s) sum += partial[(long long)co * slabs + s];
        gb[co] = from_acc<T>(sum);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (blockDim.x a multiple of 32, at most 1024: the block reduction needs whole warps).

#define DECONV_GRAD_BIAS_ENTRY_POINTS(SUFFIX, T)                                                              \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_grad_bias_##SUFFIX(const T* gy, T* gb, int N, int C_out, int out_spatial) {                      \
        grad_bias(gy, gb, N, C_out, out_spatial);                                                               \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_grad_bias_slabs_##SUFFIX(const T* gy, Acc<T>::type* partial, int N, int C_out, int out_spatial,  \
                                        int slabs, int per_slab) {                                              \
        grad_bias_slabs(gy, partial, N, C_out, out_spatial, slabs, per_slab);                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_grad_bias_combine_##SUFFIX(const Acc<T>::type* partial, T* gb, int C_out, int slabs) {           \
        grad_bias_combine(partial, gb, C_out, slabs);                                                           \
    }
CUDECONV_FOR_EACH_DTYPE(DECONV_GRAD_BIAS_ENTRY_POINTS)
