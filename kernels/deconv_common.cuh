// deconv_common.cuh — device helpers shared by the transposed-convolution kernels.
//
// Every kernel sees the problem as 3-d: a 1-d problem is (1, 1, L), a 2-d one (1, H, W), with
// kernel 1, stride 1, padding 0 and dilation 1 in the added dims (the host wrapper pads them).
// Layouts are PyTorch's, contiguous:
//   x      (N, C_in,  in_d,  in_h,  in_w)
//   weight (C_in, C_out/groups, k_d, k_h, k_w)
//   y      (N, C_out, out_d, out_h, out_w)
// Input position i meets tap k at output position o = i*stride + k*dilation - padding (per dim).
//
// Element types: __half and __nv_bfloat16 (accumulated in float), float, double. Elementwise kernels split their
// work into rows (n, channel) and positions within a row: blockIdx.y strides over rows, the x
// dimension over positions. Rows, positions, and every size are int; flat offsets are long long,
// so a tensor may exceed 2^31 elements. This keeps 64-bit division — a slow subroutine call — out
// of the kernels. The host (check_index_limits, loop_blocks in backends/) guarantees that
// no int here overflows: rows, positions + a block, filter elements and, per dim,
// (in-1)*stride + (k-1)*dilation + padding + out all stay below 2^31, and grid-stride loops are
// launched with few enough blocks that index + stride stays below 2^31 too.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "module_select.cuh"

// ---------------------------------------------------------------------------------------------
// Accumulator type and conversions
template <typename T> struct Acc { typedef T type; };
template <> struct Acc<__half> { typedef float type; };
template <> struct Acc<__nv_bfloat16> { typedef float type; };

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

template <typename T> __device__ __forceinline__ typename Acc<T>::type load(const T* p) {
    return to_acc(__ldg(p));
}

// ---------------------------------------------------------------------------------------------
// Block size and register tiles. The host passes its values with -D (kernel_modules.py), since it
// sizes the grids from them; the defaults here serve standalone nvcc builds.
#ifndef DECONV_BLOCK
#define DECONV_BLOCK 256  // threads per block of the direct kernels (the host's BLOCK)
#endif
#ifndef CHANNEL_TILE
#define CHANNEL_TILE 4  // channels one thread of the gather kernels computes
#endif
#ifndef TAP_TILE
#define TAP_TILE 8  // kernel taps one block of the weight-gradient kernel reduces
#endif

__device__ __forceinline__ int channel_tiles(int channels) { return (channels + CHANNEL_TILE - 1) / CHANNEL_TILE; }

// A row of the channel-tiled gather kernels: (n, group, tile), row = (n·groups + group)·tiles + tile.
// Its channels within the group are first .. first + count - 1 (count < CHANNEL_TILE in a last,
// partial tile).
struct ChannelTileRow {
    int n, group, first, count;
    __device__ __forceinline__ ChannelTileRow(int row, int groups, int channels_per_group) {
        const int tiles = channel_tiles(channels_per_group);
        first = (row % tiles) * CHANNEL_TILE;
        count = min(CHANNEL_TILE, channels_per_group - first);
        group = (row / tiles) % groups;
        n = row / tiles / groups;
    }
};

// ---------------------------------------------------------------------------------------------
// Geometry, passed to every convolution kernel as the same 22 int scalars, in this order
// (cudeconv/backends/kernel_backend.py builds them in one place).
#define DECONV_GEOMETRY_PARAMS                                                                   \
    int N, int C_in, int C_out, int groups,                                                      \
    int in_d, int in_h, int in_w, int k_d, int k_h, int k_w, int out_d, int out_h, int out_w,    \
    int s_d, int s_h, int s_w, int p_d, int p_h, int p_w, int dil_d, int dil_h, int dil_w
