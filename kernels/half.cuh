// f16 storage: conversions to and from f32 (round to nearest even) and loads / stores of either
// storage kind as f32, for kernels written once for both (norm.cu; conv_h16.cu). On the host,
// tests/conv_kernels_emu.cpp defines h2f and f2h before including the kernels.
#pragma once
#include <cstdint>

namespace h16 {
#ifdef __CUDACC__
__device__ __forceinline__ float h2f(uint16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ uint16_t f2h(float f) {
    uint16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#define H16_FN __device__ __forceinline__
#else
#define H16_FN inline
#endif
H16_FN float ld(const float* p) { return *p; }
H16_FN float ld(const uint16_t* p) { return h2f(*p); }
H16_FN void st(float* p, float v) { *p = v; }
H16_FN void st(uint16_t* p, float v) { *p = f2h(v); }
}  // namespace h16
