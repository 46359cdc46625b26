// deconv_forward.cu — forward transposed convolution y = conv_transpose(x, weight) + bias.
//
//   y[n, co, o] = bias[co] + Σ_{ci in co's group} Σ_{k : o = i*stride + k*dilation - padding} x[n, ci, i] · w[ci, co%C_out_g, k]
//
// Versions:
//   1. scatter (deconv_fill_bias_* then deconv_forward_scatter_*): the textbook view. One thread
//      per (n, co, input position i): for each tap k it sums x·w over the group's input channels in
//      registers and atomically adds that into y at i*stride + k*dilation - padding. The order of
//      the atomic adds varies between runs, so the last bits may too. For __half, y itself holds
//      the running sum, so every atomic add rounds to half: a few half ulps more error than the
//      gather's single rounding. Needs sm_70+ (atomicAdd on __half).
//   2. gather (deconv_forward_gather_*): one thread per output position and tile of CHANNEL_TILE
//      output channels (each input value it loads serves the whole tile, from registers); it
//      visits only the taps whose input position is an integer (a stride phase) and sums in a
//      fixed order, so the result is bitwise reproducible. No atomics. The default.
// Each has entry points for __half and __nv_bfloat16 (float accumulation), float and double.
#include "deconv_common.cuh"

// ---------------------------------------------------------------------------------------------
// Kernels

template <typename T>
__device__ void fill_bias(T* __restrict__ y, const T* __restrict__ bias, int has_bias, int rows,
                          int C_out, int out_spatial) {
    FOR_EACH_ROW(row, rows) {
        const T value = has_bias ? bias[row % C_out] : from_acc<T>(0);
        FOR_EACH_POSITION(pos, out_spatial) y[(long long)row * out_spatial + pos] = value;
    }
}

template <typename T>
__device__ void forward_scatter(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                const Geometry g) {
    typedef typename Acc<T>::type A;
    const int in_spatial = g.in_spatial(), out_spatial = g.out_spatial();
    const int cin_g = g.cin_g(), cout_g = g.cout_g(), taps = g.taps();
    // Rows are (n, co); consecutive threads take consecutive input positions i of the row.
    FOR_EACH_ROW(row, g.N * g.C_out) FOR_EACH_POSITION(i_flat, in_spatial) {
        const int co = row % g.C_out, n = row / g.C_out;
        const int group = co / cout_g, co_in_group = co % cout_g;
        int i[3];
        unflatten3(i_flat, g.in, i);
        const T* x_at = x + ((long long)n * g.C_in + (long long)group * cin_g) * in_spatial + i_flat;
        const T* w_at = w + ((long long)group * cin_g * cout_g + co_in_group) * taps;
        T* y_row = y + (long long)row * out_spatial;
        for (int kd = 0; kd < g.k[0]; ++kd) {
            const int od = i[0] * g.stride[0] + kd * g.dil[0] - g.pad[0];
            if (od < 0 || od >= g.out[0]) continue;
            for (int kh = 0; kh < g.k[1]; ++kh) {
                const int oh = i[1] * g.stride[1] + kh * g.dil[1] - g.pad[1];
                if (oh < 0 || oh >= g.out[1]) continue;
                for (int kw = 0; kw < g.k[2]; ++kw) {
                    const int ow = i[2] * g.stride[2] + kw * g.dil[2] - g.pad[2];
                    if (ow < 0 || ow >= g.out[2]) continue;
                    const int tap = (kd * g.k[1] + kh) * g.k[2] + kw;
                    A sum = 0;
                    for (int c = 0; c < cin_g; ++c)
                        sum += load(x_at + (long long)c * in_spatial) * load(w_at + (long long)c * cout_g * taps + tap);
                    const int o[3] = {od, oh, ow};
                    atomicAdd(y_row + flatten3(o, g.out), from_acc<T>(sum));
                }
            }
        }
    }
}

