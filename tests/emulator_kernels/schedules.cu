// Kernels for tests/test_emulator_schedules.py: the order in which the threads of a block run
// between barriers, and races that only that order decides.

// ranks[(block * phases + p) * blockDim.x + t]: the position at which thread t ran in phase p,
// the phases being separated by __syncthreads.
extern "C" __global__ void record_order(unsigned* ranks, int phases) {
    __shared__ unsigned counter[16];
    if (threadIdx.x < 16) counter[threadIdx.x] = 0;
    __syncthreads();
    for (int p = 0; p < phases; ++p) {
        ranks[(blockIdx.x * phases + p) * blockDim.x + threadIdx.x] = atomicAdd(&counter[p], 1u);
        __syncthreads();
    }
}

// Read after write across warps: thread t reads the slot thread t - 32 (a lower warp) wrote.
// Without the barrier it passes only while lower warps run first.
extern "C" __global__ void read_lower_warp(int* out, int with_barrier) {
    __shared__ int slot[1024];
    slot[threadIdx.x] = 1000 + threadIdx.x;
    if (with_barrier) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = threadIdx.x >= 32 ? slot[threadIdx.x - 32] : -2;
}

// Write after read across warps: thread t reads the slot of thread t + 32 (a higher warp), which
// that thread then overwrites. Without the barrier it passes only while lower warps run first.
extern "C" __global__ void read_higher_warp_before_it_writes(int* out, int with_barrier) {
    __shared__ int slot[1024];
    slot[threadIdx.x] = threadIdx.x;
    __syncthreads();
    const int seen = threadIdx.x + 32 < blockDim.x ? slot[threadIdx.x + 32] : -2;
    if (with_barrier) __syncthreads();
    slot[threadIdx.x] = -1;
    out[blockIdx.x * blockDim.x + threadIdx.x] = seen;
}

// Read after write within a warp: lane l reads what lane l - 1 wrote. Without the __syncwarp it
// passes only while lower lanes run first.
extern "C" __global__ void read_lower_lane(int* out, int with_syncwarp) {
    __shared__ int slot[1024];
    slot[threadIdx.x] = 1000 + threadIdx.x;
    if (with_syncwarp) __syncwarp();
    out[blockIdx.x * blockDim.x + threadIdx.x] = threadIdx.x % 32 ? slot[threadIdx.x - 1] : -2;
}
