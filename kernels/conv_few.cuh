// The few-channel layers' gradients on f16 storage: the image's layer (3 → 32) and the
// 3-channel output block (32 → 3 by 1 × 1 and 3 × 3, then 3 → 3). On an H200 with f16
// activations these ran on f32 copies through the TF32 GEMMs at ~2 TFLOP/s: 6 of a 40 ms
// pre-training iteration for 0.3 % of its work (their operands widened to f32 first, 268 MB a
// copy). Both kernels read f16 directly and are bound by memory, not by the MMA shape.
//
// few_dw: dW[(tap, ci)][co] = Σ_p im2col(x)[p][(tap, ci)] · dY[p][co] for layers with at most
// FEW_ROWS (tap, ci) rows and FEW_COLS output channels. A block stages FEW_PC output pixels'
// im2col rows and dY rows in shared memory as f32; each thread owns a 4 × 4 tile of dW (rows ×
// columns) and one of `lanes` interleaved subsets of the staged pixels, so a pixel costs it
// two 16-byte shared loads for 16 FMAs. Blocks walk the pixels grid-strided, keep their sums in
// registers, add the lanes up in shared memory at the end and add that to dw (zeroed) with one
// atomic per weight per block.
//
// few_out_dx: dX of a stride-1 convolution into cin channels (a multiple of 8) from at most 4
// output channels: one thread per (input pixel, 8 channels), the weights [tap][co][ci] in shared
// memory, LeakyReLU's derivative and the old dx fused as DxOut does, 16-byte f16 loads and
// stores.
#pragma once
#include "conv_small.cuh"

