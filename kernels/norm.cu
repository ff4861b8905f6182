// Half instance norm (HINet) and per-image channel means, NHWC f32: the CPU backend's
// norm.rs is the reference. Statistics are sums over each image's pixels in f64 (as there),
// computed by one reduction kernel in four modes, then finished by small element-wise kernels.
// The forward pass's kernels also read and write f16 storage (`*_h16`: inference's activations;
// statistics in f32 either way). The column sums of the bias gradients close the file.

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

// pixel_sums eight channels a thread, for cn and c multiples of eight with R = cn / 8 runs a
// pixel dividing 256 (at most 32) and x, dy aligned: block 256, grid (⌈hw / chunk⌉, 1, images).
// Thread t sums run t mod R of pixels p0 + t / R, + 256 / R, ..; the block adds its lanes in
// shared memory. (pixel_sums gives each channel a lane: 2-byte loads, and at the first down
// block's 16 normalised channels half of every warp idle.)
template <class T>
__device__ void pixel_runs(const T* x, const T* dy, const float* mean, const float* rstd, int mode, int64_t hw,
                           int c, int cn, int64_t chunk, double* s0, double* s1) {
    __shared__ double part0[256][8], part1[256][8];
    const int runs = cn / 8, lanes = 256 / runs, t = threadIdx.x, k = t % runs, img = blockIdx.z;
    const int64_t p0 = (int64_t)blockIdx.x * chunk, p1 = min(hw, p0 + chunk), at = (int64_t)img * cn + 8 * k;
    float m[8] = {}, r[8] = {};
    if (mode == 3 && hw > 0) h16::ld8(x + (int64_t)img * hw * c + 8 * k, m);
    else if (mode) h16::ld8(mean + at, m);
    if (mode == 2) h16::ld8(rstd + at, r);
    double a0[8] = {}, a1[8] = {};
    for (int64_t p = p0 + t / runs; p < p1; p += lanes) {
        const int64_t i = ((int64_t)img * hw + p) * c + 8 * k;
        float v[8], g[8];
        h16::ld8(x + i, v);
        if (mode == 2) h16::ld8(dy + i, g);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (mode == 0) {
                a0[j] += v[j];
            } else if (mode == 1) {
                const double d = (double)v[j] - m[j];
                a0[j] += d * d;
            } else if (mode == 3) {
                const double d = (double)v[j] - m[j];
                a0[j] += d;
                a1[j] += d * d;
            } else {
                a0[j] += g[j];
                a1[j] += g[j] * (double)((v[j] - m[j]) * r[j]);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) part0[t][j] = a0[j], part1[t][j] = a1[j];
    __syncthreads();
    if (t < cn) {
        // thread 8k' + j adds channel j of run k' over the lanes
        const int kk = t / 8, j = t % 8;
        double b0 = 0.0, b1 = 0.0;
        for (int l = 0; l < lanes; ++l) b0 += part0[l * runs + kk][j], b1 += part1[l * runs + kk][j];
        const int64_t o = (int64_t)img * cn + t;
        atomicAdd(&s0[o], b0);
        if (mode >= 2) atomicAdd(&s1[o], b1);
    }
}
extern "C" __global__ void pixel_runs_f64(const float* x, const float* dy, const float* mean, const float* rstd,
                                          int mode, int64_t hw, int c, int cn, int64_t chunk, double* s0,
                                          double* s1) {
    pixel_runs(x, dy, mean, rstd, mode, hw, c, cn, chunk, s0, s1);
}
extern "C" __global__ void pixel_runs_f64_h16(const uint16_t* x, const uint16_t* dy, const float* mean,
                                              const float* rstd, int mode, int64_t hw, int c, int cn, int64_t chunk,
                                              double* s0, double* s1) {
    pixel_runs(x, dy, mean, rstd, mode, hw, c, cn, chunk, s0, s1);
}

// out[i] = s[i] / hw (means)
extern "C" __global__ void finish_means_f32(const double* s, int64_t n, int64_t hw, float* out) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x)
        out[i] = (float)(s[i] / (double)hw);
}

