// Half instance norm (HINet) and per-image channel means, NHWC f32: the CPU backend's
// norm.rs is the reference. Statistics are sums over each image's pixels in f64 (as there),
// computed by one reduction kernel in four modes, then finished by small element-wise kernels.
// The forward pass's kernels also read and write f16 storage (`*_h16`: inference's activations;
// statistics in f32 either way).

#include <cstdint>

#include "half.cuh"

namespace hin {
constexpr float SLOPE = 0.2f;
constexpr double EPS = 1e-5;
}  // namespace hin

// Per (image, channel < cn) sums over the image's hw pixels of an NHWC tensor with c channels:
//   mode 0: s0 += x
//   mode 1: s0 += (x − mean)²
//   mode 2: s0 += dy, s1 += dy · x̂ with x̂ = (x − mean) · rstd computed in f32
//   mode 3: s0 += x − p, s1 += (x − p)² with p the image's first pixel of the channel: the mean
//           and variance in one pass over x (finish_moments_f32), shifted by a value of the
//           same channel so the f64 difference s1/hw − (s0/hw)² does not cancel
// block (32, 8), grid (⌈hw / chunk⌉, ⌈cn / 32⌉, images); s0, s1 (images × cn) zeroed first.
template <class T>
__device__ void pixel_sums(const T* x, const T* dy, const float* mean, const float* rstd, int mode, int64_t hw,
                           int c, int cn, int64_t chunk, double* s0, double* s1) {
    __shared__ double part0[8][33], part1[8][33];
    const int ch = blockIdx.y * 32 + threadIdx.x, img = blockIdx.z;
    const int64_t p0 = (int64_t)blockIdx.x * chunk, p1 = min(hw, p0 + chunk);
    double a0 = 0.0, a1 = 0.0;
    if (ch < cn) {
        const int64_t at = (int64_t)img * cn + ch;
        const float m = mode == 3 ? h16::ld(x + (int64_t)img * hw * c + ch) : mode ? mean[at] : 0.0f;
        const float r = mode == 2 ? rstd[at] : 0.0f;
        for (int64_t p = p0 + threadIdx.y; p < p1; p += 8) {
            const int64_t i = ((int64_t)img * hw + p) * c + ch;
            const float v = h16::ld(x + i);
            if (mode == 0) {
                a0 += v;
            } else if (mode == 1) {
                const double d = (double)v - m;
                a0 += d * d;
            } else if (mode == 3) {
                const double d = (double)v - m;
                a0 += d;
                a1 += d * d;
            } else {
                const double g = h16::ld(dy + i);
                a0 += g;
                a1 += g * (double)((v - m) * r);
            }
        }
    }
    part0[threadIdx.y][threadIdx.x] = a0;
    part1[threadIdx.y][threadIdx.x] = a1;
    __syncthreads();
    if (threadIdx.y == 0 && ch < cn) {
        for (int i = 1; i < 8; ++i) {
            a0 += part0[i][threadIdx.x];
            a1 += part1[i][threadIdx.x];
        }
        const int64_t at = (int64_t)img * cn + ch;
        atomicAdd(&s0[at], a0);
        if (mode >= 2) atomicAdd(&s1[at], a1);
    }
}
extern "C" __global__ void pixel_sums_f64(const float* x, const float* dy, const float* mean, const float* rstd,
                                          int mode, int64_t hw, int c, int cn, int64_t chunk, double* s0,
                                          double* s1) {
    pixel_sums(x, dy, mean, rstd, mode, hw, c, cn, chunk, s0, s1);
}
extern "C" __global__ void pixel_sums_f64_h16(const uint16_t* x, const uint16_t* dy, const float* mean,
                                              const float* rstd, int mode, int64_t hw, int c, int cn, int64_t chunk,
                                              double* s0, double* s1) {
    pixel_sums(x, dy, mean, rstd, mode, hw, c, cn, chunk, s0, s1);
}

// out[i] = s[i] / hw (means)
extern "C" __global__ void finish_means_f32(const double* s, int64_t n, int64_t hw, float* out) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x)
        out[i] = (float)(s[i] / (double)hw);
}