namespace conv {

constexpr int FEW_PC = 32, FEW_ROWS = 320, FEW_COLS = 32;

// Four f16 values at p (8-byte aligned) as f32.
DEV void load4h(const uint16_t* p, float* out) {
    struct alignas(8) H4 {
        uint16_t v[4];
    };
    const H4 h = *reinterpret_cast<const H4*>(p);
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = h16::h2f(h.v[j]);
}

// One 16-byte run of an im2col row into shared f32: eight f16 values, or four f32.
DEV void stage_run(const uint16_t* src, float* dst) {
    float v[8];
    h16::ld8(src, v);
    *reinterpret_cast<F4*>(dst) = F4{v[0], v[1], v[2], v[3]};
    *reinterpret_cast<F4*>(dst + 4) = F4{v[4], v[5], v[6], v[7]};
}
DEV void stage_run(const float* src, float* dst) { *reinterpret_cast<F4*>(dst) = load4(src); }

// Whether a layer fits few_dw (the host asks the same before it launches; the kernel traps).
HD bool few_dw_fits(int kw, int cout) {
    const int rows = (kw + 3) / 4, cols = (cout + 3) / 4;
    return 4 * rows <= FEW_ROWS && 4 * cols <= FEW_COLS && rows * cols <= THREADS;
}

template <class X, class D>
__device__ __forceinline__ void few_dw(const X* x, const D* dy, float* dw, const Geom g) {
    alignas(16) __shared__ float xs[FEW_PC * FEW_ROWS];
    alignas(16) __shared__ float ds[FEW_PC * FEW_COLS];
    const int kk = g.k * g.k, kw = kk * g.cin;
    if (!few_dw_fits(kw, g.cout)) __trap();
    const int R = (kw + 3) / 4, C = (g.cout + 3) / 4, T = R * C, RP = 4 * R, CP = 4 * C;
    const int lanes = THREADS / T, t = threadIdx.x, tile = t % T, lane = t / T;
    const int r4 = (tile / C) * 4, c4 = (tile % C) * 4;
    // im2col rows are copied V channels at a time (V = 8 for f16 x, 4 for f32, where cin and x
    // allow: one 16-byte load), consecutive threads taking consecutive runs of a row so that
    // their shared stores fall in different banks (one thread per (pixel, tap) stored 32
    // channels apart: every store of a warp in one bank, 32-way conflicts)
    constexpr int VW = sizeof(X) == 2 ? 8 : 4;
    const int V = g.cin % VW == 0 && aligned16(x) ? VW : 1;
    const int cv = g.cin / V, rowv = kk * cv;
    const FastDiv by_rowv = fast_div((uint32_t)rowv), by_cv = fast_div((uint32_t)cv);
    float acc[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i] = 0.0f;
    const int64_t P = (int64_t)g.n * g.oh * g.ow;
    for (int64_t base = (int64_t)blockIdx.x * FEW_PC; base < P; base += (int64_t)gridDim.x * FEW_PC) {
        __syncthreads();  // the last chunk's reads are done
        for (int i = t; i < FEW_PC * rowv; i += THREADS) {
            const int pl = (int)by_rowv.div((uint32_t)i), r = i - pl * rowv;
            const int tap = (int)by_cv.div((uint32_t)r), c = (r - tap * cv) * V;
            const int ky = (int)g.by_k.div((uint32_t)tap), kx = tap - ky * g.k;
            const int64_t p = base + pl;
            float* dst = xs + pl * RP + tap * g.cin + c;
            const X* src = nullptr;
            if (p < P) {
                const Rc o = rc(g.by_ohw, g.by_ow, p);
                const int iy = o.y * g.stride - g.pad + ky, ix = o.x * g.stride - g.pad + kx;
                if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
                    src = x + (((int64_t)o.img * g.h + iy) * g.w + ix) * g.cin + c;
            }
            if (V == 1) {
                dst[0] = src ? h16::ld(src) : 0.0f;
            } else if (!src) {
                for (int j = 0; j < V; j += 4) *reinterpret_cast<F4*>(dst + j) = F4{0.0f, 0.0f, 0.0f, 0.0f};
            } else {
                stage_run(src, dst);
            }
        }
        for (int i = t; i < FEW_PC * (RP - kw); i += THREADS) {
            const int pl = i / (RP - kw);
            xs[pl * RP + kw + (i - pl * (RP - kw))] = 0.0f;
        }
        for (int i = t; i < FEW_PC * CP; i += THREADS) {
            const int pl = i / CP, c = i - pl * CP;
            const int64_t p = base + pl;
            ds[i] = c < g.cout && p < P ? h16::ld(dy + p * g.cout + c) : 0.0f;
        }
        __syncthreads();
        if (lane < lanes) {
            for (int pl = lane; pl < FEW_PC; pl += lanes) {
                const F4 a = load4(xs + pl * RP + r4), b = load4(ds + pl * CP + c4);
                const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                for (int r = 0; r < 4; ++r)
#pragma unroll
                    for (int c = 0; c < 4; ++c) acc[4 * r + c] += av[r] * bv[c];
            }
        }
    }
    // the lanes' sums of each tile, added up in shared memory (lanes · T · 16 ≤ 16 · THREADS)
    __syncthreads();
    if (lane < lanes) {
#pragma unroll
        for (int i = 0; i < 16; ++i) xs[(lane * T + tile) * 16 + i] = acc[i];
    }
    __syncthreads();
    for (int i = t; i < T * 16; i += THREADS) {
        float s = 0.0f;
        for (int l = 0; l < lanes; ++l) s += xs[l * T * 16 + i];
        const int tl = i / 16, j = i % 16, row = (tl / C) * 4 + j / 4, col = (tl % C) * 4 + j % 4;
        if (row < kw && col < g.cout) atomicAdd(&dw[row * g.cout + col], s);
    }
}

// Whether a layer fits few_out_dx (as few_dw_fits).
HD bool few_out_dx_fits(int k, int cin, int cout, int stride) {
    return (k == 1 || k == 3) && stride == 1 && cout <= 4 && cin % 8 == 0 && k * k * cout * cin <= SMALL_WEIGHTS;
}

// One thread's 8 channels of dX at pixel i from dY's K × K taps: every tap's dY loads are
// issued before the first product (the taps' bounds are predicates), so a thread waits on
// memory once, not once a tap.
template <int K>
__device__ __forceinline__ void few_out_dx_px(const uint16_t* dy, const float* ws, const Geom g, const Rc& i, int c0,
                                              float* acc) {
    float d[K * K][4];
#pragma unroll
    for (int t = 0; t < K * K; ++t) {
        const int oy = i.y + g.pad - t / K, ox = i.x + g.pad - t % K;
        const bool ok = oy >= 0 && oy < g.oh && ox >= 0 && ox < g.ow;
        const uint16_t* dp = dy + (((int64_t)i.img * g.oh + oy) * g.ow + ox) * g.cout;
#pragma unroll
        for (int co = 0; co < 4; ++co) d[t][co] = ok && co < g.cout ? h16::h2f(dp[co]) : 0.0f;
    }
#pragma unroll
    for (int t = 0; t < K * K; ++t)
#pragma unroll
        for (int co = 0; co < 4; ++co) {
            if (co >= g.cout) break;
            const float* wp = ws + (t * g.cout + co) * g.cin + c0;
            const F4 a = load4(wp), b = load4(wp + 4);
            const float v = d[t][co];
            acc[0] += v * a.x, acc[1] += v * a.y, acc[2] += v * a.z, acc[3] += v * a.w;
            acc[4] += v * b.x, acc[5] += v * b.y, acc[6] += v * b.z, acc[7] += v * b.w;
        }
}

__device__ __forceinline__ void few_out_dx(const uint16_t* dy, const float* w, uint16_t* dx, const Geom g,
                                           const uint16_t* xin, int accumulate) {
    alignas(16) __shared__ float ws[SMALL_WEIGHTS];
    const int kk = g.k * g.k;
    if (!few_out_dx_fits(g.k, g.cin, g.cout, g.stride)) __trap();
    for (int i = threadIdx.x; i < kk * g.cout * g.cin; i += THREADS) {
        const int ci = i % g.cin, r = i / g.cin, co = r % g.cout, t = r / g.cout;
        ws[i] = w[(t * g.cin + ci) * g.cout + co];
    }
    __syncthreads();
    const int groups = g.cin / 8;
    const int64_t Q = (int64_t)g.n * g.h * g.w * groups;
    for (int64_t q = (int64_t)blockIdx.x * THREADS + threadIdx.x; q < Q; q += (int64_t)gridDim.x * THREADS) {
        const int64_t p = q / groups;
        const int c0 = (int)(q - p * groups) * 8;
        const Rc i = rc(g.by_hw, g.by_w, p);
        float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = 0.0f;
        if (g.k == 3)
            few_out_dx_px<3>(dy, ws, g, i, c0, acc);
        else
            few_out_dx_px<1>(dy, ws, g, i, c0, acc);
        const int64_t at = p * g.cin + c0;
        if (xin) {
            float xv[8];
            h16::ld8(xin + at, xv);
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (!(xv[j] > 0.0f)) acc[j] *= SLOPE;
        }
        if (accumulate) {
            float old[8];
            h16::ld8(dx + at, old);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[j] = old[j] + acc[j];
        }
        h16::st8(dx + at, acc);
    }
}

// few_direct_dw: the weight (and bias) gradient of the U-Net's few-channel layers without
// staging. few_dw copies a 32-pixel chunk's im2col rows into shared memory and then waits on
// it: 2 syncs and a global round trip a chunk at three blocks an SM, latency-bound (on an H200
// its four layers took 2 ms of a 25 ms pre-training iteration, 3–6 TFLOP/s). Here a thread
// owns the sums of one tap row ky (blockIdx.y), CI input channels (gi) and CO output channels
// (go) — K · CI · CO registers — and walks output pixels, reading x's K pixels of the row and
// dY straight from global memory (neighbouring threads read neighbouring pixels: L1 hits).
// The groups (gi, go) of a pixel sit on consecutive lanes, so a warp reads whole pixel rows.
// Sums of lanes of one group add up by shuffles, then across warps in shared memory, then one
// atomic per weight per block. CI: 4 (channels of f16 x, one 8-byte load) or 3 (cin 3); CO: 4
// (of f16 dY) or 3 (cout 3); up to 16 groups, a power of two. (Measured on an H200: 8 channels a
// thread at two blocks an SM, or 4 at two or three, no faster than 4 at four.)
HD bool few_direct_fits(int k, int cin, int cout, bool x_half) {
    const bool ci8 = x_half && (cin == 8 || cin == 16 || cin == 32 || cin == 64);
    const bool co8 = cout == 8 || cout == 16 || cout == 32;
    return (k == 1 || k == 3) && ((ci8 && cout == 3) || (cin == 3 && (cout == 3 || co8)));
}

constexpr int FEW_DIRECT_RED = 16 * (3 * 4 * 3 + 4);  // shared floats: 16 groups of the largest NV

template <int K, int CI, int CO, class X>
__device__ __forceinline__ void few_direct_dw(const X* x, const uint16_t* dy, float* dw, float* db, const Geom g,
                                              float* red) {
    constexpr int NV = K * CI * CO + CO;  // a thread's sums: the weights', then the bias's
    static_assert(16 * NV <= FEW_DIRECT_RED, "the entry's shared sums");
    const int gi_n = g.cin / CI, go_n = (g.cout + CO - 1) / CO, groups = gi_n * go_n;
    const int t = threadIdx.x, grp = t % groups, gi = grp % gi_n, go = grp / gi_n, per = THREADS / groups;
    const int ky = blockIdx.y, ci0 = gi * CI, co0 = go * CO;
    const bool sums = db && ky == 0 && gi == 0;
    const bool x_vec = sizeof(X) == 2 && aligned16(x), dy_vec = aligned16(dy);
    float acc[NV];
#pragma unroll
    for (int i = 0; i < NV; ++i) acc[i] = 0.0f;
    for (int i = t; i < groups * NV; i += THREADS) red[i] = 0.0f;
    const int64_t P = (int64_t)g.n * g.oh * g.ow;
    for (int64_t p = (int64_t)blockIdx.x * per + t / groups; p < P; p += (int64_t)gridDim.x * per) {
        float d[CO];
        const uint16_t* dp = dy + p * g.cout + co0;
        bool loaded = false;
        if constexpr (CO == 4) {
            if (dy_vec) load4h(dp, d), loaded = true;
        }
        if (!loaded)
#pragma unroll
            for (int c = 0; c < CO; ++c) d[c] = h16::h2f(dp[c]);
        if (sums)
#pragma unroll
            for (int c = 0; c < CO; ++c) acc[K * CI * CO + c] += d[c];
        const Rc o = rc(g.by_ohw, g.by_ow, p);
        const int iy = o.y * g.stride - g.pad + ky;
        if (iy < 0 || iy >= g.h) continue;
        const X* row = x + ((int64_t)o.img * g.h + iy) * g.w * g.cin + ci0;
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
            const int ix = o.x * g.stride - g.pad + kx;
            if (ix < 0 || ix >= g.w) continue;
            float v[CI];
            bool loaded = false;
            if constexpr (CI == 4) {
                if (x_vec) load4h(reinterpret_cast<const uint16_t*>(row + (int64_t)ix * g.cin), v), loaded = true;
            }
            if (!loaded)
#pragma unroll
                for (int c = 0; c < CI; ++c) v[c] = h16::ld(row + (int64_t)ix * g.cin + c);
#pragma unroll
            for (int c = 0; c < CI; ++c)
#pragma unroll
                for (int e = 0; e < CO; ++e) acc[(kx * CI + c) * CO + e] += v[c] * d[e];
        }
    }
    // lanes l and l ^ m (m ≥ groups) hold the same group's sums
#pragma unroll
    for (int i = 0; i < NV; ++i)
        for (int m = 16; m >= groups; m /= 2) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], m);
    __syncthreads();  // red zeroed
    if (t % 32 < groups)
