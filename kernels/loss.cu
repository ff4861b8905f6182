// The joint network's losses (SPEC §9), f32 values with f64 sums: the CPU backend's loss.rs
// is the reference. Per-image sums land in f64 accumulators (zeroed first) that the host
// reads back with the loss value; gradients are written (MSE) or added (the others).

#include <cstdint>

#include "half.cuh"

namespace loss {
constexpr float REG_THRESHOLD = 0.95f;
constexpr float POISSON_EPS = 1e-8f;

// sum of v over the block (256 threads) into thread 0's return value
__device__ __forceinline__ double block_sum(double v) {
    __shared__ double part[32];
    for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = threadIdx.x < blockDim.x / 32 ? part[lane] : 0.0;
    if (warp == 0)
        for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
    __syncthreads();
    return v;
}
}  // namespace loss

#define IMAGE_STRIDE(i, per) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (per); i += (int64_t)blockDim.x * gridDim.x)

// per-image Σ (pred − target)² into sums[img]; d = scale · 2 (pred − target) / per.
// block 256, grid (chunks, images). pred and d f32, or f16 (`_h16`: pre-training on f16
// activations; the target image stays f32)
template <class T>
__device__ void mse(const T* pred, const float* target, int64_t per, double scale, T* d, double* sums) {
    const int64_t base = (int64_t)blockIdx.y * per;
    double acc = 0.0;
    IMAGE_STRIDE(i, per) {
        const double e = (double)(h16::ld(pred + base + i) - target[base + i]);
        acc += e * e;
        h16::st(d + base + i, (float)(scale * 2.0 * e / (double)per));
    }
    acc = loss::block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(&sums[blockIdx.y], acc);
}
extern "C" __global__ void mse_f32(const float* pred, const float* target, int64_t per, double scale, float* d,
                                   double* sums) {
    mse(pred, target, per, scale, d, sums);
}
extern "C" __global__ void mse_h16(const uint16_t* pred, const float* target, int64_t per, double scale, uint16_t* d,
                                   double* sums) {
    mse(pred, target, per, scale, d, sums);
}

// counts[img] += number of hr values above the regulariser's threshold
extern "C" __global__ void over_threshold_count(const float* hr, int64_t per, unsigned long long* counts) {
    const int64_t base = (int64_t)blockIdx.y * per;
    double acc = 0.0;
    IMAGE_STRIDE(i, per) { acc += hr[base + i] > loss::REG_THRESHOLD ? 1.0 : 0.0; }
    acc = loss::block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(&counts[blockIdx.y], (unsigned long long)acc);
}

// over the confident pixels: sums[img] += ((1−vd)²·(hr − vd))², d_hr += scale · its gradient / count
extern "C" __global__ void hr_regulariser_f32(const float* hr, const float* vd, int64_t per, double scale,
                                              const unsigned long long* counts, float* d_hr, double* sums) {
    const int64_t base = (int64_t)blockIdx.y * per;
    const double m = (double)counts[blockIdx.y];
    double acc = 0.0;
    IMAGE_STRIDE(i, per) {
        const float h = hr[base + i];
        if (h > loss::REG_THRESHOLD) {
            const float v = vd[base + i];
            const float wt = (1.0f - v) * (1.0f - v);
            const float e = wt * h - wt * v;
            acc += (double)e * (double)e;
            d_hr[base + i] += (float)(scale * 2.0 * (double)e * (double)wt / m);
        }
    }
    acc = loss::block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(&sums[blockIdx.y], acc);
}

// --- the expression loss: spots of a batch's tiles, concatenated -----------------------------
// spot s covers pix[off[s] .. off[s+1]) (flat y·W + x) of tile tile[s]; its tile has ns[s] spots;
// query[s] is its row of gamma or −1.

// scores[s][k] = mean over the spot's pixels of hr (f64 sum, rounded to f32). block 256, grid S,
// dynamic shared memory r doubles
extern "C" __global__ void spot_means_f32(const float* hr, int64_t px, int r, const unsigned* off,
                                          const unsigned* pix, const int* tile, float* scores) {
    extern __shared__ double acc[];
    const int s = blockIdx.x;
    for (int k = threadIdx.x; k < r; k += blockDim.x) acc[k] = 0.0;
    __syncthreads();
    const unsigned a = off[s], npix = off[s + 1] - a;
    const float* h = hr + (int64_t)tile[s] * px * r;
    for (int64_t i = threadIdx.x; i < (int64_t)npix * r; i += blockDim.x) {
        const int k = (int)(i % r);
        atomicAdd(&acc[k], (double)h[(int64_t)pix[a + i / r] * r + k]);
    }
    __syncthreads();
    const double inv = 1.0 / (double)max(npix, 1u);
    for (int k = threadIdx.x; k < r; k += blockDim.x) scores[(int64_t)s * r + k] = (float)(acc[k] * inv);
}

