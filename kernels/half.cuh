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
// The conv emulator's hazard check on shared memory sees plain loads and stores through these
// and where a kernel names them (tests/conv_kernels_emu.cpp defines H16_EMU_ACCESS); nothing on
// the card.
#ifdef H16_EMU_ACCESS
#define H16_ACCESS(p, bytes, write) H16_EMU_ACCESS(p, bytes, write)
#else
#define H16_ACCESS(p, bytes, write)
#endif
H16_FN float ld(const float* p) { return *p; }
H16_FN float ld(const uint16_t* p) { return h2f(*p); }
H16_FN void st(float* p, float v) { *p = v; }
H16_FN void st(uint16_t* p, float v) { *p = f2h(v); }

// Eight consecutive values moved as one: a 16-byte load or store of f16, two of f32. The
// memory passes (elementwise.cu, norm.cu) and the convolutions' epilogues read and write f16
// this way where their operands are aligned for it: one 2-byte access a thread left the
// H200's memory passes at ~1.5 of its 4.8 TB/s.
template <class T>
struct alignas(16) Pack8 {
    T v[8];
};
template <class T>
H16_FN Pack8<T> load8(const T* p) {
    H16_ACCESS(p, sizeof(Pack8<T>), false);
    return *reinterpret_cast<const Pack8<T>*>(p);
}
template <class T>
H16_FN void store8(T* p, const Pack8<T>& v) {
    H16_ACCESS(p, sizeof(Pack8<T>), true);
    *reinterpret_cast<Pack8<T>*>(p) = v;
}
// p[0 .. 7] as f32, and back (rounded to f16 where T is)
template <class T>
H16_FN void ld8(const T* p, float* out) {
    const Pack8<T> v = load8(p);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = ld(&v.v[j]);
}
template <class T>
H16_FN void st8(T* p, const float* in) {
    Pack8<T> v;
#pragma unroll
    for (int j = 0; j < 8; ++j) st(&v.v[j], in[j]);
    store8(p, v);
}
// Two f32 values to an 8-byte aligned p in one store: the MMA fragments' column pairs staged
// into shared memory (a half-warp's 16 stores then reach 32 different banks where the rows are
// a multiple of 8 floats apart, and the f32 pairs stored one at a time were two-way conflicts)
H16_FN void st2(float* p, float a, float b) {
    struct alignas(8) F2 {
        float x, y;
    };
    H16_ACCESS(p, 8, true);
    *reinterpret_cast<F2*>(p) = F2{a, b};
}
// whether every pointer may be read or written eight values at a time
H16_FN bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
template <class... P>
H16_FN bool aligned16(const void* p, P... rest) {
    return aligned16(p) && aligned16(rest...);
}
}  // namespace h16