#pragma unroll
        for (int i = 0; i < NV; ++i) atomicAdd(&red[grp * NV + i], acc[i]);
    __syncthreads();
    for (int i = t; i < groups * NV; i += THREADS) {
        const int gr = i / NV, j = i % NV, gin = gr % gi_n, gon = gr / gi_n;
        if (j >= K * CI * CO) {
            const int co = gon * CO + j - K * CI * CO;
            if (db && ky == 0 && gin == 0 && co < g.cout) atomicAdd(&db[co], red[i]);
            continue;
        }
        const int kx = j / (CI * CO), ci = gin * CI + (j / CO) % CI, co = gon * CO + j % CO;
        if (co < g.cout) atomicAdd(&dw[((ky * g.k + kx) * g.cin + ci) * g.cout + co], red[i]);
    }
}

// The entries' choice of sums per thread (the host asks few_direct_fits first; this traps otherwise).
template <class X>
__device__ __forceinline__ void few_direct_entry(const X* x, const uint16_t* dy, float* dw, float* db, const Geom g) {
    __shared__ float red[FEW_DIRECT_RED];
    if (!few_direct_fits(g.k, g.cin, g.cout, sizeof(X) == 2)) __trap();
    const bool three = g.k == 3;
    if (g.cin == 3 && g.cout == 3)
        three ? few_direct_dw<3, 3, 3>(x, dy, dw, db, g, red) : few_direct_dw<1, 3, 3>(x, dy, dw, db, g, red);
    else if (g.cin == 3)
        three ? few_direct_dw<3, 3, 4>(x, dy, dw, db, g, red) : few_direct_dw<1, 3, 4>(x, dy, dw, db, g, red);
    else if constexpr (sizeof(X) == 2)
        three ? few_direct_dw<3, 4, 3>(x, dy, dw, db, g, red) : few_direct_dw<1, 4, 3>(x, dy, dw, db, g, red);
}

}  // namespace conv
