// Kernels for tests/test_emulator_gpu_rules.py: launches the GPU refuses or faults on.

// Writes its index into every float of the dynamic shared buffer, then each thread reads the
// buffer back to front into out, so every byte of the requested size is written and read.
extern "C" __global__ void reverse_through_shared(float* out, int count) {
    extern __shared__ float buffer[];
    for (int i = threadIdx.x; i < count; i += blockDim.x) buffer[i] = static_cast<float>(i);
    __syncthreads();
    for (int i = threadIdx.x; i < count; i += blockDim.x) out[i] = buffer[count - 1 - i];
}

// Vector loads from global memory at an element offset: aligned only when the offset is a
// multiple of the vector's width.
extern "C" __global__ void sum_float4(const float* x, float* out, int offset) {
    const float4 v = *reinterpret_cast<const float4*>(x + offset + 4 * threadIdx.x);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}
extern "C" __global__ void sum_float2(const float* x, float* out, int offset) {
    const float2 v = reinterpret_cast<const float2*>(x + offset)[threadIdx.x];
    out[threadIdx.x] = v.x + v.y;
}
extern "C" __global__ void sum_double2(const double* x, double* out, int offset) {
    const double2 v = __ldg(reinterpret_cast<const double2*>(x + offset) + threadIdx.x);
    out[threadIdx.x] = v.x + v.y;
}
// A vector store to global memory.
extern "C" __global__ void store_int4(int* out, int offset) {
    reinterpret_cast<int4*>(out + offset)[threadIdx.x] = make_int4(1, 2, 3, 4);
}
// A float read at a byte offset into a float array: misaligned unless the offset is a multiple of 4.
extern "C" __global__ void load_float_at_byte(const unsigned char* bytes, float* out, int byte_offset) {
    out[threadIdx.x] = *reinterpret_cast<const float*>(bytes + byte_offset + 4 * threadIdx.x);
}

// A double2 store into static shared memory at a float offset, then read back as floats.
extern "C" __global__ void shared_double2(float* out, int offset) {
    __shared__ __align__(16) float tile[64];
    reinterpret_cast<double2*>(tile + offset)[threadIdx.x] = make_double2(threadIdx.x, -1.0 * threadIdx.x);
    __syncthreads();
    const double2 v = reinterpret_cast<const double2*>(tile + offset)[threadIdx.x];
    out[threadIdx.x] = static_cast<float>(v.x - v.y);
}
