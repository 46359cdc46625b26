// deconv_depthwise.cu — forward and grad_input of transposed convolutions with one input channel
// per group (depthwise, with a channel multiplier M = C_out/groups):
//
//   y[n, g·M + c, o]      = bias[g·M + c] + Σ_{k, i : o = i·stride + k·dilation - padding} x[n, g, i] · w[g, c, k]
//   grad_input[n, g, i]   = Σ_c Σ_k grad_output[n, g·M + c, i·stride + k·dilation - padding] · w[g, c, k]
//
// These are memory-bound (one multiply-add per weight tap per output, no channel sum to reuse
// operands across), so the kernels aim at moving each tensor once: one thread per output element
// (forward) or input element (grad_input), consecutive threads along the innermost dim so loads
// and stores coalesce; the few input values a forward thread reads are shared with its
// neighbours through L1. The forward visits only its stride phase's taps: per dim the first tap
// and the input position are found with one division when the thread starts, then taps advance by
// stride/gcd(stride, dilation) and input positions by the matching step — no division per tap
// (the direct gather kernel divides per tap and tiles 4 channels per thread, 3 of them idle here).
// Sums run in a fixed order: bitwise reproducible. grad_weight of these layers is the direct
// per-filter reduction in deconv_backward.cu (one block per filter tap tile, already reading each
// tensor about once). Entry points for __half and __nv_bfloat16 (float accumulation), float and double.
#include "deconv_common.cuh"

// ---------------------------------------------------------------------------------------------
// Device helpers

// PhaseTaps (deconv_common.cuh) plus the input positions: i = i_first - j·i_step for tap j.
struct PhaseInputs : PhaseTaps {
    int i_first, i_step;
    __device__ __forceinline__ PhaseInputs(int o, int k_size, int stride, int pad, int dil)
        : PhaseTaps(o, k_size, stride, pad, dil) {
        i_step = step * dil / stride;
        i_first = (o + pad - first * dil) / stride;  // may lie outside [0, in): the loop skips those
    }
};

// ---------------------------------------------------------------------------------------------
// Kernels

template <typename T>
__device__ void depthwise_forward(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                  int has_bias, T* __restrict__ y, const Geometry g) {
    typedef typename Acc<T>::type A;
    const int in_spatial = g.in_spatial(), out_spatial = g.out_spatial(), taps = g.taps();
    const int multiplier = g.cout_g();
    // Rows are (n, output channel); consecutive threads take consecutive output positions.
    FOR_EACH_ROW(row, g.N * g.C_out) FOR_EACH_POSITION(o_flat, out_spatial) {
        const int co = row % g.C_out, n = row / g.C_out;
        const int group = co / multiplier, c = co % multiplier;
        int o[3];
        unflatten3(o_flat, g.out, o);
        const PhaseInputs pd(o[0], g.k[0], g.stride[0], g.pad[0], g.dil[0]);
        const PhaseInputs ph(o[1], g.k[1], g.stride[1], g.pad[1], g.dil[1]);
        const PhaseInputs pw(o[2], g.k[2], g.stride[2], g.pad[2], g.dil[2]);
        const T* x_channel = x + ((long long)n * g.C_in + group) * in_spatial;
        const T* w_filter = w + ((long long)group * multiplier + c) * taps;
        A sum = has_bias ? load(bias + co) : A(0);
        for (int jd = 0, kd = pd.first, id = pd.i_first; jd < pd.count; ++jd, kd += pd.step, id -= pd.i_step) {
            if (id < 0 || id >= g.in[0]) continue;
            for (int jh = 0, kh = ph.first, ih = ph.i_first; jh < ph.count; ++jh, kh += ph.step, ih -= ph.i_step) {
                if (ih < 0 || ih >= g.in[1]) continue;
                const T* x_row = x_channel + ((long long)id * g.in[1] + ih) * g.in[2];
                const T* w_row = w_filter + (kd * g.k[1] + kh) * g.k[2];
                for (int jw = 0, kw = pw.first, iw = pw.i_first; jw < pw.count; ++jw, kw += pw.step, iw -= pw.i_step)
                    if (iw >= 0 && iw < g.in[2]) sum += load(x_row + iw) * load(w_row + kw);
            }
        }
        y[(long long)row * out_spatial + o_flat] = from_acc<T>(sum);
    }
}

template <typename T>
__device__ void depthwise_grad_input(const T* __restrict__ gy, const T* __restrict__ w, T* __restrict__ gx,
                                     const Geometry g) {
    typedef typename Acc<T>::type A;
    const int in_spatial = g.in_spatial(), out_spatial = g.out_spatial(), taps = g.taps();
    const int multiplier = g.cout_g();
    // Rows are (n, input channel = group); consecutive threads take consecutive input positions.
    FOR_EACH_ROW(row, g.N * g.C_in) FOR_EACH_POSITION(i_flat, in_spatial) {
        const int group = row % g.C_in, n = row / g.C_in;
        int i[3];
        unflatten3(i_flat, g.in, i);
        A sum = 0;
        for (int c = 0; c < multiplier; ++c) {
            const T* gy_channel = gy + ((long long)n * g.C_out + (long long)group * multiplier + c) * out_spatial;
            const T* w_filter = w + ((long long)group * multiplier + c) * taps;
            for (int kd = 0, od = i[0] * g.stride[0] - g.pad[0]; kd < g.k[0]; ++kd, od += g.dil[0]) {
                if (od < 0 || od >= g.out[0]) continue;
                for (int kh = 0, oh = i[1] * g.stride[1] - g.pad[1]; kh < g.k[1]; ++kh, oh += g.dil[1]) {
                    if (oh < 0 || oh >= g.out[1]) continue;
                    const T* gy_row = gy_channel + ((long long)od * g.out[1] + oh) * g.out[2];
                    const T* w_row = w_filter + (kd * g.k[1] + kh) * g.k[2];
                    for (int kw = 0, ow = i[2] * g.stride[2] - g.pad[2]; kw < g.k[2]; ++kw, ow += g.dil[2])
                        if (ow >= 0 && ow < g.out[2]) sum += load(gy_row + ow) * load(w_row + kw);
                }
            }
        }
        gx[(long long)row * in_spatial + i_flat] = from_acc<T>(sum);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points

#define DECONV_DEPTHWISE_ENTRY_POINTS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 4)                                                        \
        deconv_forward_depthwise_##SUFFIX(const T* x, const T* w, const T* bias, int has_bias, T* y,           \
                                          DECONV_GEOMETRY_PARAMS) {                                            \
        depthwise_forward(x, w, bias, has_bias, y, DECONV_GEOMETRY_ARGS);                                      \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 4)                                                        \
        deconv_grad_input_depthwise_##SUFFIX(const T* grad_output, const T* w, T* grad_input,                  \
                                             DECONV_GEOMETRY_PARAMS) {                                         \
        depthwise_grad_input(grad_output, w, grad_input, DECONV_GEOMETRY_ARGS);                                \
    }
CUDECONV_FOR_EACH_DTYPE(DECONV_DEPTHWISE_ENTRY_POINTS)
