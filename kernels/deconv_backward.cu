// deconv_backward.cu — gradients of the transposed convolution y = conv_transpose(x, w) + b.
//
//   grad_input[n, ci, i]   = Σ_{co in ci's group} Σ_k grad_output[n, co, i*stride + k*dilation - padding] · w[ci, co%C_out_g, k]
//   grad_weight[ci, c, k]  = Σ_n Σ_i x[n, ci, i] · grad_output[n, group(ci)*C_out_g + c, i*stride + k*dilation - padding]
// (output positions outside [0, out) contribute nothing.)
//
// Versions (one each; all deterministic, no atomics):
//   deconv_grad_input_*:  an ordinary strided, dilated, grouped correlation of grad_output with the
//                         same filter — one thread per input position and tile of CHANNEL_TILE
//                         input channels (each grad_output value loaded serves the tile), a gather.
//   deconv_grad_weight_*: one block per TAP_TILE consecutive filter elements (ci, c, k..k+TAP_TILE);
//                         its threads stride over (n, i), each x value loaded serving every tap
//                         of the tile, and the block reduces in a fixed order (warp shuffles,
//                         then warp 0).
// (grad_weight's implicit GEMM is in deconv_gemm.cu, grad_bias in deconv_grad_bias.cu.) Entry points
// for __half and __nv_bfloat16 (float accumulation), float and double.
#include "deconv_common.cuh"

// ---------------------------------------------------------------------------------------------
// Kernels

template <typename T>
__device__ void grad_input(const T* __restrict__ gy, const T* __restrict__ w, T* __restrict__ gx,
                           const Geometry g) {
    typedef typename Acc<T>::type A;
    const int in_spatial = g.in_spatial(), out_spatial = g.out_spatial();
    const int cin_g = g.cin_g(), cout_g = g.cout_g(), taps = g.taps();
    // Rows are (n, group, tile of CHANNEL_TILE input channels); consecutive threads take
    // consecutive input positions. Each grad_output value loaded serves the whole tile.
    FOR_EACH_ROW(row, g.N * g.groups * channel_tiles(cin_g)) FOR_EACH_POSITION(i_flat, in_spatial) {
        const ChannelTileRow r(row, g.groups, cin_g);
        const int n = r.n, group = r.group, c0 = r.first, count = r.count;
        int i[3];
        unflatten3(i_flat, g.in, i);
        const T* gy_group = gy + ((long long)n * g.C_out + (long long)group * cout_g) * out_spatial;
        const T* w_tile = w + ((long long)group * cin_g + c0) * cout_g * taps;
        A sum[CHANNEL_TILE];
#pragma unroll
        for (int j = 0; j < CHANNEL_TILE; ++j) sum[j] = A(0);
        for (int kd = 0; kd < g.k[0]; ++kd) {
            const int od = i[0] * g.stride[0] + kd * g.dil[0] - g.pad[0];
            if (od < 0 || od >= g.out[0]) continue;
            for (int kh = 0; kh < g.k[1]; ++kh) {
                const int oh = i[1] * g.stride[1] + kh * g.dil[1] - g.pad[1];
                if (oh < 0 || oh >= g.out[1]) continue;
                for (int kw = 0; kw < g.k[2]; ++kw) {
                    const int ow = i[2] * g.stride[2] + kw * g.dil[2] - g.pad[2];
                    if (ow < 0 || ow >= g.out[2]) continue;
                    const int o[3] = {od, oh, ow};
                    const int o_flat = flatten3(o, g.out);
                    const int tap = (kd * g.k[1] + kh) * g.k[2] + kw;
                    for (int c = 0; c < cout_g; ++c) {
                        const A gyv = load(gy_group + (long long)c * out_spatial + o_flat);
                        const T* w_at = w_tile + c * taps + tap;
#pragma unroll
                        for (int j = 0; j < CHANNEL_TILE; ++j)
                            if (j < count) sum[j] += gyv * load(w_at + (long long)j * cout_g * taps);
                    }
                }
            }
        }
        T* gx_at = gx + ((long long)n * g.C_in + group * cin_g + c0) * in_spatial + i_flat;
#pragma unroll
        for (int j = 0; j < CHANNEL_TILE; ++j)
            if (j < count) gx_at[(long long)j * in_spatial] = from_acc<T>(sum[j]);
    }
}

