// Operand policies of the implicit-GEMM convolutions (conv.cu): how element (m, k) of A,
// (k, n) of B are gathered from NHWC tensors and what the epilogue does with C[m][n].
//
// Index arithmetic is split by coordinate: `mi(m)` decomposes a row (image, pixel), `ki(k)` a
// reduction index (tap, channel) and `ni(n)` a column, each once per tile into shared memory,
// so a gathered element costs a few multiply-adds instead of the eight integer divisions the
// direct formulas take. Host-compilable (tests/conv_ops_host.rs checks every gather against
// the direct formulas on the CPU).

#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define HD __host__ __device__ __forceinline__
#define DEV __device__ __forceinline__
#define SPLIT_INDEX blockIdx.z
#else
#define HD inline
#define DEV inline
#define SPLIT_INDEX 0
// atomic on the host too: tests/conv_kernels_emu.cpp runs a block's threads at once (F's bits
// compared and swapped as the same-sized U)
template <class F, class U>
inline void atomic_add_bits(F* p, F v) {
    U* q = reinterpret_cast<U*>(p);
    U cur = __atomic_load_n(q, __ATOMIC_RELAXED), next;
    do {
        F f;
        __builtin_memcpy(&f, &cur, sizeof f);
        f += v;
        __builtin_memcpy(&next, &f, sizeof f);
    } while (!__atomic_compare_exchange_n(q, &cur, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}
inline void atomicAdd(float* p, float v) { atomic_add_bits<float, uint32_t>(p, v); }
inline void atomicAdd(double* p, double v) { atomic_add_bits<double, uint64_t>(p, v); }
#endif

namespace conv {

constexpr float SLOPE = 0.2f;

// Four consecutive floats: one 16-byte load where a layout keeps runs of four channels
// together and aligned (channel counts divisible by 4, buffers 16-byte aligned). Each policy's
// a4 / b4 read the 4 elements along the operand's contiguous index — k for A when A_K_FAST,
// else m; n for B when B_N_FAST, else k — starting at a multiple of 4, given that first
// index's decomposition; vec_a / vec_b say whether this layer's layout allows it.
#ifdef __CUDACC__
using F4 = float4;
#else
struct F4 {
    float x, y, z, w;
};
#endif
HD F4 load4(const float* p) { return *reinterpret_cast<const F4*>(p); }

// Two consecutive floats (8 bytes): the wide kernels' epilogues store columns n, n + 1 of a row
// together through `store2(m, n0, n1, v0, v1)` (layouts with even channel counts).
#ifdef __CUDACC__
using F2 = float2;
#else
struct F2 {
    float x, y;
};
#endif
HD F2 load2(const float* p) { return *reinterpret_cast<const F2*>(p); }
HD void put2(float* p, float a, float b) { *reinterpret_cast<F2*>(p) = F2{a, b}; }

// Where the i-th four-wide load of thread `tid` (of THREADS) sits in an operand tile of ROWS ×
// KS (rows m of A or n of B, K step columns k): with `k_fast` the run lies along k — row r,
// columns c..c+3 — else along the rows — rows r..r+3, column c. Consecutive threads take
// consecutive runs, so a warp's loads stay coalesced. (The host check proves that the runs
// cover the tile once.)
struct Slot {
    int r, c;
};
template <int ROWS, int KS, int THREADS>
HD Slot vec_slot(bool k_fast, int tid, int i) {
    if (k_fast) return Slot{(tid + THREADS * i) / (KS / 4), (tid % (KS / 4)) * 4};
    return Slot{(tid % (ROWS / 4)) * 4, (tid + THREADS * i) / (ROWS / 4)};
}
// The half-precision kernels' placement of four-wide loads that run along the rows:
// mma.m16n8k16 takes k in pairs (2j, 2j + 1) packed into one 32-bit word, so a thread loads the
// same four rows at both k of a pair (its loads 2p and 2p + 1) and stores the four packed words
// at once. Pair f = tid + THREADS·p of the tile's ROWS·KS/8; where a tile has fewer pairs than
// threads (ROWS·KS < 8·THREADS) the threads past them load nothing (pair_active).
template <int ROWS, int KS, int THREADS>
HD Slot pair_slot(int tid, int i) {
    const int f = tid + THREADS * (i / 2);
    return Slot{(f % (ROWS / 4)) * 4, 2 * (f / (ROWS / 4)) + (i & 1)};
}
template <int ROWS, int KS, int THREADS>
constexpr int pair_loads() {
    return 2 * ((ROWS * KS / 8 + THREADS - 1) / THREADS);
}
template <int ROWS, int KS, int THREADS>
HD bool pair_active(int tid, int i) {
    return tid + THREADS * (i / 2) < ROWS * KS / 8;
}
HD F4 zero4() { return F4{0.0f, 0.0f, 0.0f, 0.0f}; }
HD bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

HD uint32_t umulhi(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
    return __umulhi(a, b);
#else
    return (uint32_t)(((uint64_t)a * b) >> 32);
#endif
}

// Division by a divisor fixed for the launch as a multiply-high, an add and a shift
// (Granlund & Montgomery's round-up method). The GEMM bodies decompose each K step's indices
// between storing one step and the barrier every warp waits at, and a plain integer division
// there is a float reciprocal and two corrections (~20 dependent instructions, a 64-bit one
// more). Exact for n < 2^31: the host keeps every GEMM index below that (conv_launch).
struct FastDiv {
    uint32_t d, mul;
    int shift;
    HD uint32_t div(uint32_t n) const { return (umulhi(n, mul) + n) >> shift; }
    HD uint32_t mod(uint32_t n) const { return n - div(n) * d; }
};
HD FastDiv fast_div(uint32_t d) {
    if (d == 0) return FastDiv{0, 0, 0};  // an empty output's extent: never divided by
    int l = 0;
    while (((uint64_t)1 << l) < d) ++l;  // ⌈log2 d⌉
    const uint64_t mul = ((((uint64_t)1 << l) - d) << 32) / d + 1;
    return FastDiv{d, (uint32_t)mul, l};
}

// A layer's geometry with the divisors its index decompositions use (unused ones are dead
// code after inlining).
struct Geom {
    int n, h, w, cin, cout, k, stride, pad, oh, ow;
    FastDiv by_cin, by_cout, by_k, by_stride, by_w, by_hw, by_ow, by_ohw;
};

HD Geom geom(int n, int h, int w, int cin, int cout, int k, int stride, int pad) {
    const int oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
    Geom g{n, h, w, cin, cout, k, stride, pad, oh, ow,
           fast_div(cin), fast_div(cout), fast_div(k), fast_div(stride), fast_div(w), fast_div((uint32_t)h * w), fast_div(ow),
           fast_div((uint32_t)oh * ow)};
    return g;
}

// An index with nothing to decompose.
struct Plain {
    int64_t i;
    bool ok;
};
HD Plain plain(int64_t i, int64_t end) { return Plain{i, i < end}; }

// Convolution windows are gathered as base + offset under a validity mask: a row (an output
// pixel of the forward pass, an input pixel of the data gradient) holds the element offset its
// window starts at and one bit per tap that lands inside the tensor it reads; a (tap, channel)
// index holds the offset it adds and its tap's bit. A gathered element then costs a shift, an
// add and a predicated load instead of two coordinates, four bounds tests and an address
// computed from scratch.

// A row whose window is gathered under a tap mask: its index p, the window's base offset
// (possibly negative: the padding) and one bit per tap of the k × k kernel that lands inside
// the tensor the window reads (bit ky·k + kx; none past the end).
struct Window {
    int64_t p, base;
    uint32_t valid;
    bool ok;
};

// The tap mask of a k × k kernel from the taps whose row (bit ky of `rows`) and column (bit kx
// of `cols`) are inside.
HD uint32_t tap_mask(int k, uint32_t rows, uint32_t cols) {
    uint32_t valid = 0;
    for (int ky = 0; ky < k; ++ky)
        if ((rows >> ky) & 1u) valid |= cols << (ky * k);
    return valid;
}

// Output pixel p of a convolution, as the forward pass and the weight gradient read x.
HD Window out_pixel(const Geom& g, int64_t p, int64_t end) {
    const uint32_t img = g.by_ohw.div((uint32_t)p), r = (uint32_t)p - img * g.by_ohw.d, oy = g.by_ow.div(r);
    const int iy0 = (int)oy * g.stride - g.pad, ix0 = (int)(r - oy * g.ow) * g.stride - g.pad;
    uint32_t rows = 0, cols = 0;
    for (int kk = 0; kk < g.k; ++kk) {
        if (iy0 + kk >= 0 && iy0 + kk < g.h) rows |= 1u << kk;
        if (ix0 + kk >= 0 && ix0 + kk < g.w) cols |= 1u << kk;
    }
    const bool ok = p < end;
    return Window{p, (((int64_t)img * g.h + iy0) * g.w + ix0) * g.cin, ok ? tap_mask(g.k, rows, cols) : 0u, ok};
}

// Input pixel p as the data gradient reads dY: tap (ky, kx) reaches output pixel
// ((y + pad − ky) / s, (x + pad − kx) / s) when those divide exactly and land inside the
// output. For such taps that is (⌊(y + pad) / s⌋ − ⌊ky / s⌋, ⌊(x + pad) / s⌋ − ⌊kx / s⌋), so
// the base is the first pair's offset in dY and each tap subtracts its own.
HD Window grad_pixel(const Geom& g, int64_t p, int64_t end) {
    const uint32_t img = g.by_hw.div((uint32_t)p), r = (uint32_t)p - img * g.by_hw.d, y = g.by_w.div(r);
    const int ty0 = (int)y + g.pad, tx0 = (int)(r - y * g.w) + g.pad;
    auto reaches = [&](int t, int out) { return t >= 0 && t % g.stride == 0 && t / g.stride < out; };
    uint32_t rows = 0, cols = 0;
    for (int kk = 0; kk < g.k; ++kk) {
        if (reaches(ty0 - kk, g.oh)) rows |= 1u << kk;
        if (reaches(tx0 - kk, g.ow)) cols |= 1u << kk;
    }
    const bool ok = p < end;
    const int64_t base = (((int64_t)img * g.oh + ty0 / g.stride) * g.ow + tx0 / g.stride) * g.cout;
    return Window{p, base, ok ? tap_mask(g.k, rows, cols) : 0u, ok};
}

// A pixel of an H × W image.
struct Pixel {
    int64_t p;
    int img, y, x;
    bool ok;
};
HD Pixel pixel(const Geom& g, int64_t p, int64_t end) {
    const uint32_t img = g.by_hw.div((uint32_t)p), r = (uint32_t)p - img * g.by_hw.d, y = g.by_w.div(r);
    return Pixel{p, (int)img, (int)y, (int)(r - y * g.w), p < end};
}

// A (tap, channel) index t = (ky·k + kx)·c + ch of a k × k kernel over c channels: `off` is
// what it adds to a window's base, `bit` its tap's bit in the windows' masks (31, never set,
// past the end; k ≤ 5).
struct Tap {
    int64_t t;
    int off, ch, tap, bit;
    bool ok;
};
// over x's cin channels, as the forward pass and the weight gradient read x
HD Tap x_tap(const Geom& g, int64_t t, int64_t end) {
    const uint32_t tp = g.by_cin.div((uint32_t)t), ky = g.by_k.div(tp);
    const int ch = (int)((uint32_t)t - tp * g.cin), kx = (int)(tp - ky * g.k);
    const bool ok = t < end;
    return Tap{t, ((int)ky * g.w + kx) * g.cin + ch, ch, (int)tp, ok ? (int)tp : 31, ok};
}
// over dY's cout channels, as the data gradient reads dY (see grad_pixel)
HD Tap dy_tap(const Geom& g, int64_t t, int64_t end) {
    const uint32_t tp = g.by_cout.div((uint32_t)t), ky = g.by_k.div(tp);
    const int ch = (int)((uint32_t)t - tp * g.cout), kx = (int)(tp - ky * g.k);
    const bool ok = t < end;
    const int oy = (int)g.by_stride.div(ky), ox = (int)g.by_stride.div((uint32_t)kx);
    return Tap{t, ch - (oy * g.ow + ox) * g.cout, ch, (int)tp, ok ? (int)tp : 31, ok};
}

// src[base + off] where the tap is inside the window's tensor, else zero
template <class Row>
HD float masked(const float* src, const Row& r, const Tap& t) {
    return (r.valid >> t.bit) & 1u ? src[r.base + t.off] : 0.0f;
}

// y = leaky?(conv(x) + bias) + residual: M = output pixels, K = (tap, ci), N = Cout
struct Fwd {
    static constexpr bool A_K_FAST = true, B_N_FAST = true;
    using MI = Window;
    using KI = Tap;
    using NI = Plain;
    const float *x, *w, *bias, *res;
    float* y;
    Geom g;
    int leaky;
    HD MI mi(int64_t m, int64_t end) const { return out_pixel(g, m, end); }
    HD KI ki(int64_t k, int64_t end) const { return x_tap(g, k, end); }
    HD NI ni(int64_t n, int64_t end) const { return plain(n, end); }
    HD float a(const MI& m, const KI& k) const { return masked(x, m, k); }
    HD float b(const KI& k, const NI& n) const { return k.ok && n.ok ? w[k.t * g.cout + n.i] : 0.0f; }
    HD bool vec_a() const { return g.cin % 4 == 0 && aligned16(x); }
    HD bool vec_b() const { return g.cout % 4 == 0 && aligned16(w); }
    HD F4 a4(const MI& m, const KI& k) const { return (m.valid >> k.bit) & 1u ? load4(x + m.base + k.off) : zero4(); }
    HD F4 b4(const KI& k, const NI& n) const { return k.ok && n.ok ? load4(w + k.t * g.cout + n.i) : zero4(); }
    DEV void store(const MI& m, const NI& n, float v) const {
        if (bias) v += bias[n.i];
        if (leaky) v = v > 0.0f ? v : SLOPE * v;
        if (res) v += res[m.p * g.cout + n.i];
        y[m.p * g.cout + n.i] = v;
    }
    DEV void store2(const MI& m, const NI& n, const NI&, float v0, float v1) const {
        if (bias) {
            const F2 b = load2(bias + n.i);
            v0 += b.x, v1 += b.y;
        }
        if (leaky) v0 = v0 > 0.0f ? v0 : SLOPE * v0, v1 = v1 > 0.0f ? v1 : SLOPE * v1;
        const int64_t at = m.p * g.cout + n.i;
        if (res) {
            const F2 r = load2(res + at);
            v0 += r.x, v1 += r.y;
        }
        put2(y + at, v0, v1);
    }
};

// What a data gradient does on its way out: dx = [dx +] leaky'(x) · Σ, with x the forward
// input — a LeakyReLU output, whose sign is its input's — where `x` is set, and the old dx
// added where `accumulate` is: the activation's backward pass and a residual branch's sum
// fused into the GEMM's epilogue (the same multiply and add as the separate passes).
struct DxOut {
    const float* x;
    int accumulate;
    HD float finish(const float* dx, int64_t at, float v) const {
        if (x && !(x[at] > 0.0f)) v *= SLOPE;
        return accumulate ? dx[at] + v : v;
    }
};

// dX: M = input pixels, K = (tap, co), N = Cin; a dY element is read by input pixel (iy, ix)
// through tap (ky, kx) when iy + pad − ky is a multiple of the stride inside the output
struct BwdData {
    static constexpr bool A_K_FAST = true, B_N_FAST = false;
    using MI = Window;
    using KI = Tap;
    using NI = Plain;
    const float *dy, *w;
    float* dx;
    Geom g;
    DxOut out;
    HD MI mi(int64_t m, int64_t end) const { return grad_pixel(g, m, end); }
    HD KI ki(int64_t k, int64_t end) const { return dy_tap(g, k, end); }
    HD NI ni(int64_t n, int64_t end) const { return plain(n, end); }
    HD float a(const MI& m, const KI& k) const { return masked(dy, m, k); }
    HD float b(const KI& k, const NI& n) const {
        return k.ok && n.ok ? w[((int64_t)k.tap * g.cin + n.i) * g.cout + k.ch] : 0.0f;
    }
    HD bool vec_a() const { return g.cout % 4 == 0 && aligned16(dy); }
    HD bool vec_b() const { return g.cout % 4 == 0 && aligned16(w); }
    HD F4 a4(const MI& m, const KI& k) const { return (m.valid >> k.bit) & 1u ? load4(dy + m.base + k.off) : zero4(); }
    // along k: the channels of one tap
    HD F4 b4(const KI& k, const NI& n) const {
        return k.ok && n.ok ? load4(w + ((int64_t)k.tap * g.cin + n.i) * g.cout + k.ch) : zero4();
    }
    DEV void store(const MI& m, const NI& n, float v) const {
        const int64_t at = m.p * g.cin + n.i;
        dx[at] = out.finish(dx, at, v);
    }
    DEV void store2(const MI& m, const NI& n, const NI&, float v0, float v1) const {
        const int64_t at = m.p * g.cin + n.i;
        if (out.x || out.accumulate) v0 = out.finish(dx, at, v0), v1 = out.finish(dx, at + 1, v1);
        put2(dx + at, v0, v1);
    }
};

// The data gradient of a strided convolution whose kernel the stride divides (the 4 × 4 / 2
// downsampling), one phase at a time: input pixels (y, x) with y ≡ py, x ≡ px (mod s) receive
// dY only through taps ky ≡ py + pad, kx ≡ px + pad (mod s) — (k / s)² of the k² taps, which
// BwdData runs all, masked. A phase's rows are its pixels, its K = (jy, jx, co) for taps
// ky = ky0 + s·jy, kx = kx0 + s·jx; output row (y + pad − ky) / s = ty0 − jy.
struct Phase {
    int py, px, ky0, kx0, hy, wx, kk;
    FastDiv by_kk, by_wx, by_hwx;
};
HD Phase phase(const Geom& g, int index) {
    const int py = index / g.stride, px = index % g.stride, kk = g.k / g.stride;
    const int hy = (g.h - py + g.stride - 1) / g.stride, wx = (g.w - px + g.stride - 1) / g.stride;
    return Phase{py, px, (py + g.pad) % g.stride, (px + g.pad) % g.stride, hy, wx, kk,
                 fast_div(kk), fast_div(wx), fast_div((uint32_t)hy * wx)};
}

struct BwdDataPhased : BwdData {
    Phase ph;
    // row r of the phase: its pixel (index p in dX), the window of dY it reads
    HD MI mi(int64_t r, int64_t end) const {
        const uint32_t img = ph.by_hwx.div((uint32_t)r), rr = (uint32_t)r - img * ph.by_hwx.d, yy = ph.by_wx.div(rr);
        const int y = ph.py + g.stride * (int)yy, x = ph.px + g.stride * (int)(rr - yy * ph.wx);
        const int ty0 = (y + g.pad - ph.ky0) / g.stride, tx0 = (x + g.pad - ph.kx0) / g.stride;
        uint32_t rows = 0, cols = 0;
        for (int j = 0; j < ph.kk; ++j) {
            if (ty0 - j >= 0 && ty0 - j < g.oh) rows |= 1u << j;
            if (tx0 - j >= 0 && tx0 - j < g.ow) cols |= 1u << j;
        }
        const bool ok = r < end;
        const int64_t base = (((int64_t)img * g.oh + ty0) * g.ow + tx0) * g.cout;
        return Window{((int64_t)img * g.h + y) * g.w + x, base, ok ? tap_mask(ph.kk, rows, cols) : 0u, ok};
    }
    // (jy, jx, co): `tap` the full kernel's tap (the weights' index), `bit` the phase's
    HD KI ki(int64_t t, int64_t end) const {
        const uint32_t tp = g.by_cout.div((uint32_t)t), jy = ph.by_kk.div(tp);
        const int co = (int)((uint32_t)t - tp * g.cout), jx = (int)(tp - jy * ph.kk);
        const int tap = (ph.ky0 + g.stride * (int)jy) * g.k + ph.kx0 + g.stride * jx;
        const bool ok = t < end;
        return Tap{t, co - ((int)jy * g.ow + jx) * g.cout, co, tap, ok ? (int)tp : 31, ok};
    }
};

// dW += windowᵀ · dY over this split's output pixels: M = (tap, ci), K = output pixels, N = Cout
struct BwdWeight {
    static constexpr bool A_K_FAST = false, B_N_FAST = true;
    using MI = Tap;
    using KI = Window;
    using NI = Plain;
    const float *x, *dy;
    float* dw;
    Geom g;
    // the bias gradient Σ_k B[k][n] (dY's column sums), added by the wide bodies' first row
    // of blocks from the B values they stage anyway (null: not asked; zeroed first)
    float* db;
    HD MI mi(int64_t m, int64_t end) const { return x_tap(g, m, end); }
    HD KI ki(int64_t k, int64_t end) const { return out_pixel(g, k, end); }
    HD NI ni(int64_t n, int64_t end) const { return plain(n, end); }
    HD float a(const MI& m, const KI& k) const { return masked(x, k, m); }
    HD float b(const KI& k, const NI& n) const { return k.ok && n.ok ? dy[k.p * g.cout + n.i] : 0.0f; }
    HD bool vec_a() const { return g.cin % 4 == 0 && aligned16(x); }
    HD bool vec_b() const { return g.cout % 4 == 0 && aligned16(dy); }
    // along m: four channels of one tap
    HD F4 a4(const MI& m, const KI& k) const { return (k.valid >> m.bit) & 1u ? load4(x + k.base + m.off) : zero4(); }
    HD F4 b4(const KI& k, const NI& n) const { return k.ok && n.ok ? load4(dy + k.p * g.cout + n.i) : zero4(); }
    DEV void store(const MI& m, const NI& n, float v) const { atomicAdd(&dw[m.t * g.cout + n.i], v); }
    DEV void store2(const MI& m, const NI& n0, const NI& n1, float v0, float v1) const {
        store(m, n0, v0);
        store(m, n1, v1);
    }
};

// Policies whose B column sums are a result too (BwdWeight's db).
template <class Op>
struct SumsB {
    static constexpr bool value = false;
};
template <>
struct SumsB<BwdWeight> {
    static constexpr bool value = true;
};

// A column (q, co) of the transposed conv's GEMM, q = ky·2 + kx.
struct UpCol {
    int64_t n;
    int ky, kx, co;
    bool ok;
};
HD UpCol up_col(const Geom& g, int64_t n, int64_t end) {
    const uint32_t q = g.by_cout.div((uint32_t)n);
    return UpCol{n, (int)(q / 2), (int)(q % 2), (int)((uint32_t)n - q * g.cout), n < end};
}

// the output element that input pixel p and column (q, co) of the transposed conv address
HD int64_t up_index(const Geom& g, const Pixel& p, int ky, int kx, int co) {
    return (((int64_t)p.img * 2 * g.h + 2 * p.y + ky) * 2 * g.w + 2 * p.x + kx) * g.cout + co;
}

// 2×2 stride-2 transposed conv: M = input pixels, K = Cin, N = (q, Cout), scattered + bias
struct UpFwd {
    static constexpr bool A_K_FAST = true, B_N_FAST = true;
    using MI = Pixel;
    using KI = Plain;
    using NI = UpCol;
    const float *x, *w, *bias;
    float* y;
    Geom g;
    HD MI mi(int64_t m, int64_t end) const { return pixel(g, m, end); }
    HD KI ki(int64_t k, int64_t end) const { return plain(k, end); }
    HD NI ni(int64_t n, int64_t end) const { return up_col(g, n, end); }
    HD float a(const MI& m, const KI& k) const { return m.ok && k.ok ? x[m.p * g.cin + k.i] : 0.0f; }
    HD float b(const KI& k, const NI& n) const { return k.ok && n.ok ? w[k.i * 4 * g.cout + n.n] : 0.0f; }
    HD bool vec_a() const { return g.cin % 4 == 0 && aligned16(x); }
    HD bool vec_b() const { return g.cout % 4 == 0 && aligned16(w); }
    HD F4 a4(const MI& m, const KI& k) const { return m.ok && k.ok ? load4(x + m.p * g.cin + k.i) : zero4(); }
    HD F4 b4(const KI& k, const NI& n) const { return k.ok && n.ok ? load4(w + k.i * 4 * g.cout + n.n) : zero4(); }
    DEV void store(const MI& m, const NI& n, float v) const { y[up_index(g, m, n.ky, n.kx, n.co)] = v + bias[n.co]; }
    // columns (q, co), (q, co + 1): one q when cout is even
    DEV void store2(const MI& m, const NI& n, const NI&, float v0, float v1) const {
        const F2 b = load2(bias + n.co);
        put2(y + up_index(g, m, n.ky, n.kx, n.co), v0 + b.x, v1 + b.y);
    }
};

// its dX: M = input pixels, K = (q, Cout) gathered from dY, N = Cin
struct UpBwdData {
    static constexpr bool A_K_FAST = true, B_N_FAST = false;
    using MI = Pixel;
    using KI = UpCol;
    using NI = Plain;
    const float *dy, *w;
    float* dx;
    Geom g;
    HD MI mi(int64_t m, int64_t end) const { return pixel(g, m, end); }
    HD KI ki(int64_t k, int64_t end) const { return up_col(g, k, end); }
    HD NI ni(int64_t n, int64_t end) const { return plain(n, end); }
    HD float a(const MI& m, const KI& k) const { return m.ok && k.ok ? dy[up_index(g, m, k.ky, k.kx, k.co)] : 0.0f; }
    HD float b(const KI& k, const NI& n) const { return k.ok && n.ok ? w[n.i * 4 * g.cout + k.n] : 0.0f; }
    HD bool vec_a() const { return g.cout % 4 == 0 && aligned16(dy); }
    HD bool vec_b() const { return g.cout % 4 == 0 && aligned16(w); }
    HD F4 a4(const MI& m, const KI& k) const {
        return m.ok && k.ok ? load4(dy + up_index(g, m, k.ky, k.kx, k.co)) : zero4();
    }
    // along k
    HD F4 b4(const KI& k, const NI& n) const { return k.ok && n.ok ? load4(w + n.i * 4 * g.cout + k.n) : zero4(); }
    DEV void store(const MI& m, const NI& n, float v) const { dx[m.p * g.cin + n.i] = v; }
    DEV void store2(const MI& m, const NI& n, const NI&, float v0, float v1) const {
        put2(dx + m.p * g.cin + n.i, v0, v1);
    }
};

// its dW += Xᵀ · gathered dY: M = Cin, K = input pixels, N = (q, Cout)
struct UpBwdWeight {
    static constexpr bool A_K_FAST = false, B_N_FAST = true;
    using MI = Plain;
    using KI = Pixel;
    using NI = UpCol;
    const float *x, *dy;
    float* dw;
    Geom g;
    HD MI mi(int64_t m, int64_t end) const { return plain(m, end); }
    HD KI ki(int64_t k, int64_t end) const { return pixel(g, k, end); }
    HD NI ni(int64_t n, int64_t end) const { return up_col(g, n, end); }
    HD float a(const MI& m, const KI& k) const { return m.ok && k.ok ? x[k.p * g.cin + m.i] : 0.0f; }
    HD float b(const KI& k, const NI& n) const { return k.ok && n.ok ? dy[up_index(g, k, n.ky, n.kx, n.co)] : 0.0f; }
    HD bool vec_a() const { return g.cin % 4 == 0 && aligned16(x); }
    HD bool vec_b() const { return g.cout % 4 == 0 && aligned16(dy); }
    // along m
    HD F4 a4(const MI& m, const KI& k) const { return m.ok && k.ok ? load4(x + k.p * g.cin + m.i) : zero4(); }
    HD F4 b4(const KI& k, const NI& n) const {
        return k.ok && n.ok ? load4(dy + up_index(g, k, n.ky, n.kx, n.co)) : zero4();
    }
    DEV void store(const MI& m, const NI& n, float v) const { atomicAdd(&dw[m.i * 4 * g.cout + n.n], v); }
    DEV void store2(const MI& m, const NI& n0, const NI& n1, float v0, float v1) const {
        store(m, n0, v0);
        store(m, n1, v1);
    }
};

// C = A · B (+ bias) for small dense operands given by strides (the GCN's layers):
// A(m, k) = A[m·sam + k·sak], B(k, n) = B[k·sbk + n·sbn]; with split-K the splits add
// atomically into a zeroed C and only split 0 adds the bias.
struct Dense {
    static constexpr bool A_K_FAST = true, B_N_FAST = true;
    using MI = Plain;
    using KI = Plain;
    using NI = Plain;
    const float *A, *B, *bias;
    float* C;
    int64_t sam, sak, sbk, sbn;
    int ldc, atomic;
    HD MI mi(int64_t m, int64_t end) const { return plain(m, end); }
    HD KI ki(int64_t k, int64_t end) const { return plain(k, end); }
    HD NI ni(int64_t n, int64_t end) const { return plain(n, end); }
    HD float a(const MI& m, const KI& k) const { return m.ok && k.ok ? A[m.i * sam + k.i * sak] : 0.0f; }
    HD float b(const KI& k, const NI& n) const { return k.ok && n.ok ? B[k.i * sbk + n.i * sbn] : 0.0f; }
    HD bool vec_a() const { return false; }
    HD bool vec_b() const { return false; }
    HD F4 a4(const MI&, const KI&) const { return zero4(); }
    HD F4 b4(const KI&, const NI&) const { return zero4(); }
    DEV void store(const MI& m, const NI& n, float v) const {
        if (bias && SPLIT_INDEX == 0) v += bias[n.i];
        if (atomic) atomicAdd(&C[m.i * ldc + n.i], v);
        else C[m.i * ldc + n.i] = v;
    }
};

}  // namespace conv
