// Kernels for tests/test_emulator_racecheck.py: one shared-memory race of each kind, each with a
// switch (`synchronized`) that puts the barrier, __syncwarp or atomic in that makes it correct.
#include "../../kernels/deconv_common.cuh"
#include "../../kernels/mma.cuh"

// RAW across warps: thread t reads the slot thread t - 32 (a lower warp) wrote.
extern "C" __global__ void read_lower_warp(int* out, int synchronized) {
    __shared__ int slot[256];
    slot[threadIdx.x] = 1000 + threadIdx.x;
    if (synchronized) __syncthreads();
    out[threadIdx.x] = threadIdx.x >= 32 ? slot[threadIdx.x - 32] : -2;
}

// WAR across warps: thread t reads the slot of thread t + 32, which that thread then overwrites.
extern "C" __global__ void overwrite_after_higher_warp_reads(int* out, int synchronized) {
    __shared__ int slot[256];
    slot[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = threadIdx.x + 32 < blockDim.x ? slot[threadIdx.x + 32] : -2;
    if (synchronized) __syncthreads();
    slot[threadIdx.x] = -1;
}

// WAW: thread t writes its slot, then the slot of thread t ^ 32 (another warp).
extern "C" __global__ void write_other_warps_slot(int* out, int synchronized) {
    __shared__ int slot[256];
    slot[threadIdx.x] = threadIdx.x;
    if (synchronized) __syncthreads();
    slot[threadIdx.x ^ 32] = -static_cast<int>(threadIdx.x);
    __syncthreads();
    out[threadIdx.x] = slot[threadIdx.x];
}

// Every thread adds one to a single shared word: a lost-update race under a plain +=, whatever
// the order the threads run in, and correct with atomicAdd.
extern "C" __global__ void count_threads(int* out, int synchronized) {
    __shared__ int counter;
    if (threadIdx.x == 0) counter = 0;
    __syncthreads();
    if (synchronized) atomicAdd(&counter, 1);
    else counter += 1;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = counter;
}

// Lanes of one warp exchange through shared memory: lane l reads what lane l ^ 1 wrote. A shuffle
// between the write and the read is not a memory fence (synchronized = 0 and 1); __syncwarp is (2).
extern "C" __global__ void exchange_within_warp(int* out, int synchronized) {
    __shared__ int slot[256];
    slot[threadIdx.x] = 1000 + threadIdx.x;
    if (synchronized == 1) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, threadIdx.x, 1);
    if (synchronized == 2) __syncwarp();
    out[threadIdx.x] = slot[threadIdx.x ^ 1];
}

// cp.async RAW: thread t copies 16 bytes into its row and waits for its own copy, then reads the
// row of thread t ^ 32, which only a barrier after that thread's wait makes safe.
extern "C" __global__ void read_other_threads_copy(const float* source, float* out, int synchronized) {
    __shared__ __align__(16) float rows[64][4];
    cp_async_16(rows[threadIdx.x], source + 4 * threadIdx.x, 16);
    cp_async_wait_all();
    if (synchronized) __syncthreads();
    out[threadIdx.x] = rows[threadIdx.x ^ 32][0];
}

// cp.async WAR: thread t reads the row of thread t ^ 32, then copies into its own row, which that
// thread may still be reading.
extern "C" __global__ void copy_over_a_row_being_read(const float* source, float* out, int synchronized) {
    __shared__ __align__(16) float rows[64][4];
    for (int i = 0; i < 4; ++i) rows[threadIdx.x][i] = 0.0f;
    __syncthreads();
    out[threadIdx.x] = rows[threadIdx.x ^ 32][0];
    if (synchronized) __syncthreads();
    cp_async_16(rows[threadIdx.x], source + 4 * threadIdx.x, 16);
    cp_async_wait_all();
}

// ldmatrix of rows other lanes copied: lane l copies row l (16 bytes) and waits for it, then the
// warp loads four 8x8 matrices whose row addresses are given by lane l for row (l + 8) % 32, so
// that every row is another lane's copy. synchronized = 1 puts a __syncthreads after the wait,
// 2 a __syncwarp.
extern "C" __global__ void __launch_bounds__(32) ldmatrix_other_lanes_copies(const unsigned short* source, unsigned* out,
                                                                              int synchronized) {
    __shared__ __align__(16) unsigned short rows[32][8];
    const unsigned lane = threadIdx.x;
    cp_async_16(rows[lane], source + 8 * lane, 16);
    cp_async_wait_all();
    if (synchronized == 1) __syncthreads();
    if (synchronized == 2) __syncwarp();
    unsigned r[4];
    ldmatrix_x4(r, rows[(lane + 8) % 32]);
    for (int i = 0; i < 4; ++i) out[4 * lane + i] = r[i];
}

// The sum and the sum of squares of the block's values, by two block_sum calls in a row (the
// second reuses the first's warp_sums).
extern "C" __global__ void sum_and_sum_of_squares(const float* values, float* out) {
    const float v = values[blockIdx.x * blockDim.x + threadIdx.x];
    const float sum = block_sum(v);
    const float squares = block_sum(v * v);
    if (threadIdx.x == 0) {
        out[2 * blockIdx.x] = sum;
        out[2 * blockIdx.x + 1] = squares;
    }
}
