// Direct f32 convolutions for layers with few channels on one side: the U-Net's first
// convolution reads the 3-channel image and its output block writes 3 channels. As implicit
// GEMMs those layers leave ≥ 95 % of a 64-column tile empty (N = 3) or gather with scalar loads
// (channel counts not divisible by 4), and ran at ~2 TFLOP/s: 9 of the 80 ms of an H200
// pre-training iteration for 0.3 % of its work. Here one thread owns one pixel and every
// channel of the small side (4·G of them, zero-padded), weights sit in shared memory laid out
// so that each thread reads four of them in one broadcast load, and the large side is looped
// over. Grids are 1-D and grid-strided; blocks are THREADS (256) threads.
// Measured on the H200 (batch 32 × 256²): the forward pass 3.8 → 1.95 ms over its four
// layers; the data gradient of the 3-channel layer 0.07 ms. The data gradient into 32
// channels (1.04 ms a layer, against 0.6 for the GEMM) and a direct weight gradient with one
// thread per output walking a run of pixels (no faster than the GEMM: it waits on its loads)
// lost; the weight gradient now stages pixels in shared memory instead (conv_few.cuh).
#pragma once
#include "half.cuh"

namespace conv {

// weights a block stages in shared memory (48 KB): the host sends larger layers elsewhere
// (SMALL_WEIGHTS in src/backend/cuda/device.rs; the kernels trap if the two ever disagree)
constexpr int SMALL_WEIGHTS = 12288;

// A pixel index as (image, row, column) of a rows × cols plane.
struct Rc {
    int img, y, x;
};
HD Rc rc(const FastDiv& by_plane, const FastDiv& by_cols, int64_t p) {
    const uint32_t img = by_plane.div((uint32_t)p), r = (uint32_t)p - img * by_plane.d, y = by_cols.div(r);
    return Rc{(int)img, (int)y, (int)(r - y * by_cols.d)};
}

// acc[0 .. 4G) += s · w[0 .. G) (four weights per 16-byte shared read)
template <int G>
__device__ __forceinline__ void add_scaled(float (&acc)[4 * G], float s, const F4* w) {
#pragma unroll
    for (int q = 0; q < G; ++q) {
        const F4 wv = w[q];
        acc[4 * q] += s * wv.x, acc[4 * q + 1] += s * wv.y;
        acc[4 * q + 2] += s * wv.z, acc[4 * q + 3] += s * wv.w;
    }
}

// Four results plus four residuals (none where r is null) stored at p: one 16-byte store of f32,
// or one 8-byte store of f16 (p then 8-byte aligned).
__device__ __forceinline__ void store4(float* p, F4 v, const float* r) {
    if (r) {
        const F4 q = load4(r);
        v.x += q.x, v.y += q.y, v.z += q.z, v.w += q.w;
    }
    *reinterpret_cast<F4*>(p) = v;
}
__device__ __forceinline__ void store4(uint16_t* p, F4 v, const uint16_t* r) {
    if (r) v.x += h16::h2f(r[0]), v.y += h16::h2f(r[1]), v.z += h16::h2f(r[2]), v.w += h16::h2f(r[3]);
    const uint32_t lo = (uint32_t)h16::f2h(v.x) | (uint32_t)h16::f2h(v.y) << 16;
    const uint32_t hi = (uint32_t)h16::f2h(v.z) | (uint32_t)h16::f2h(v.w) << 16;
    uint32_t* q = reinterpret_cast<uint32_t*>(p);
    q[0] = lo, q[1] = hi;
}

// y = leaky?(conv(x) + bias) + residual for Cout ≤ 4·G: one output pixel per thread. Shared
// weights [tap][ci][4G] (Cout zero-padded to 4G). Y: the storage of the residual and y — f32,
// or f16 where the image's layer feeds f16 activations (inference).
template <int G, class Y = float>
__device__ __forceinline__ void small_fwd(const float* x, const float* w, const float* bias, const Y* res, Y* y,
                                          int leaky, const Geom g) {
    alignas(16) __shared__ float ws[SMALL_WEIGHTS];
    constexpr int C4 = 4 * G;
    const int tc = g.k * g.k * g.cin;
    if (tc * C4 > SMALL_WEIGHTS) __trap();  // the host sends such layers to the GEMMs
    for (int i = threadIdx.x; i < tc * C4; i += THREADS) {
        const int co = i % C4, t = i / C4;
        ws[i] = co < g.cout ? w[t * g.cout + co] : 0.0f;
    }
    __syncthreads();
    const bool vec = g.cin % 4 == 0 && aligned16(x);
    const bool vec_out = g.cout == C4 && aligned16(y) && (!res || aligned16(res));  // (f16: 8-byte runs)
    const int64_t P = (int64_t)g.n * g.oh * g.ow;
    for (int64_t p = (int64_t)blockIdx.x * THREADS + threadIdx.x; p < P; p += (int64_t)gridDim.x * THREADS) {
        const Rc o = rc(g.by_ohw, g.by_ow, p);
        float acc[C4];
#pragma unroll
        for (int c = 0; c < C4; ++c) acc[c] = 0.0f;
        for (int ky = 0; ky < g.k; ++ky) {
            const int iy = o.y * g.stride - g.pad + ky;
            if (iy < 0 || iy >= g.h) continue;
            for (int kx = 0; kx < g.k; ++kx) {
                const int ix = o.x * g.stride - g.pad + kx;
                if (ix < 0 || ix >= g.w) continue;
                const float* xp = x + (((int64_t)o.img * g.h + iy) * g.w + ix) * g.cin;
                const F4* wp = reinterpret_cast<const F4*>(ws + (ky * g.k + kx) * g.cin * C4);
                if (vec) {
                    for (int ci = 0; ci < g.cin; ci += 4) {
                        const F4 v = load4(xp + ci);
                        add_scaled<G>(acc, v.x, wp + ci * G), add_scaled<G>(acc, v.y, wp + (ci + 1) * G);
                        add_scaled<G>(acc, v.z, wp + (ci + 2) * G), add_scaled<G>(acc, v.w, wp + (ci + 3) * G);
                    }
                } else {
                    for (int ci = 0; ci < g.cin; ++ci) add_scaled<G>(acc, xp[ci], wp + ci * G);
                }
            }
        }
#pragma unroll
        for (int c = 0; c < C4; ++c) {
            float v = acc[c];
            if (bias && c < g.cout) v += bias[c];
            if (leaky) v = v > 0.0f ? v : SLOPE * v;
            acc[c] = v;
        }
        Y* yp = y + p * g.cout;
        const Y* rp = res ? res + p * g.cout : nullptr;
        if (vec_out) {
            // four channels per 16-byte store: a warp's 32 pixels × Cout floats are 32 · Cout / 4
            // store sectors instead of 32 · Cout scattered words
#pragma unroll
            for (int q = 0; q < G; ++q)
                store4(yp + 4 * q, F4{acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]}, rp ? rp + 4 * q : rp);
        } else {
#pragma unroll
            for (int c = 0; c < C4; ++c) {
                if (c >= g.cout) break;
                h16::st(yp + c, acc[c] + (rp ? h16::ld(rp + c) : 0.0f));
            }
        }
    }
}

