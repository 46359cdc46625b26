// sgd.cu — one fused SGD step (torch.optim.SGD's formulas), elementwise over a parameter:
//
//   g = maximize ? -grad : grad
//   g += weight_decay * p                                   (when weight_decay != 0)
//   buf = first_step ? g : momentum * buf + (1 - dampening) * g   (when momentum != 0)
//   g = nesterov ? g + momentum * buf : buf                 (when momentum != 0)
//   p -= lr * g
//
// One version, one thread per element (grid-stride loop): parameter, gradient and momentum buffer
// are read and written once each. The math runs in M = float for __half, __nv_bfloat16 and float
// parameters, double for double; the momentum buffer is M (float32 for 16-bit parameters). `buf` is only
// touched when momentum != 0 (callers pass any valid pointer otherwise). The host passes
// 1 - dampening already computed in double, as PyTorch does.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "module_select.cuh"

#ifndef DECONV_BLOCK
#define DECONV_BLOCK 256  // threads per block (the host's BLOCK, passed with -D)
#endif

// ---------------------------------------------------------------------------------------------
// Device helpers
// M, the type the update is computed in and the momentum buffer's: float but for double parameters.
template <typename T> struct Math { typedef float type; };
template <> struct Math<double> { typedef double type; };
__device__ __forceinline__ float to_math(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_math(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_math(float v) { return v; }
__device__ __forceinline__ double to_math(double v) { return v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }

// ---------------------------------------------------------------------------------------------
// Kernel
template <typename T, typename M>
__device__ void sgd_step(T* __restrict__ param, const T* __restrict__ grad, M* __restrict__ buf,
                         long long n, M lr, M momentum, M one_minus_dampening, M weight_decay, int nesterov,
                         int maximize, int first_step) {
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n;
         idx += (long long)gridDim.x * blockDim.x) {
        const M p = to_math(param[idx]);
        M g = to_math(grad[idx]);
        if (maximize) g = -g;
        if (weight_decay != M(0)) g += weight_decay * p;
        if (momentum != M(0)) {
            const M b = first_step ? g : momentum * buf[idx] + one_minus_dampening * g;
            buf[idx] = b;
            g = nesterov ? g + momentum * b : b;
        }
        store(param + idx, p - lr * g);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points
#define SGD_ENTRY_POINT(SUFFIX, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        sgd_step_##SUFFIX(T* param, const T* grad, Math<T>::type* buf, long long n, Math<T>::type lr,           \
                          Math<T>::type momentum, Math<T>::type one_minus_dampening,                            \
                          Math<T>::type weight_decay, int nesterov, int maximize, int first_step) {             \
        sgd_step(param, grad, buf, n, lr, momentum, one_minus_dampening, weight_decay, nesterov, maximize,      \
                 first_step);                                                                                   \
    }
CUDECONV_FOR_EACH_DTYPE(SGD_ENTRY_POINT)