// Means and 1/σ (biased variance + eps) of each (image, channel < cn) from sums of x − p and
// (x − p)², p = shift(image, channel); n = images × cn entries.
template <class Shift>
__device__ void moments_of(const double* s0, const double* s1, int64_t n, int cn, int64_t hw, Shift shift, float* mean,
                           float* rstd) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x) {
        const int64_t img = i / cn, ch = i % cn;
        const double d = s0[i] / (double)hw;
        const double var = fmax(s1[i] / (double)hw - d * d, 0.0);
        mean[i] = (float)((double)shift(img, ch) + d);
        rstd[i] = (float)(1.0 / sqrt(var + hin::EPS));
    }
}
// ... from mode 3's sums, shifted by the image's first pixel
template <class T>
__device__ void finish_moments(const double* s0, const double* s1, const T* x, int64_t n, int cn, int64_t hw, int c,
                               float* mean, float* rstd) {
    moments_of(s0, s1, n, cn, hw, [&](int64_t img, int64_t ch) { return h16::ld(x + img * hw * c + ch); }, mean, rstd);
}
// ... from sums shifted by a value per channel (the convolution's bias: conv3_halo_fwd_stats_h16),
// none where `shift` is null
extern "C" __global__ void finish_moments_shifted(const double* s0, const double* s1, const float* shift, int64_t n,
                                                  int cn, int64_t hw, float* mean, float* rstd) {
    moments_of(s0, s1, n, cn, hw, [&](int64_t, int64_t ch) { return shift ? shift[ch] : 0.0f; }, mean, rstd);
}
extern "C" __global__ void finish_moments_f32(const double* s0, const double* s1, const float* x, int64_t n,
                                              int cn, int64_t hw, int c, float* mean, float* rstd) {
    finish_moments(s0, s1, x, n, cn, hw, c, mean, rstd);
}
extern "C" __global__ void finish_moments_h16(const double* s0, const double* s1, const uint16_t* x, int64_t n,
                                              int cn, int64_t hw, int c, float* mean, float* rstd) {
    finish_moments(s0, s1, x, n, cn, hw, c, mean, rstd);
}

// Whether hin_apply and hin_backward take eight channels a thread: pixels and their
// normalised half both of whole runs of eight (an odd c has a half of c / 2 but pixels that
// runs would straddle), every operand aligned, and the runs indexed in 32 bits.
template <class... P>
__device__ __forceinline__ bool hin_runs(int c, int64_t total, P... operands) {
    return c % 16 == 0 && total / 8 < (int64_t)1 << 31 && h16::aligned16(operands...);
}

