// gemm_problem.cuh — the implicit GEMM's per-block problem (deconv_gemm.cu): the pass, stride
// phase and group a block works on, the weight seen as the GEMM's B operand (plain or packed),
// and the tap table the conv iterators walk.
#pragma once
#include "gemm_math.cuh"

namespace gemm {

// ---------------------------------------------------------------------------------------------
// The problem one block works on: its pass, phase and group, and the tap table.

struct TapEntry {
    int offset[3];  // src position = q·src_mul + offset, per dim
    int index;      // flat tap index in the weight
};

// Elements of a packed row of `count` channels: rounded up to GEMM_PACK_ROW_BYTES (a 32-byte sector),
// so 16-byte chunks never straddle rows (the packed weight's N channels, the packed activation's K).
template <typename T>
__device__ __forceinline__ int packed_row(int count) {
    constexpr int per_row = GEMM_PACK_ROW_BYTES / sizeof(T);
    static_assert(GEMM_PACK_ROW_BYTES % 16 == 0 && per_row > 0, "packed rows of whole 16-byte chunks");
    return (count + per_row - 1) / per_row * per_row;
}

// The weight (C_in, C_out/groups, *kernel) as B of the forward (K = C_in/groups, N = C_out/groups)
// or of grad_input (K = C_out/groups, N = C_in/groups), and its packed copy: per group, taps × kc
// rows (tap-major) of `row` elements, N channel j at j, zeros from nc on — or, N-major (the tf32
// maths, whose B fragments ldmatrix reads from n-major slices), taps × nc rows of packed_row(kc).
struct WeightAsB {
    int kc, nc, taps;
    int stride_c, stride_j;   // weight element strides per K channel and per N channel
    long long group_elements; // weight elements per group, = packed rows per group × nc

    __device__ __forceinline__ WeightAsB(const Geometry& g, bool grad_input) {
        taps = g.taps();
        const int cin_g = g.cin_g(), cout_g = g.cout_g();
        kc = grad_input ? cout_g : cin_g;
        nc = grad_input ? cin_g : cout_g;
        stride_c = grad_input ? taps : cout_g * taps;
        stride_j = grad_input ? cout_g * taps : taps;
        group_elements = (long long)cin_g * cout_g * taps;
    }
    // elements per packed row: nc rounded up to GEMM_PACK_ROW_BYTES (16-byte chunks never straddle rows)
    template <typename T>
    __device__ __forceinline__ int row() const { return packed_row<T>(nc); }
    // packed elements per group: N-major ([tap][N][K], rows of packed_row(kc)) or K-major ([tap][K][N])
    template <typename T, bool NMajor>
    __device__ __forceinline__ long long packed_group_elements() const {
        return NMajor ? (long long)taps * nc * packed_row<T>(kc) : (long long)taps * kc * row<T>();
    }
};

// Offset in dst of C row m = (sample n, grid point q) of a block's problem, at its first channel:
// position q·dst_mul + dst_offset (-1 past the last row).
__device__ __forceinline__ long long dst_row(int m, int m_size, int q_total, const int q_ext[3], const int dst_mul[3],
                                             const int dst_offset[3], const int dst_ext[3], int dst_channels,
                                             int first_channel) {
    if (m >= m_size) return -1;
    const int n = m / q_total;
    int q[3], pos[3];
    unflatten3(m % q_total, q_ext, q);
    for (int d = 0; d < 3; ++d) pos[d] = q[d] * dst_mul[d] + dst_offset[d];
    return ((long long)n * dst_channels + first_channel) * (dst_ext[0] * dst_ext[1] * dst_ext[2]) + flatten3(pos, dst_ext);
}

template <Pass P>
struct Problem {
    int q_ext[3], src_ext[3], src_mul[3], dst_ext[3], dst_mul[3], dst_offset[3];
    PhaseTaps runs[3];  // the taps along each dim that reach the block's phase
    int src_channels, dst_channels;  // channel counts of the whole tensors
    WeightAsB weight;
    int kc, nc;                      // channels per group on the K and N sides
    int q_total, m_size, tap_total;
    int group;

    __device__ __forceinline__ Problem(const Geometry& g, int phase_group) : weight(g, P == Pass::GradInput) {
        group = phase_group % g.groups;
        int phase = phase_group / g.groups;
        int r[3];
        for (int d = 2; d >= 0; --d) {
            r[d] = P == Pass::Forward ? phase % g.stride[d] : 0;
            phase /= g.stride[d];
        }
        for (int d = 0; d < 3; ++d) {
            if (P == Pass::Forward) {
                q_ext[d] = max(0, (g.out[d] - r[d] + g.stride[d] - 1) / g.stride[d]);
                src_ext[d] = g.in[d];
                src_mul[d] = 1;
                dst_ext[d] = g.out[d];
                dst_mul[d] = g.stride[d];
                dst_offset[d] = r[d];
                runs[d] = PhaseTaps(r[d], g.k[d], g.stride[d], g.pad[d], g.dil[d]);
            } else {
                q_ext[d] = g.in[d];
                src_ext[d] = g.out[d];
                src_mul[d] = g.stride[d];
                dst_ext[d] = g.in[d];
                dst_mul[d] = 1;
                dst_offset[d] = 0;
                runs[d] = PhaseTaps(0, g.k[d], 1, 0, 1);  // every tap (stride 1: one phase)
            }
        }
        src_channels = P == Pass::Forward ? g.C_in : g.C_out;
        dst_channels = P == Pass::Forward ? g.C_out : g.C_in;
        kc = weight.kc;
        nc = weight.nc;
        q_total = q_ext[0] * q_ext[1] * q_ext[2];
        m_size = g.N * q_total;
        tap_total = runs[0].count * runs[1].count * runs[2].count;
    }

    __device__ __forceinline__ TapEntry tap(const Geometry& g, int t) const {
        int j[3];
        j[2] = t % runs[2].count;
        j[1] = t / runs[2].count % runs[1].count;
        j[0] = t / runs[2].count / runs[1].count;
        TapEntry e;
        int k[3];
        for (int d = 0; d < 3; ++d) {
            k[d] = runs[d].first + j[d] * runs[d].step;
            e.offset[d] = P == Pass::Forward ? (dst_offset[d] + g.pad[d] - k[d] * g.dil[d]) / g.stride[d]
                                             : k[d] * g.dil[d] - g.pad[d];
        }
        e.index = (k[0] * g.k[1] + k[1]) * g.k[2] + k[2];
        return e;
    }

    // Offset of C row m in dst, without the channel (-1 past the last row).
    __device__ __forceinline__ long long dst_row(int m) const {
        return gemm::dst_row(m, m_size, q_total, q_ext, dst_mul, dst_offset, dst_ext, dst_channels, group * nc);
    }
};

}  // namespace gemm
