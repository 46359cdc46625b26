// module_select.cuh — which entry points a module of a source is built with.
//
// NVRTC's compile time grows with every template instantiated, and a first call needs one math
// only: the launch layer (cudeconv/backends/kernel_modules.py) compiles each source once per math
// it is asked for, with -DCUDECONV_MATH=CUDECONV_MATH_<NAME>, so a float32 step compiles no FP16,
// BF16, FP64 or TF32 code. Without the option (nvcc, the emulator's one-module-per-source build,
// the SASS report) every entry point is compiled.
//
//   CUDECONV_WANTS(NAME)            1 when this module holds the entry points of math NAME
//   CUDECONV_WANTS_GEMM(P, BM, BN)  1 when it holds deconv_gemm.cu's GEMM of pass P (CUDECONV_PASS_*)
//                                   and tile BM × BN: -DCUDECONV_GEMM_PASS=<1|2|3> and
//                                   -DCUDECONV_GEMM_TILE=<BM·1000 + BN> make a module of one GEMM
//                                   kernel per math, so the menu of tiles costs a first call
//                                   nothing; 0 or absent: all
//   CUDECONV_WANTS_GEMM_SUPPORT     1 when it holds the kernels every GEMM of a math shares (the
//                                   operand packings, the split-K reduce): with
//                                   -DCUDECONV_GEMM_PASS=CUDECONV_PASS_SUPPORT they are a module of
//                                   their own, compiled once per math rather than once per GEMM
//                                   kernel (each copy cost a first step ~0.2 s of NVRTC)
//   CUDECONV_FOR_EACH_DTYPE(M)      M(suffix, storage type) for each storage type this module holds;
//                                   float32 storage also serves the float32 GEMM maths tf32/tf32x3
//                                   (their split-K reduce is the float32 one)
#pragma once

#define CUDECONV_MATH_F16 1
#define CUDECONV_MATH_BF16 2
#define CUDECONV_MATH_F32 3
#define CUDECONV_MATH_F64 4
#define CUDECONV_MATH_TF32 5
#define CUDECONV_MATH_TF32X3 6

#ifndef CUDECONV_MATH
#define CUDECONV_MATH 0  // every math
#endif

#define CUDECONV_WANTS(NAME) (CUDECONV_MATH == 0 || CUDECONV_MATH == CUDECONV_MATH_##NAME)

#define CUDECONV_PASS_FORWARD 1
#define CUDECONV_PASS_GRAD_INPUT 2
#define CUDECONV_PASS_GRAD_WEIGHT 3
#define CUDECONV_PASS_SUPPORT 4
#ifndef CUDECONV_GEMM_PASS
#define CUDECONV_GEMM_PASS 0  // every pass
#endif
#ifndef CUDECONV_GEMM_TILE
#define CUDECONV_GEMM_TILE 0  // every tile
#endif
#define CUDECONV_WANTS_GEMM(PASS, BM, BN)                                 \
    ((CUDECONV_GEMM_PASS == 0 || CUDECONV_GEMM_PASS == (PASS)) &&         \
     (CUDECONV_GEMM_TILE == 0 || CUDECONV_GEMM_TILE == (BM) * 1000 + (BN)))
#define CUDECONV_WANTS_GEMM_SUPPORT (CUDECONV_GEMM_PASS == 0 || CUDECONV_GEMM_PASS == CUDECONV_PASS_SUPPORT)

#if CUDECONV_WANTS(F16)
#define CUDECONV_DTYPE_F16(M) M(f16, __half)
#else
#define CUDECONV_DTYPE_F16(M)
#endif
#if CUDECONV_WANTS(BF16)
#define CUDECONV_DTYPE_BF16(M) M(bf16, __nv_bfloat16)
#else
#define CUDECONV_DTYPE_BF16(M)
#endif
#if CUDECONV_WANTS(F32) || CUDECONV_WANTS(TF32) || CUDECONV_WANTS(TF32X3)
#define CUDECONV_DTYPE_F32(M) M(f32, float)
#else
#define CUDECONV_DTYPE_F32(M)
#endif
#if CUDECONV_WANTS(F64)
#define CUDECONV_DTYPE_F64(M) M(f64, double)
#else
#define CUDECONV_DTYPE_F64(M)
#endif

#define CUDECONV_FOR_EACH_DTYPE(M) CUDECONV_DTYPE_F16(M) CUDECONV_DTYPE_BF16(M) CUDECONV_DTYPE_F32(M) CUDECONV_DTYPE_F64(M)