// y = leaky?(HIN(x)) from the statistics (means, then rstds, images × half each)
template <class T>
__device__ void hin_apply(const T* x, const float* stats, const float* gamma, const float* beta, int leaky,
                          int64_t images, int64_t hw, int c, T* y) {
    const int half = c / 2;
    const int64_t total = images * hw * c;
    const float* mean = stats;
    const float* rstd = stats + images * half;
    if (hin_runs(c, total, x, y, mean, rstd, gamma, beta)) {
        // eight channels a thread, all in one half: the same arithmetic a value at a time
        const unsigned rc = (unsigned)c / 8, image = (unsigned)hw * rc;
        for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < total / 8;
             r += (int64_t)blockDim.x * gridDim.x) {
            const unsigned k = (unsigned)r % rc;
            float v[8];
            h16::ld8(x + 8 * r, v);
            if (8 * k < (unsigned)half) {
                const int64_t at = (int64_t)((unsigned)r / image) * half + 8 * k;
                float m[8], s[8], g[8], b[8];
                h16::ld8(mean + at, m);
                h16::ld8(rstd + at, s);
                h16::ld8(gamma + 8 * k, g);
                h16::ld8(beta + 8 * k, b);
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = (v[j] - m[j]) * s[j] * g[j] + b[j];
            }
            if (leaky)
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = v[j] > 0.0f ? v[j] : hin::SLOPE * v[j];
            h16::st8(y + 8 * r, v);
        }
        return;
    }
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
    if (hin_runs(c, total, x, dy, dx, mean, rstd, gamma)) {
        // eight channels a thread, all in one half: the same arithmetic a value at a time
        const unsigned rc = (unsigned)c / 8, image = (unsigned)hw * rc;
        for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < total / 8;
             r += (int64_t)blockDim.x * gridDim.x) {
            const unsigned k = (unsigned)r % rc;
            float d[8];
            h16::ld8(dy + 8 * r, d);
            if (8 * k < (unsigned)half) {
                const int64_t at = (int64_t)((unsigned)r / image) * half + 8 * k;
                float v[8], m[8], s[8], g[8];
                h16::ld8(x + 8 * r, v);
                h16::ld8(mean + at, m);
                h16::ld8(rstd + at, s);
                h16::ld8(gamma + 8 * k, g);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const double xh = (double)((v[j] - m[j]) * s[j]);
                    d[j] = (float)((double)s[j] * g[j] * ((double)d[j] - s0[at + j] / n - xh * s1[at + j] / n));
                }
            }
            h16::st8(dx + 8 * r, d);
        }
        return;
    }
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

// out[c] += Σ over rows of x[row][c] (the bias gradients): block (32, 8), grid (⌈cols / 32⌉,
// row chunks); out zeroed first
template <class T>
__device__ void colsum(const T* x, int64_t rows, int cols, int64_t chunk, float* out) {
    __shared__ float part[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float s = 0.0f;
    if (c < cols)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += h16::ld(x + r * cols + c);
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        for (int i = 1; i < 8; ++i) s += part[i][threadIdx.x];
        atomicAdd(&out[c], s);
    }
}
extern "C" __global__ void colsum_f32(const float* x, int64_t rows, int cols, int64_t chunk, float* out) {
    colsum(x, rows, cols, chunk, out);
}
// the same over f16 x (the bias gradient from f16 dY)
extern "C" __global__ void colsum_h16(const uint16_t* x, int64_t rows, int cols, int64_t chunk, float* out) {
    colsum(x, rows, cols, chunk, out);
}

// colsum eight columns a thread, for cols a multiple of eight with R = cols / 8 runs a row
// dividing 256 (at most 32) and x aligned: block 256, grid ⌈rows / chunk⌉. Thread t sums run
// t mod R of rows r0 + t / R, + 256 / R, ..; the block adds its lanes in shared memory. (colsum
// gives each column a lane: 2-byte loads of f16.)
template <class T>
__device__ void colsum_runs(const T* x, int64_t rows, int cols, int64_t chunk, float* out) {
    __shared__ float part[256][8];
    const int runs = cols / 8, lanes = 256 / runs, t = threadIdx.x, k = t % runs;
    const int64_t r0 = (int64_t)blockIdx.x * chunk, r1 = min(rows, r0 + chunk);
    float s[8] = {};
    for (int64_t r = r0 + t / runs; r < r1; r += lanes) {
        float v[8];
        h16::ld8(x + r * cols + 8 * k, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j] += v[j];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) part[t][j] = s[j];
    __syncthreads();
    if (t < cols) {
        // thread 8k' + j adds column j of run k' over the lanes
        float b = 0.0f;
        for (int l = 0; l < lanes; ++l) b += part[l * runs + t / 8][t % 8];
        atomicAdd(&out[t], b);
    }
}
extern "C" __global__ void colsum_runs_f32(const float* x, int64_t rows, int cols, int64_t chunk, float* out) {
    colsum_runs(x, rows, cols, chunk, out);
}
extern "C" __global__ void colsum_runs_h16(const uint16_t* x, int64_t rows, int cols, int64_t chunk, float* out) {
    colsum_runs(x, rows, cols, chunk, out);
}