// dX for Cin ≤ 4·G: one input pixel per thread; input pixel (iy, ix) takes output pixel
// ((iy + pad − ky) / s, (ix + pad − kx) / s) through tap (ky, kx) where that divides.
// Shared weights [tap][co][4G] (Cin zero-padded to 4G).
template <int G>
__device__ __forceinline__ void small_bwd_data(const float* dy, const float* w, float* dx, const Geom g,
                                               const DxOut out = {}) {
    alignas(16) __shared__ float ws[SMALL_WEIGHTS];
    constexpr int C4 = 4 * G;
    const int kk = g.k * g.k;
    if (kk * g.cout * C4 > SMALL_WEIGHTS) __trap();
    for (int i = threadIdx.x; i < kk * g.cout * C4; i += THREADS) {
        const int ci = i % C4, r = i / C4, co = r % g.cout, t = r / g.cout;
        ws[i] = ci < g.cin ? w[(t * g.cin + ci) * g.cout + co] : 0.0f;
    }
    __syncthreads();
    const int64_t P = (int64_t)g.n * g.h * g.w;
    for (int64_t p = (int64_t)blockIdx.x * THREADS + threadIdx.x; p < P; p += (int64_t)gridDim.x * THREADS) {
        const Rc i = rc(g.by_hw, g.by_w, p);
        float acc[C4];
#pragma unroll
        for (int c = 0; c < C4; ++c) acc[c] = 0.0f;
        for (int ky = 0; ky < g.k; ++ky) {
            const int ty = i.y + g.pad - ky;
            if (ty < 0) break;
            const int oy = (int)g.by_stride.div((uint32_t)ty);
            if (oy * g.stride != ty || oy >= g.oh) continue;
            for (int kx = 0; kx < g.k; ++kx) {
                const int tx = i.x + g.pad - kx;
                if (tx < 0) break;
                const int ox = (int)g.by_stride.div((uint32_t)tx);
                if (ox * g.stride != tx || ox >= g.ow) continue;
                const float* dp = dy + (((int64_t)i.img * g.oh + oy) * g.ow + ox) * g.cout;
                const F4* wp = reinterpret_cast<const F4*>(ws + (ky * g.k + kx) * g.cout * C4);
                for (int co = 0; co < g.cout; ++co) add_scaled<G>(acc, dp[co], wp + co * G);
            }
        }
#pragma unroll
        for (int c = 0; c < C4; ++c) {
            if (c >= g.cin) break;
            dx[p * g.cin + c] = out.finish(dx, p * g.cin + c, acc[c]);
        }
    }
}

}  // namespace conv
