// deconv_depthwise.cu — forward, grad_input and grad_weight of transposed convolutions with one
// input channel per group (depthwise, with a channel multiplier M = C_out/groups):
//
//   y[n, g·M + c, o]      = bias[g·M + c] + Σ_{k, i : o = i·stride + k·dilation - padding} x[n, g, i] · w[g, c, k]
//   grad_input[n, g, i]   = Σ_c Σ_k grad_output[n, g·M + c, i·stride + k·dilation - padding] · w[g, c, k]
//   grad_weight[g, c, k]  = Σ_n Σ_i x[n, g, i] · grad_output[n, g·M + c, i·stride + k·dilation - padding]
//
// These are memory-bound (one multiply-add per weight tap per output, no channel sum to reuse
// operands across), so the kernels aim at moving each tensor once: one thread per output element
// (forward) or input element (grad_input), consecutive threads along the innermost dim so loads
// and stores coalesce; the few input values a forward thread reads are shared with its
// neighbours through L1. The forward visits only its stride phase's taps: per dim the first tap
// and the input position are found with one division when the thread starts, then taps advance by
// stride/gcd(stride, dilation) and input positions by the matching step — no division per tap
// (the direct gather kernel divides per tap and tiles 4 channels per thread, 3 of them idle here).
// grad_weight is a reduction over the N·in_spatial (sample, position) pairs for few filter elements
// (M·taps per group): block (slab, row) takes DEPTHWISE_WEIGHT_TILE consecutive elements (c, k) of
// group g's filters (a k4 2-d layer's 16 taps at once, so x and grad_output are each read about
// once, where the generic per-filter reduction of deconv_backward.cu tiles 8 taps and reads them
// twice) over one slab of pairs: each thread loads x once per pair for the whole tile, then the
// block reduces each element in a fixed order. With several slabs (enough blocks to fill the GPU)
// the block writes partial[slab] and deconv_grad_weight_depthwise_combine_* adds the slabs in order.
// Sums run in a fixed order: bitwise reproducible for a given slab count (the host's choice, from the
// shape and the GPU's SM count). Entry points for __half and __nv_bfloat16 (float accumulation),
// float and double.
#include "deconv_common.cuh"

#ifndef DEPTHWISE_WEIGHT_TILE
#define DEPTHWISE_WEIGHT_TILE 16  // filter elements one grad_weight block reduces (the host's constant)
#endif

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