template <typename T>
__device__ void grad_weight(const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gw,
                            const Geometry g) {
    typedef typename Acc<T>::type A;
    const int in_spatial = g.in_spatial(), out_spatial = g.out_spatial();
    const int cin_g = g.cin_g(), cout_g = g.cout_g(), taps = g.taps();
    const int tap_tiles = (taps + TAP_TILE - 1) / TAP_TILE;
    const int work_items = g.C_in * cout_g * tap_tiles;
    for (int item = blockIdx.x; item < work_items; item += gridDim.x) {
        // item = (ci * cout_g + c) * tap_tiles + tile: TAP_TILE consecutive elements of
        // grad_weight[ci, c, :], so each x value loaded serves TAP_TILE taps.
        const int tile = item % tap_tiles;
        const int c = (item / tap_tiles) % cout_g;
        const int ci = item / tap_tiles / cout_g;
        const int co = (ci / cin_g) * cout_g + c;
        const int tap0 = tile * TAP_TILE, count = min(TAP_TILE, taps - tap0);
        // The taps' offsets i·stride + k·dilation - padding, per dim, hoisted out of the (n, i) loop.
        int shift[TAP_TILE][3];
#pragma unroll
        for (int j = 0; j < TAP_TILE; ++j) {
            const int tap = tap0 + min(j, count - 1);
            const int k[3] = {tap / (g.k[1] * g.k[2]), (tap / g.k[2]) % g.k[1], tap % g.k[2]};
#pragma unroll
            for (int dim = 0; dim < 3; ++dim) shift[j][dim] = k[dim] * g.dil[dim] - g.pad[dim];
        }
        A sum[TAP_TILE];
#pragma unroll
        for (int j = 0; j < TAP_TILE; ++j) sum[j] = A(0);
        const T* gy_channel = gy + (long long)co * out_spatial;
        // Each thread walks (n, i) from its own start in steps of blockDim.x: a fixed partition.
        for (SampleCursor at(threadIdx.x, in_spatial); at.n < g.N; at.advance(blockDim.x, in_spatial)) {
            int i[3];
            unflatten3(at.pos, g.in, i);
            const A xv = load(x + ((long long)at.n * g.C_in + ci) * in_spatial + at.pos);
            const T* gy_sample = gy_channel + (long long)at.n * g.C_out * out_spatial;
#pragma unroll
            for (int j = 0; j < TAP_TILE; ++j) {
                int o[3];
                bool inside = j < count;
#pragma unroll
                for (int dim = 0; dim < 3; ++dim) {
                    o[dim] = i[dim] * g.stride[dim] + shift[j][dim];
                    inside = inside && o[dim] >= 0 && o[dim] < g.out[dim];
                }
                if (inside) sum[j] += xv * load(gy_sample + flatten3(o, g.out));
            }
        }
        T* gw_tile = gw + ((long long)ci * cout_g + c) * taps + tap0;
#pragma unroll
        for (int j = 0; j < TAP_TILE; ++j) {
            const A total = block_sum(sum[j]);  // every thread takes part, whatever count is
            if (threadIdx.x == 0 && j < count) gw_tile[j] = from_acc<T>(total);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (grad_weight needs blockDim.x a multiple of 32, at most 1024).

#define DECONV_BACKWARD_ENTRY_POINTS(SUFFIX, T)                                                                \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_grad_input_##SUFFIX(const T* gy, const T* w, T* gx, DECONV_GEOMETRY_PARAMS) {                    \
        grad_input(gy, w, gx, DECONV_GEOMETRY_ARGS);                                                            \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(DECONV_BLOCK, 2)                                               \
        deconv_grad_weight_##SUFFIX(const T* gy, const T* x, T* gw, DECONV_GEOMETRY_PARAMS) {                   \
        grad_weight(gy, x, gw, DECONV_GEOMETRY_ARGS);                                                           \
    }
CUDECONV_FOR_EACH_DTYPE(DECONV_BACKWARD_ENTRY_POINTS)
