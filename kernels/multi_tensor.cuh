// Element-wise updates of many tensors in one launch. The optimiser's step and the gradient
// unscale touch every tensor of the network: some seventy launches each, most shorter than
// their own launch overhead. The host lists the tensors in a kernel parameter (laid out as
// src/backend/cuda/multi.rs builds it; tests/multi_tensor_emu.cpp checks both agree), and
// each block takes MT_CHUNK elements of one tensor, found from the list's running block counts.
#pragma once
#include <cstdint>

#define MT_CHUNK 8192
#define MT_ADAM 40
#define MT_GRADS 96

// Up to MT_ADAM tensors for Adam: parameters, gradients, moments, lengths, and the scalars —
// from the list (`s`) or, inside a recorded step, from a device array at `6 · at[k]`.
struct AdamList {
    float* p[MT_ADAM];
    const float* g[MT_ADAM];
    float* m[MT_ADAM];
    float* v[MT_ADAM];
    int64_t n[MT_ADAM];
    float s[MT_ADAM][6];
    int at[MT_ADAM];
    int first[MT_ADAM + 1];  // first block of each tensor; first[count] is the grid
    int count;
};

// Up to MT_GRADS gradients to unscale.
struct GradList {
    float* g[MT_GRADS];
    int64_t n[MT_GRADS];
    int first[MT_GRADS + 1];
    int count;
};

// The tensor whose blocks include `block` (first[] ascending; empty tensors are passed over).
__device__ __forceinline__ int mt_tensor(const int* first, int count, int block) {
    int k = 0;
    while (k + 1 < count && first[k + 1] <= block) ++k;
    return k;
}

// torch.optim.Adam's single-tensor update of element i (L2 weight decay in the gradient, eps
// outside the square root), scalars as optim::AdamScalars: step size, √(bias correction 2),
// β1, β2, eps, weight decay.
__device__ __forceinline__ void adam_element(float* p, const float* g, float* m, float* v, int64_t i,
                                             float step_size, float bc2_sqrt, float beta1, float beta2, float eps,
                                             float weight_decay) {
    float gi = g[i] + weight_decay * p[i];
    float mi = m[i] + (1.0f - beta1) * (gi - m[i]);
    float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
}

// One block of the multi-tensor Adam; nothing when *skip is set (a recorded step whose
// gradients overflowed).
__device__ __forceinline__ void adam_multi_block(const AdamList& L, const float* dev, const unsigned* skip, int block,
                                                 int thread, int threads) {
    if (skip && *skip) return;
    const int k = mt_tensor(L.first, L.count, block);
    const float* s = dev ? dev + 6 * (int64_t)L.at[k] : L.s[k];
    const int64_t lo = (int64_t)(block - L.first[k]) * MT_CHUNK;
    const int64_t hi = lo + MT_CHUNK < L.n[k] ? lo + MT_CHUNK : L.n[k];
    for (int64_t i = lo + thread; i < hi; i += threads)
        adam_element(L.p[k], L.g[k], L.m[k], L.v[k], i, s[0], s[1], s[2], s[3], s[4], s[5]);
}

// One block of the multi-tensor unscale: g *= inv; *found = 1 where a result is inf or NaN
// (every writer writes the same value, so no atomic is needed).
__device__ __forceinline__ void unscale_multi_block(const GradList& L, float inv, unsigned* found, int block,
                                                    int thread, int threads) {
    const int k = mt_tensor(L.first, L.count, block);
    const int64_t lo = (int64_t)(block - L.first[k]) * MT_CHUNK;
    const int64_t hi = lo + MT_CHUNK < L.n[k] ? lo + MT_CHUNK : L.n[k];
    bool bad = false;
    for (int64_t i = lo + thread; i < hi; i += threads) {
        const float v = L.g[k][i] * inv;
        L.g[k][i] = v;
        bad |= !isfinite(v);
    }
    if (bad) *found = 1u;
}

// One block of the multi-tensor zeroing: the gradients a backward pass is about to sum into, at
// once (each weight gradient's kernels add into zeroed f32 by atomics: one memset each before).
__device__ __forceinline__ void zero_multi_block(const GradList& L, int block, int thread, int threads) {
    const int k = mt_tensor(L.first, L.count, block);
    const int64_t lo = (int64_t)(block - L.first[k]) * MT_CHUNK;
    const int64_t hi = lo + MT_CHUNK < L.n[k] ? lo + MT_CHUNK : L.n[k];
    for (int64_t i = lo + thread; i < hi; i += threads) L.g[k][i] = 0.0f;
}
