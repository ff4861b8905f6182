// Element-wise kernels of the backend seam (src/backend/mod.rs), f32 storage: the CPU
// backend's act.rs and optim are their reference. One thread per element, grid-stride loops.

#include <cstdint>

#include "half.cuh"

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

constexpr float LEAKY_SLOPE = 0.2f;
constexpr float LOGIT_EPS = 1.388794e-11f;

// y += x
extern "C" __global__ void add_assign_f32(float* y, const float* x, int64_t n) {
    GRID_STRIDE(i, n) { y[i] += x[i]; }
}

// dy *= (y > 0 ? 1 : slope), from the activation's output
extern "C" __global__ void leaky_relu_backward_f32(const float* y, float* dy, int64_t n) {
    GRID_STRIDE(i, n) {
        if (y[i] <= 0.0f) dy[i] *= LEAKY_SLOPE;
    }
}

// y = sigmoid(x)
extern "C" __global__ void sigmoid_f32(const float* x, float* y, int64_t n) {
    GRID_STRIDE(i, n) { y[i] = 1.0f / (1.0f + expf(-x[i])); }
}

// dy *= y (1 - y)
extern "C" __global__ void sigmoid_backward_f32(const float* y, float* dy, int64_t n) {
    GRID_STRIDE(i, n) { dy[i] *= y[i] * (1.0f - y[i]); }
}

// hr = sigmoid(logit(clamp(vd, eps, 1 - eps)) + l): the VD prior of the joint network; l in
// f32, or f16 where inference keeps the network's activations so (`_h16`; vd and hr f32)
template <class L>
__device__ void prior_sigmoid(const L* l, const float* vd, float* hr, int64_t n) {
    GRID_STRIDE(i, n) {
        float q = fminf(fmaxf(vd[i], LOGIT_EPS), 1.0f - LOGIT_EPS);
        float z = logf(q / (1.0f - q)) + h16::ld(l + i);
        hr[i] = 1.0f / (1.0f + expf(-z));
    }
}
extern "C" __global__ void prior_sigmoid_f32(const float* l, const float* vd, float* hr, int64_t n) {
    prior_sigmoid(l, vd, hr, n);
}
extern "C" __global__ void prior_sigmoid_h16(const uint16_t* l, const float* vd, float* hr, int64_t n) {
    prior_sigmoid(l, vd, hr, n);
}

// out = [a | b] along channels, px pixels
extern "C" __global__ void concat_channels_f32(const float* a, int ca, const float* b, int cb, float* out, int64_t px) {
    int64_t c = ca + cb;
    GRID_STRIDE(i, px * c) {
        int64_t p = i / c, k = i % c;
        out[i] = k < ca ? a[p * ca + k] : b[p * cb + (k - ca)];
    }
}

// the inverse of concat_channels
extern "C" __global__ void split_channels_f32(const float* d, int ca, int cb, float* a, float* b, int64_t px) {
    int64_t c = ca + cb;
    GRID_STRIDE(i, px * c) {
        int64_t p = i / c, k = i % c;
        if (k < ca) a[p * ca + k] = d[i];
        else b[p * cb + (k - ca)] = d[i];
    }
}

// torch.optim.Adam's single-tensor update (L2 weight decay in the gradient, eps outside the
// square root), scalars precomputed on the host as optim::AdamScalars
__device__ __forceinline__ void adam_update(float* p, const float* g, float* m, float* v, int64_t n,
                                            float step_size, float bc2_sqrt, float beta1, float beta2, float eps,
                                            float weight_decay) {
    GRID_STRIDE(i, n) {
        float gi = g[i] + weight_decay * p[i];
        float mi = m[i] + (1.0f - beta1) * (gi - m[i]);
        float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
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

// g *= inv_scale; *found = 1 if any result is inf or NaN (loss scaling: src/optim/scaler.rs).
// Every thread that sees one writes the same value, so no atomic is needed.
extern "C" __global__ void unscale_check_f32(float* g, int64_t n, float inv_scale, unsigned int* found) {
    bool bad = false;
    GRID_STRIDE(i, n) {
        float v = g[i] * inv_scale;
        g[i] = v;
        bad |= !isfinite(v);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) *found = 1u;
}