// Block (slab, row): row = (group, tile of DEPTHWISE_WEIGHT_TILE elements e = c·taps + k of the
// group's M·taps); the slab is the pairs p = n·in_spatial + i in [slab·per_slab, (slab+1)·per_slab).
template <typename T>
__device__ void depthwise_grad_weight(const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gw,
                                      typename Acc<T>::type* __restrict__ partial, int slabs, int per_slab,
                                      const Geometry g) {
    typedef typename Acc<T>::type A;
    constexpr int kTile = DEPTHWISE_WEIGHT_TILE;
    const int in_spatial = g.in_spatial(), out_spatial = g.out_spatial(), taps = g.taps();
    const int elements = g.cout_g() * taps;  // of one group's filters
    const int tiles = (elements + kTile - 1) / kTile;
    const long long pairs = (long long)g.N * in_spatial, begin = (long long)blockIdx.x * per_slab;
    const int count = (int)min((long long)per_slab, pairs - begin);
    FOR_EACH_ROW(row, g.C_in * tiles) {
        const int group = row / tiles, e0 = row % tiles * kTile, live = min(kTile, elements - e0);
        // the tile's first element: channel c0 of the group, tap k0 (later ones follow by carries)
        const int c0 = e0 / taps, tap0 = e0 % taps;
        const int k0[3] = {tap0 / (g.k[1] * g.k[2]), (tap0 / g.k[2]) % g.k[1], tap0 % g.k[2]};
        A sum[kTile];
#pragma unroll
        for (int j = 0; j < kTile; ++j) sum[j] = A(0);
        const T* gy_group = gy + (long long)group * g.cout_g() * out_spatial;
        // each thread its pairs begin + threadIdx.x + r·blockDim.x of the slab: a fixed partition
        SampleCursor at((int)(begin % in_spatial) + (int)threadIdx.x, in_spatial);
        at.n += (int)(begin / in_spatial);
        for (int p = threadIdx.x; p < count; p += blockDim.x, at.advance(blockDim.x, in_spatial)) {
            int i[3];
            unflatten3(at.pos, g.in, i);
            const A xv = load(x + ((long long)at.n * g.C_in + group) * in_spatial + at.pos);
            const T* gy_channel = gy_group + ((long long)at.n * g.C_out + c0) * out_spatial;
            // element j's output position o = i·stride + k·dilation - padding, its tap k walked from
            // k0 with carries (k[2] fastest, then k[1], k[0], then the next channel): no division
            int base[3], k[3], o[3];
#pragma unroll
            for (int d = 0; d < 3; ++d) {
                base[d] = i[d] * g.stride[d] - g.pad[d];
                k[d] = k0[d];
                o[d] = base[d] + k[d] * g.dil[d];
            }
#pragma unroll
            for (int j = 0; j < kTile; ++j) {
                const bool inside = j < live && o[0] >= 0 && o[0] < g.out[0] && o[1] >= 0 && o[1] < g.out[1] &&
                                    o[2] >= 0 && o[2] < g.out[2];
                if (inside) sum[j] += xv * load(gy_channel + flatten3(o, g.out));
                if (++k[2] < g.k[2]) { o[2] += g.dil[2]; continue; }
                k[2] = 0;
                o[2] = base[2];
                if (++k[1] < g.k[1]) { o[1] += g.dil[1]; continue; }
                k[1] = 0;
                o[1] = base[1];
                if (++k[0] < g.k[0]) { o[0] += g.dil[0]; continue; }
                k[0] = 0;
                o[0] = base[0];
                gy_channel += out_spatial;
            }
        }
        const long long first = (long long)group * elements + e0;  // grad_weight[group, c, k] = gw[first + j]
#pragma unroll
        for (int j = 0; j < kTile; ++j) {
            const A total = block_sum(sum[j]);  // every thread takes part, whatever live is
            if (threadIdx.x == 0 && j < live) {
                if (slabs > 1) partial[(long long)blockIdx.x * g.C_in * elements + first + j] = total;
                else gw[first + j] = from_acc<T>(total);
            }
        }
    }
}

// The slabs' partials added in slab order.
template <typename T>
__device__ void depthwise_grad_weight_combine(const typename Acc<T>::type* __restrict__ partial, T* __restrict__ gw,
                                              int slabs, long long count) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x) {
        typename Acc<T>::type sum = partial[e];
        for (int s = 1; s < slabs; ++s) sum += partial[s * count + e];
        gw[e] = from_acc<T>(sum);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (grad_weight needs blockDim.x a multiple of 32, at most 1024: the block reduction)

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
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                              \
        deconv_grad_weight_depthwise_##SUFFIX(const T* grad_output, const T* x, T* grad_weight,                \
                                              Acc<T>::type* partial, int slabs, int per_slab,                  \
                                              DECONV_GEOMETRY_PARAMS) {                                        \
        depthwise_grad_weight(grad_output, x, grad_weight, partial, slabs, per_slab, DECONV_GEOMETRY_ARGS);    \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                              \
        deconv_grad_weight_depthwise_combine_##SUFFIX(const Acc<T>::type* partial, T* grad_weight, int slabs,  \
                                                      long long count) {                                       \
        depthwise_grad_weight_combine(partial, grad_weight, slabs, count);                                     \
    }
CUDECONV_FOR_EACH_DTYPE(DECONV_DEPTHWISE_ENTRY_POINTS)
