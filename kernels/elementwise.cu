// Element-wise kernels of the backend seam (src/backend/mod.rs), f32 storage: the CPU
// backend's act.rs and optim are their reference. Grid-stride loops; where every operand is
// aligned for it a thread moves eight values at a time (h16::ld8), each computed as the
// one-at-a-time loop computes it (tests/memory_kernels_emu.cpp holds the two to the same bits).

#include <cstdint>

#include "half.cuh"
#include "multi_tensor.cuh"

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

constexpr float LEAKY_SLOPE = 0.2f;
constexpr float LOGIT_EPS = 1.388794e-11f;

// out[i] = f(a[i], b[i]) (or f(a[i]) where b is not read: `Reads`), eight values a thread
// where all are aligned, then one at a time for the rest: one formula for both paths. out may
// be b (in place).
template <bool Reads, class T, class F>
__device__ void each(const T* a, const T* b, T* out, int64_t n, F f) {
    auto one = [&](float u, float v) {
        if constexpr (Reads) return f(u, v);
        else return f(u);
    };
    const int64_t n8 = h16::aligned16(a, out) && h16::aligned16(b, out) ? n / 8 : 0;
    GRID_STRIDE(r, n8) {
        float u[8], v[8] = {};
        h16::ld8(a + 8 * r, u);
        if (Reads) h16::ld8(b + 8 * r, v);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = one(u[k], v[k]);
        h16::st8(out + 8 * r, v);
    }
    GRID_STRIDE(t, n - 8 * n8) {
        const int64_t i = 8 * n8 + t;
        h16::st(out + i, one(h16::ld(a + i), Reads ? h16::ld(b + i) : 0.0f));
    }
}
// b[i] = f(a[i], b[i]) in place (or f(a[i]))
template <bool Reads, class T, class F>
__device__ void each(const T* a, T* b, int64_t n, F f) {
    each<Reads>(a, b, b, n, f);
}

// Each kernel of this group once for f32 storage and once (`_h16`) for f16: the same f32
// arithmetic, f16 values widened on load and rounded on store (h16::ld, h16::st).
#define F32_AND_H16(NAME, PARAMS, ARGS)                                                  \
    extern "C" __global__ void NAME##_f32(PARAMS(float)) { NAME<float> ARGS; }           \
    extern "C" __global__ void NAME##_h16(PARAMS(uint16_t)) { NAME<uint16_t> ARGS; }

// y += x
template <class T>
__device__ void add_assign(const T* x, T* y, int64_t n) {
    each<true>(x, y, n, [](float a, float b) { return b + a; });
}
#define X_Y_PARAMS(T) const T *x, T *y, int64_t n
F32_AND_H16(add_assign, X_Y_PARAMS, (x, y, n))

// dy *= (y > 0 ? 1 : slope), from the activation's output
template <class T>
__device__ void leaky_relu_backward(const T* y, T* dy, int64_t n) {
    each<true>(y, dy, n, [](float a, float d) { return a <= 0.0f ? d * LEAKY_SLOPE : d; });
}
#define Y_DY_PARAMS(T) const T *y, T *dy, int64_t n
F32_AND_H16(leaky_relu_backward, Y_DY_PARAMS, (y, dy, n))
// g = dy · (y > 0 ? 1 : slope), dy kept: a residual block's conv_2 reads g while its identity
// still reads dy
template <class T>
__device__ void leaky_relu_grad(const T* y, const T* dy, T* g, int64_t n) {
    each<true>(y, dy, g, n, [](float a, float d) { return a <= 0.0f ? d * LEAKY_SLOPE : d; });
}
#define Y_DY_G_PARAMS(T) const T *y, const T *dy, T *g, int64_t n
F32_AND_H16(leaky_relu_grad, Y_DY_G_PARAMS, (y, dy, g, n))