// Means and 1/σ (biased variance + eps) of each (image, channel < cn) from mode 3's shifted
// sums; n = images × cn entries.
template <class T>
__device__ void finish_moments(const double* s0, const double* s1, const T* x, int64_t n, int cn, int64_t hw, int c,
                               float* mean, float* rstd) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x) {
        const int64_t img = i / cn, ch = i % cn;
        const double d = s0[i] / (double)hw;
        const double var = fmax(s1[i] / (double)hw - d * d, 0.0);
        mean[i] = (float)((double)h16::ld(x + img * hw * c + ch) + d);
        rstd[i] = (float)(1.0 / sqrt(var + hin::EPS));
    }
}
extern "C" __global__ void finish_moments_f32(const double* s0, const double* s1, const float* x, int64_t n,
                                              int cn, int64_t hw, int c, float* mean, float* rstd) {
    finish_moments(s0, s1, x, n, cn, hw, c, mean, rstd);
}
extern "C" __global__ void finish_moments_h16(const double* s0, const double* s1, const uint16_t* x, int64_t n,
                                              int cn, int64_t hw, int c, float* mean, float* rstd) {
    finish_moments(s0, s1, x, n, cn, hw, c, mean, rstd);
}

// y = leaky?(HIN(x)) from the statistics (means, then rstds, images × half each)
template <class T>
__device__ void hin_apply(const T* x, const float* stats, const float* gamma, const float* beta, int leaky,
                          int64_t images, int64_t hw, int c, T* y) {
    const int half = c / 2;
    const int64_t total = images * hw * c;
    const float* mean = stats;
    const float* rstd = stats + images * half;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)blockDim.x * gridDim.x) {
        const int ch = (int)(i % c);
        float v = h16::ld(x + i);
        if (ch < half) {
            const int64_t at = i / (hw * c) * half + ch;
            v = (v - mean[at]) * rstd[at] * gamma[ch] + beta[ch];
        }
        if (leaky) v = v > 0.0f ? v : hin::SLOPE * v;
        h16::st(y + i, v);
    }
}
extern "C" __global__ void hin_apply_f32(const float* x, const float* stats, const float* gamma, const float* beta,
                                         int leaky, int64_t images, int64_t hw, int c, float* y) {
    hin_apply(x, stats, gamma, beta, leaky, images, hw, c, y);
}
extern "C" __global__ void hin_apply_h16(const uint16_t* x, const float* stats, const float* gamma,
                                         const float* beta, int leaky, int64_t images, int64_t hw, int c, uint16_t* y) {
    hin_apply(x, stats, gamma, beta, leaky, images, hw, c, y);
}

// dx of HIN from Σ dy (s0) and Σ dy·x̂ (s1) per (image, channel); the other half passes dy
// (x, dy and dx f32, or f16 in `_h16`; statistics f32)
template <class T>
__device__ void hin_backward(const T* x, const float* stats, const float* gamma, const T* dy, const double* s0,
                             const double* s1, int64_t images, int64_t hw, int c, T* dx) {
    const int half = c / 2;
    const int64_t total = images * hw * c;
    const float* mean = stats;
    const float* rstd = stats + images * half;
    const double n = (double)hw;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)blockDim.x * gridDim.x) {
        const int ch = (int)(i % c);
        if (ch < half) {
            const int64_t at = i / (hw * c) * half + ch;
            const double xh = (double)((h16::ld(x + i) - mean[at]) * rstd[at]);
            h16::st(dx + i,
                    (float)((double)rstd[at] * gamma[ch] * ((double)h16::ld(dy + i) - s0[at] / n - xh * s1[at] / n)));
        } else {
            h16::st(dx + i, h16::ld(dy + i));
        }
    }
}
extern "C" __global__ void hin_backward_f32(const float* x, const float* stats, const float* gamma, const float* dy,
                                            const double* s0, const double* s1, int64_t images, int64_t hw, int c,
                                            float* dx) {
    hin_backward(x, stats, gamma, dy, s0, s1, images, hw, c, dx);
}
extern "C" __global__ void hin_backward_h16(const uint16_t* x, const float* stats, const float* gamma,
                                            const uint16_t* dy, const double* s0, const double* s1, int64_t images,
                                            int64_t hw, int c, uint16_t* dx) {
    hin_backward(x, stats, gamma, dy, s0, s1, images, hw, c, dx);
}

// dgamma[c] = Σ_images s1, dbeta[c] = Σ_images s0 (each image's sum rounded to f32 first, as
// the CPU backend adds them)
extern "C" __global__ void hin_param_grads_f32(const double* s0, const double* s1, int images, int half,
                                               float* dgamma, float* dbeta) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= half) return;
    float g = 0.0f, b = 0.0f;
    for (int i = 0; i < images; ++i) {
        b += (float)s0[(int64_t)i * half + ch];
        g += (float)s1[(int64_t)i * half + ch];
    }
    dgamma[ch] = g;
    dbeta[ch] = b;
}