#define DECONV_GEOMETRY_ARGS                                                                     \
    Geometry{N, C_in, C_out, groups, {in_d, in_h, in_w}, {k_d, k_h, k_w}, {out_d, out_h, out_w}, \
             {s_d, s_h, s_w}, {p_d, p_h, p_w}, {dil_d, dil_h, dil_w}}

struct Geometry {
    int N, C_in, C_out, groups;
    int in[3], k[3], out[3], stride[3], pad[3], dil[3];

    __device__ __forceinline__ int cin_g() const { return C_in / groups; }
    __device__ __forceinline__ int cout_g() const { return C_out / groups; }
    __device__ __forceinline__ int in_spatial() const { return in[0] * in[1] * in[2]; }
    __device__ __forceinline__ int out_spatial() const { return out[0] * out[1] * out[2]; }
    __device__ __forceinline__ int taps() const { return k[0] * k[1] * k[2]; }
};

// Splits a flat spatial index into (d, h, w) for the given extents.
__device__ __forceinline__ void unflatten3(int flat, const int ext[3], int pos[3]) {
    pos[2] = flat % ext[2];
    flat /= ext[2];
    pos[1] = flat % ext[1];
    pos[0] = flat / ext[1];
}

__device__ __forceinline__ int flatten3(const int pos[3], const int ext[3]) {
    return (pos[0] * ext[1] + pos[1]) * ext[2] + pos[2];
}

// The (row, position) loops of the elementwise kernels (see the layout note above).
#define FOR_EACH_ROW(row, rows) for (int row = blockIdx.y; row < (rows); row += gridDim.y)
#define FOR_EACH_POSITION(pos, positions)                                                        \
    for (int pos = blockIdx.x * blockDim.x + threadIdx.x; pos < (positions); pos += gridDim.x * blockDim.x)

// Walks j = start, start + step, ... < N·positions as (n, pos) without dividing in the loop.
struct SampleCursor {
    int n, pos;
    __device__ __forceinline__ SampleCursor(int start, int positions) : n(start / positions), pos(start % positions) {}
    __device__ __forceinline__ void advance(int step, int positions) {
        pos += step;
        while (pos >= positions) { pos -= positions; ++n; }
    }
};

// The taps along one dim that reach output position o (or any o of its stride phase): those with
// o + padding - k·dilation divisible by stride, k = first + j·step for j < count, where step =
// stride / gcd(stride, dilation); the input position of tap `first` is (o + padding -
// first·dilation) / stride and falls by dilation / gcd per step. One division per call, none per tap.
struct PhaseTaps {
    int first, step, count;
    PhaseTaps() = default;
    __device__ __forceinline__ PhaseTaps(int o, int k_size, int stride, int pad, int dil) {
        int gcd = stride, b = dil;
        while (b) { const int t = gcd % b; gcd = b; b = t; }
        step = stride / gcd;
        first = 0;
        count = 0;
        for (int k = 0; k < step && k < k_size; ++k)  // at most stride iterations
            if ((o + pad - k * dil) % stride == 0) {
                first = k;
                count = (k_size - 1 - k) / step + 1;
                break;
            }
    }
};

// The input position that reaches output position o through tap k along one dim, or -1.
__device__ __forceinline__ int source_position(int o, int k, int stride, int pad, int dil, int in) {
    const int t = o + pad - k * dil;
    if (t < 0 || t % stride != 0) return -1;
    const int i = t / stride;
    return i < in ? i : -1;
}

// ---------------------------------------------------------------------------------------------
// Block-wide sum in a fixed order (so results are bitwise reproducible): each warp reduces with
// shuffles, warp 0 reduces the warp sums. Every thread of the block must call it; blockDim.x must
// be a multiple of 32 and at most 1024. The result is valid in thread 0.
template <typename A> __device__ __forceinline__ A block_sum(A value) {
    __shared__ A warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
    if (lane == 0) warp_sums[warp] = value;
    __syncthreads();
    if (warp == 0) {
        value = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : A(0);
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    __syncthreads();  // warp_sums may be reused by the caller's next reduction
    return value;
}