// y = sigmoid(x)
template <class T>
__device__ void sigmoid(const T* x, T* y, int64_t n) {
    each<false>(x, y, n, [](float v) { return 1.0f / (1.0f + expf(-v)); });
}
F32_AND_H16(sigmoid, X_Y_PARAMS, (x, y, n))

// dy *= y (1 - y)
template <class T>
__device__ void sigmoid_backward(const T* y, T* dy, int64_t n) {
    each<true>(y, dy, n, [](float v, float d) { return d * (v * (1.0f - v)); });
}
F32_AND_H16(sigmoid_backward, Y_DY_PARAMS, (y, dy, n))

// hr = sigmoid(logit(clamp(vd, eps, 1 - eps)) + l): the VD prior of the joint network; l in
// f32, or f16 where inference keeps the network's activations so; vd in f32, or f16 as the
// score stage uploads it (its file's precision: `_vh16`); hr in f32. Eight values a thread
// where all three are aligned (as `each`), the same formula one at a time for the rest.
template <class L, class V>
__device__ void prior_sigmoid(const L* l, const V* vd, float* hr, int64_t n) {
    auto one = [](float v, float lv) {
        const float q = fminf(fmaxf(v, LOGIT_EPS), 1.0f - LOGIT_EPS);
        const float z = logf(q / (1.0f - q)) + lv;
        return 1.0f / (1.0f + expf(-z));
    };
    const int64_t n8 = h16::aligned16(l, vd, hr) ? n / 8 : 0;
    GRID_STRIDE(r, n8) {
        float v[8], lv[8], o[8];
        h16::ld8(vd + 8 * r, v);
        h16::ld8(l + 8 * r, lv);
#pragma unroll
        for (int k = 0; k < 8; ++k) o[k] = one(v[k], lv[k]);
        h16::st8(hr + 8 * r, o);
    }
    GRID_STRIDE(t, n - 8 * n8) {
        const int64_t i = 8 * n8 + t;
        hr[i] = one(h16::ld(vd + i), h16::ld(l + i));
    }
}
#define PRIOR_SIGMOID(name, L, V) \
    extern "C" __global__ void name(const L* l, const V* vd, float* hr, int64_t n) { prior_sigmoid(l, vd, hr, n); }
PRIOR_SIGMOID(prior_sigmoid_f32, float, float)
PRIOR_SIGMOID(prior_sigmoid_h16, uint16_t, float)
PRIOR_SIGMOID(prior_sigmoid_f32_vh16, float, uint16_t)
PRIOR_SIGMOID(prior_sigmoid_h16_vh16, uint16_t, uint16_t)

// Whether concat_channels and split_channels move runs of eight channels: both parts multiples
// of eight, every operand aligned, and the runs indexed in 32 bits (the one-at-a-time loops
// divide 64-bit indices, ~20 times the cost).
__device__ __forceinline__ bool channel_runs(int ca, int cb, int64_t px, const void* d, const void* a,
                                             const void* b) {
    return ca % 8 == 0 && cb % 8 == 0 && px * (ca + cb) / 8 < (int64_t)1 << 31 && h16::aligned16(d, a, b);
}

// out = [a | b] along channels, px pixels
template <class T>
__device__ void concat_channels(const T* a, int ca, const T* b, int cb, T* out, int64_t px) {
    int64_t c = ca + cb;
    if (channel_runs(ca, cb, px, out, a, b)) {
        const unsigned rc = (unsigned)c / 8, ra = (unsigned)ca / 8, rb = (unsigned)cb / 8;
        GRID_STRIDE(r, px * rc) {
            const unsigned p = (unsigned)r / rc, k = (unsigned)r - p * rc;
            h16::store8(out + 8 * r, h16::load8(k < ra ? a + 8 * ((int64_t)p * ra + k) : b + 8 * ((int64_t)p * rb + k - ra)));
        }
        return;
    }
    GRID_STRIDE(i, px * c) {
        int64_t p = i / c, k = i % c;
        out[i] = k < ca ? a[p * ca + k] : b[p * cb + (k - ca)];
    }
}
#define CONCAT_PARAMS(T) const T *a, int ca, const T *b, int cb, T *out, int64_t px
F32_AND_H16(concat_channels, CONCAT_PARAMS, (a, ca, b, cb, out, px))