// per (spot, gene): the prediction pre = relu(D)·score (+ gamma, relu'd), the Poisson NLL term
// / numel into *loss_sum, dpre (0 where the gamma ReLU is closed) and d_gamma += dpre.
// block 256, grid ⌈S·g / 256⌉
extern "C" __global__ void poisson_nll_f32(const float* scores, const float* dec, const float* gamma,
                                           const float* expr, const int* ns, const int* query, int spots, int g,
                                           int r, double scale, double* dpre, float* d_gamma, double* loss_sum) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    double term = 0.0;
    if (i < (int64_t)spots * g) {
        const int s = (int)(i / g), j = (int)(i % g);
        float v = 0.0f;
        for (int k = 0; k < r; ++k) v += scores[(int64_t)s * r + k] * fmaxf(dec[(int64_t)j * r + k], 0.0f);
        float pre = v;
        bool gate = true;
        const int q = query[s];
        if (gamma && q >= 0) {
            const float z = v + gamma[(int64_t)q * g + j];
            pre = fmaxf(z, 0.0f);
            gate = z > 0.0f;
        }
        const float target = expr[i];
        const double numel = (double)ns[s] * g;
        term = (double)(pre - target * logf(pre + loss::POISSON_EPS)) / numel;
        const double d = gate ? (1.0 - (double)target / (double)(pre + loss::POISSON_EPS)) / numel * scale : 0.0;
        dpre[i] = d;
        if (gate && gamma && q >= 0 && d_gamma) atomicAdd(&d_gamma[(int64_t)q * g + j], (float)d);
    }
    term = loss::block_sum(term);
    if (threadIdx.x == 0) atomicAdd(loss_sum, term);
}

// d_dec[j][k] = Σ_s dpre[s][j] · scores[s][k] where dec[j][k] > 0, else 0 (overwrites)
extern "C" __global__ void decoder_grad_f32(const double* dpre, const float* scores, const float* dec, int spots,
                                            int g, int r, float* d_dec) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)g * r) return;
    const int j = (int)(i / r), k = (int)(i % r);
    double acc = 0.0;
    if (dec[i] > 0.0f)
        for (int s = 0; s < spots; ++s) acc += dpre[(int64_t)s * g + j] * scores[(int64_t)s * r + k];
    d_dec[i] = (float)acc;
}

// d_scores[s][k] = Σ_j dpre[s][j] · relu(dec[j][k]); one warp per (s, k)
extern "C" __global__ void score_grad_f64(const double* dpre, const float* dec, int spots, int g, int r,
                                          double* d_scores) {
    const int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (w >= (int64_t)spots * r) return;
    const int s = (int)(w / r), k = (int)(w % r);
    double acc = 0.0;
    for (int j = lane; j < g; j += 32) acc += dpre[(int64_t)s * g + j] * fmaxf(dec[(int64_t)j * r + k], 0.0f);
    for (int o = 16; o > 0; o /= 2) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (lane == 0) d_scores[w] = acc;
}

// d_hr[tile][pixel][k] += d_scores[s][k] / |spot| over each spot's pixels. block 256, grid S
extern "C" __global__ void spot_scatter_f32(const double* d_scores, int64_t px, int r, const unsigned* off,
                                            const unsigned* pix, const int* tile, float* d_hr) {
    const int s = blockIdx.x;
    const unsigned a = off[s], npix = off[s + 1] - a;
    const double inv = 1.0 / (double)max(npix, 1u);
    float* d = d_hr + (int64_t)tile[s] * px * r;
    for (int64_t i = threadIdx.x; i < (int64_t)npix * r; i += blockDim.x) {
        const int k = (int)(i % r);
        atomicAdd(&d[(int64_t)pix[a + i / r] * r + k], (float)(d_scores[(int64_t)s * r + k] * inv));
    }
}