template <typename T>
__device__ void forward_gather(const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ bias, int has_bias, T* __restrict__ y,
                               const Geometry g) {
    typedef typename Acc<T>::type A;
    const int in_spatial = g.in_spatial(), out_spatial = g.out_spatial();
    const int cin_g = g.cin_g(), cout_g = g.cout_g(), taps = g.taps();
    // Rows are (n, group, tile of CHANNEL_TILE output channels); consecutive threads take
    // consecutive output positions. Each input value loaded serves the whole tile.
    FOR_EACH_ROW(row, g.N * g.groups * channel_tiles(cout_g)) FOR_EACH_POSITION(o_flat, out_spatial) {
        const ChannelTileRow r(row, g.groups, cout_g);
        const int n = r.n, group = r.group, c0 = r.first, count = r.count;
        int o[3];
        unflatten3(o_flat, g.out, o);
        const T* x_group = x + ((long long)n * g.C_in + (long long)group * cin_g) * in_spatial;
        const T* w_tile = w + ((long long)group * cin_g * cout_g + c0) * taps;
        A sum[CHANNEL_TILE];
#pragma unroll
        for (int j = 0; j < CHANNEL_TILE; ++j)
            sum[j] = (has_bias && j < count) ? load(bias + group * cout_g + c0 + j) : A(0);
        for (int kd = 0; kd < g.k[0]; ++kd) {
            const int id = source_position(o[0], kd, g.stride[0], g.pad[0], g.dil[0], g.in[0]);
            if (id < 0) continue;
            for (int kh = 0; kh < g.k[1]; ++kh) {
                const int ih = source_position(o[1], kh, g.stride[1], g.pad[1], g.dil[1], g.in[1]);
                if (ih < 0) continue;
                for (int kw = 0; kw < g.k[2]; ++kw) {
                    const int iw = source_position(o[2], kw, g.stride[2], g.pad[2], g.dil[2], g.in[2]);
                    if (iw < 0) continue;
                    const int i[3] = {id, ih, iw};
                    const int i_flat = flatten3(i, g.in);
                    const int tap = (kd * g.k[1] + kh) * g.k[2] + kw;
                    // Not unrolled: unrolling doubles the registers (165 for double on sm_80)
                    // and halves the occupancy; the tile already gives CHANNEL_TILE independent FMAs.
#pragma unroll 1
                    for (int c = 0; c < cin_g; ++c) {
                        const A xv = load(x_group + (long long)c * in_spatial + i_flat);
                        const T* w_at = w_tile + (long long)c * cout_g * taps + tap;
#pragma unroll
                        for (int j = 0; j < CHANNEL_TILE; ++j)
                            if (j < count) sum[j] += xv * load(w_at + j * taps);
                    }
                }
            }
        }
        T* y_at = y + ((long long)n * g.C_out + group * cout_g + c0) * out_spatial + o_flat;
#pragma unroll
        for (int j = 0; j < CHANNEL_TILE; ++j)
            if (j < count) y_at[(long long)j * out_spatial] = from_acc<T>(sum[j]);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points. `bias` is only read when has_bias is 1 (callers pass any valid pointer otherwise).

#define DECONV_FORWARD_ENTRY_POINTS(SUFFIX, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_fill_bias_##SUFFIX(T* y, const T* bias, int has_bias, int rows, int C_out, int out_spatial) {    \
        fill_bias(y, bias, has_bias, rows, C_out, out_spatial);                                                 \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_forward_scatter_##SUFFIX(const T* x, const T* w, T* y, DECONV_GEOMETRY_PARAMS) {                 \
        forward_scatter(x, w, y, DECONV_GEOMETRY_ARGS);                                                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_forward_gather_##SUFFIX(const T* x, const T* w, const T* bias, int has_bias, T* y,               \
                                       DECONV_GEOMETRY_PARAMS) {                                                \
        forward_gather(x, w, bias, has_bias, y, DECONV_GEOMETRY_ARGS);                                          \
    }
CUDECONV_FOR_EACH_DTYPE(DECONV_FORWARD_ENTRY_POINTS)