// the inverse of concat_channels
template <class T>
__device__ void split_channels(const T* d, int ca, int cb, T* a, T* b, int64_t px) {
    int64_t c = ca + cb;
    if (channel_runs(ca, cb, px, d, a, b)) {
        const unsigned rc = (unsigned)c / 8, ra = (unsigned)ca / 8, rb = (unsigned)cb / 8;
        GRID_STRIDE(r, px * rc) {
            const unsigned p = (unsigned)r / rc, k = (unsigned)r - p * rc;
            h16::store8(k < ra ? a + 8 * ((int64_t)p * ra + k) : b + 8 * ((int64_t)p * rb + k - ra),
                        h16::load8(d + 8 * r));
        }
        return;
    }
    GRID_STRIDE(i, px * c) {
        int64_t p = i / c, k = i % c;
        if (k < ca) a[p * ca + k] = d[i];
        else b[p * cb + (k - ca)] = d[i];
    }
}
#define SPLIT_PARAMS(T) const T *d, int ca, int cb, T *a, T *b, int64_t px
F32_AND_H16(split_channels, SPLIT_PARAMS, (d, ca, cb, a, b, px))

// torch.optim.Adam's single-tensor update, scalars precomputed on the host as
// optim::AdamScalars
__device__ __forceinline__ void adam_update(float* p, const float* g, float* m, float* v, int64_t n,
                                            float step_size, float bc2_sqrt, float beta1, float beta2, float eps,
                                            float weight_decay) {
    GRID_STRIDE(i, n) { adam_element(p, g, m, v, i, step_size, bc2_sqrt, beta1, beta2, eps, weight_decay); }
}

extern "C" __global__ void adam_f32(float* p, const float* g, float* m, float* v, int64_t n, float step_size,
                                    float bc2_sqrt, float beta1, float beta2, float eps, float weight_decay) {
    adam_update(p, g, m, v, n, step_size, bc2_sqrt, beta1, beta2, eps, weight_decay);
}

// adam_f32 with its scalars read from the device (s: step_size, bc2_sqrt, beta1, beta2, eps,
// weight_decay) and nothing done when *skip is set: the optimiser inside a recorded step
// (CUDA graph), whose scalars change every step and whose found-inf flag is set on the device.
extern "C" __global__ void adam_dev_f32(float* p, const float* g, float* m, float* v, int64_t n, const float* s,
                                        const unsigned int* skip) {
    if (skip && *skip) return;
    adam_update(p, g, m, v, n, s[0], s[1], s[2], s[3], s[4], s[5]);
}

// Adam over a list of tensors in one launch (kernels/multi_tensor.cuh): scalars from the list,
// or from `dev` (6 per tensor) with the step skipped when *skip is set, as adam_dev_f32.
// Grid: the list's first[count] blocks of 256.
extern "C" __global__ void adam_multi_f32(const AdamList list, const float* dev, const unsigned int* skip) {
    adam_multi_block(list, dev, skip, blockIdx.x, threadIdx.x, blockDim.x);
}

// g *= inv_scale over a list of gradients in one launch; *found = 1 where a result is inf or
// NaN (loss scaling: src/optim/scaler.rs).
extern "C" __global__ void unscale_multi_f32(const GradList list, float inv_scale, unsigned int* found) {
    unscale_multi_block(list, inv_scale, found, blockIdx.x, threadIdx.x, blockDim.x);
}

// Every gradient of a list zeroed in one launch (`Backend::zero_grads`).
extern "C" __global__ void zero_multi_f32(const GradList list) {
    zero_multi_block(list, blockIdx.x, threadIdx.x, blockDim.x);
}
