// Convolutions on half-precision storage (inference: the network's activations in f16, as the
// reference's autocast keeps them): x, the residual and y are f16 NHWC, the weights a f16 copy
// packed for the layer ([K][np] with np the columns rounded up to 8, zero past N), bias f32,
// accumulation f32 (mma.sync m16n8k16).
//
// Where the f32-storage kernels (conv.cu) load each element into registers, round it and store
// it into shared memory, f16 storage lets the copy go straight from global to shared memory in
// 16-byte pieces (cp.async, zero-filled where a tap falls into the padding), three K steps in
// flight, and the fragments come out of shared memory with ldmatrix. A K step is one tap × 32
// channels, so layers run here where cin divides by 32 (every layer of the U-Net but the
// image's); the forward pass also where it divides by 4 (`FWD4`: K steps across taps, 8-byte
// copies; the low-rank head's 20 channels), and the host converts around the f32 kernels
// elsewhere.
//
// Block tile 128 × 64 × 32 (or 128 × 32 × 32 for layers of at most 32 output channels, where
// the 64-column tile would multiply zeros for half its MMAs), 8 warps as 4 (m) × 2 (n), each
// warp 32 × 32 (32 × 16) = 2 × 4 (2 × 2) MMA tiles.
// Shared rows are XOR-swizzled by 16-byte chunk so that the eight rows an ldmatrix reads at
// once sit in eight different bank groups.

#include <cstdint>
#include <type_traits>

#include "conv_ops.cuh"
#include "half.cuh"
#include "mma.cuh"

namespace h16 {

constexpr int BM = 128, BN = 64, BK = 32, STAGES = 3, THREADS = 256;

#ifdef __CUDACC__
DEV uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global → shared, bypassing L1; `full` false: 16 zero bytes, nothing read
DEV void cp_async16(void* dst, const void* src, bool full) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(full ? 16 : 0)
                 : "memory");
}
// 8 bytes (four channels) global → shared (cp.async.cg takes only 16); the same zero fill
DEV void cp_async8(void* dst, const void* src, bool full) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(full ? 8 : 0)
                 : "memory");
}
DEV void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// wait until at most N of this thread's committed groups are still in flight
template <int N>
DEV void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// four 8 × 8 b16 matrices, rows addressed by lanes 8i..8i+7 for matrix i; lane l receives
// row l / 4, columns 2(l % 4), +1 of each (transposed: column l / 4, rows 2(l % 4), +1)
DEV void ldsm_x4(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}
DEV void ldsm_x4_t(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

#endif  // on the host, tests/conv_kernels_emu.cpp defines these before including this file

// B 16 × 16 of [k][n] rows, transposed: k rows 0–7, 8–15 at n columns 0–7, then 8–15 — b0, b1
// of two 8-column MMA tiles (b[0], b[1]). p: this lane's row address, as ldsm_x4_t takes it.
DEV void ldsm_b2(uint32_t (*b)[2], const void* p) {
    uint32_t r[4];
    ldsm_x4_t(r, p);
    b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

// Element (r, chunk c) of a shared tile of 16-byte chunks: the chunk XOR-ed with bits of the
// row so that the 8 consecutive rows an ldmatrix reads at one logical chunk land in 8 different
// 16-byte bank groups (rows of 4 chunks, two to 128 bytes: bits 1–2 of the row; rows of 8 or
// 16 chunks: bits 0–2).
template <int CHUNKS>
DEV int swizzled(int r, int c) {
    static_assert(CHUNKS == 4 || CHUNKS == 8 || CHUNKS == 16, "rows of 64, 128 or 256 bytes");
    return (r * CHUNKS + (CHUNKS >= 8 ? c ^ (r & 7) : c ^ ((r >> 1) & 3))) * 8;
}
DEV int a_at(int r, int c) { return swizzled<BK / 8>(r, c); }

// Epilogue of the convolution: y = leaky?(acc + bias) + residual, rounded to f16.
struct FwdOut {
    static constexpr bool STATS = false;  // no statistics of the output (FwdStatsOut)
    const float* bias;
    const uint16_t* res;
    uint16_t* y;
    int cout, leaky;
    DEV float finish(int64_t at, int n, float v) const {
        if (bias) v += bias[n];
        if (leaky) v = v > 0.0f ? v : conv::SLOPE * v;
        if (res) v += h2f(res[at]);
        return v;
    }
    // columns n .. n + 7 of a row, element `at` = m·cout + n (cout and n multiples of 8): 16-byte
    // loads and store
    DEV void store8(int64_t at, int n, const float* v) const {
        float r[8] = {}, b[8] = {}, o[8];
        if (res) h16::ld8(res + at, r);
        if (bias) h16::ld8(bias + n, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float t = v[j];
            if (bias) t += b[j];
            if (leaky) t = t > 0.0f ? t : conv::SLOPE * t;
            if (res) t += r[j];
            o[j] = t;
        }
        h16::st8(y + at, o);
    }
    // whether GEMM rows go out eight columns at a time (store_row8), and row m's columns n ..
    DEV bool rows8() const { return cout % 8 == 0; }
    DEV void store_row8(int64_t m, int n, const float* v) const { store8(m * cout + n, n, v); }
    // columns n and n + 1 (n + 1 < N where `pair`) of GEMM row m: one 32-bit store where the
    // pair is aligned (even cout)
    DEV void store(int64_t m, int n, bool pair, float v0, float v1) const {
        const int64_t at = m * cout + n;
        const uint16_t h0 = f2h(finish(at, n, v0));
        if (pair && (at & 1) == 0) {
            *reinterpret_cast<uint32_t*>(y + at) = (uint32_t)h0 | (uint32_t)f2h(finish(at + 1, n + 1, v1)) << 16;
            return;
        }
        y[at] = h0;
        if (pair) y[at + 1] = f2h(finish(at + 1, n + 1, v1));
    }
};

// FwdOut (bias only: no LeakyReLU, no residual) with half instance norm's statistics of what it
// stores: per (image, channel < cn) the sums of d = v − b and d² over the image's pixels (v the
// f16 value stored, b the channel's bias: a shift known to every block, of the channel's own
// scale, which keeps the variance's difference s1/hw − (s0/hw)² from cancelling unless the
// mean sits many σ from the bias), added into s0, s1 (f64, zeroed; images × cn each). The halo
// forward (`halo3`'s store_tile) sums a warp's 32 pixels of a column in f32, the tile's eight
// warps in f64, and adds once per (tile, channel, moment): the pass that read c1 back for them
// (pixel_sums) goes away.
struct FwdStatsOut : FwdOut {
    static constexpr bool STATS = true;
    double *s0, *s1;
    int cn;
    // d and d² of columns n .. n + 7 (as store8 rounds them) onto p0, p1
    DEV void sums8(int n, const float* v, float* p0, float* p1) const {
        float b[8] = {};
        if (bias) h16::ld8(bias + n, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float d = h2f(f2h(v[j] + b[j])) - b[j];
            p0[j] += d;
            p1[j] = fmaf(d, d, p1[j]);
        }
    }
};

// Epilogue of the 2 × 2 / 2 transposed convolution: GEMM row m is input pixel (img, y, x),
// column n = (ky·2 + kx)·cout + co lands on output pixel (2y + ky, 2x + kx), channel co.
struct UpOut {
    const float* bias;
    uint16_t* y;
    int h, w, cout;
    conv::FastDiv by_cout, by_w, by_hw;
    DEV int64_t at(int64_t m, int n) const {
        const uint32_t img = by_hw.div((uint32_t)m), r = (uint32_t)m - img * by_hw.d, yy = by_w.div(r);
        const uint32_t tap = by_cout.div((uint32_t)n), co = (uint32_t)n - tap * by_cout.d;
        const int64_t oy = 2 * yy + (tap >> 1), ox = 2 * (r - yy * w) + (tap & 1);
        return (((int64_t)img * 2 * h + oy) * 2 * w + ox) * cout + co;
    }
    // with cout a multiple of 8, columns n .. n + 7 (n a multiple of 8) are eight channels of one
    // output pixel: one 16-byte store
    DEV bool rows8() const { return cout % 8 == 0; }
    DEV void store_row8(int64_t m, int n, const float* v) const {
        const int co = n - (int)by_cout.div((uint32_t)n) * cout;
        float b[8] = {}, o[8];
        if (bias) h16::ld8(bias + co, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = v[j] + b[j];
        h16::st8(y + at(m, n), o);
    }
    // with an even cout, n and n + 1 (n even) are channels co, co + 1 of one output pixel: one
    // aligned 32-bit store
    DEV void store(int64_t m, int n, bool pair, float v0, float v1) const {
        const int co = n % cout;
        const int64_t a = at(m, n);
        const uint16_t h0 = f2h(v0 + (bias ? bias[co] : 0.0f));
        if (pair && cout % 2 == 0) {
            const uint16_t h1 = f2h(v1 + (bias ? bias[co + 1] : 0.0f));
            *reinterpret_cast<uint32_t*>(y + a) = (uint32_t)h0 | (uint32_t)h1 << 16;
            return;
        }
        y[a] = h0;
        if (pair) y[at(m, n + 1)] = f2h(v1 + (bias ? bias[(n + 1) % cout] : 0.0f));
    }
};

// Epilogue of the data gradient: dx = [dx +] leaky'(x) · Σ (x the LeakyReLU output the layer
// read, where set; the old dx added where `accumulate`), rounded to f16 — conv_ops.cuh DxOut's
// arithmetic. Where dx2 is set the gradient of a concatenation [a | b] goes out split: columns
// below ca into dx (ca apart), the rest into dx2 (cin − ca apart) — the decoder's d_up and
// d_skip, which no split pass then copies apart (x null and no accumulation there: the host's).
struct DxOutH {
    static constexpr bool STATS = false;
    const uint16_t* x;
    uint16_t* dx;
    int cin, accumulate;
    uint16_t* dx2 = nullptr;
    int ca = 0;
    // the tensor column n of row m lands in, and its element there
    DEV uint16_t* part(int64_t m, int n, int64_t* at) const {
        if (dx2 && n >= ca) {
            *at = m * (cin - ca) + n - ca;
            return dx2;
        }
        *at = m * (dx2 ? ca : cin) + n;
        return dx;
    }
    DEV float finish(int64_t at, float v) const {
        if (x && !(h2f(x[at]) > 0.0f)) v *= conv::SLOPE;
        return accumulate ? h2f(dx[at]) + v : v;
    }
    // columns n .. n + 7 of row m (cin, n and ca multiples of 8): 16-byte loads and store
    DEV bool rows8() const { return cin % 8 == 0; }
    DEV void store_row8(int64_t m, int n, const float* v) const {
        int64_t at;
        uint16_t* d = part(m, n, &at);
        float xv[8] = {}, old[8] = {}, o[8];
        if (x) h16::ld8(x + at, xv);
        if (accumulate) h16::ld8(d + at, old);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float t = v[j];
            if (x && !(xv[j] > 0.0f)) t *= conv::SLOPE;
            if (accumulate) t += old[j];
            o[j] = t;
        }
        h16::st8(d + at, o);
    }
    // columns n, n + 1 (where `pair`); two-part outputs only through store_row8 (the host's)
    DEV void store(int64_t m, int n, bool pair, float v0, float v1) const {
        const int64_t at = m * cin + n;
        const uint16_t h0 = f2h(finish(at, v0));
        if (pair && (at & 1) == 0) {
            *reinterpret_cast<uint32_t*>(dx + at) = (uint32_t)h0 | (uint32_t)f2h(finish(at + 1, v1)) << 16;
            return;
        }
        dx[at] = h0;
        if (pair) dx[at + 1] = f2h(finish(at + 1, v1));
    }
};

// The pipelined main loop of both GEMMs: `steps` K steps, each copied by copy_step(slot) into
// one of STAGES slots of As and Bs as one cp.async group, then consumed by this warp's MMAs into
// acc (2 × JN tiles of 16 × 8 at columns wn..): A's fragments by a_frags(A tile, kk, a), B's from
// its [k][n] rows, transposed. Every copy has landed when it returns.
template <int TBN, int ASZ, class Copy, class AFrags>
DEV void mainloop(const uint16_t (&As)[STAGES][ASZ], const uint16_t (&Bs)[STAGES][BK * TBN], int steps,
                  Copy& copy_step, AFrags a_frags, int wn, float (&acc)[2][TBN / 16][4]) {
    constexpr int BCH = TBN / 8, JN = TBN / 16;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < JN; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) copy_step(s);
        cp_commit();
    }
    for (int s = 0; s < steps; ++s) {
        // step s has landed (at most STAGES − 2 later groups in flight) for every thread, and
        // every warp is done with step s − 1, whose slot takes step s + STAGES − 1
        cp_wait<STAGES - 2>();
        __syncthreads();
        if (s + STAGES - 1 < steps) copy_step((s + STAGES - 1) % STAGES);
        cp_commit();
        const uint16_t* as = As[s % STAGES];
        const uint16_t* bs = Bs[s % STAGES];
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t a[2][4], b[JN][2];
            a_frags(as, kk, a);
            // B 16 × 16 ([k][n] rows, transposed): k rows 0–7, 8–15 at n chunk j, then j + 1:
            // b0, b1 of two 8-column MMA tiles
#pragma unroll
            for (int j = 0; j < JN / 2; ++j) {
                const int k = kk + lane % 8 + 8 * ((lane / 8) & 1);
                ldsm_b2(b + 2 * j, bs + swizzled<BCH>(k, (wn + 16 * j) / 8 + lane / 16));
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < JN; ++j) conv::mma_f16(acc[i][j], a[i], b[j]);
        }
    }
    cp_wait<0>();
}

// What the GEMM gathers: the forward pass's windows of x, the data gradient's windows of dY for
// a stride-1 layer (a tap's row of dY starts (ky·ow + kx)·cout before the pixel's window base:
// conv_ops.cuh grad_pixel), or those of one phase of a strided layer whose kernel the stride
// divides (conv_ops.cuh BwdDataPhased: the phase's (k / s)² taps; GEMM row m is the phase's
// m-th pixel, stored at its own index). FWD4 is the forward pass of a layer whose cin divides
// by 4 but not by 32 (the low-rank head's 20 channels): K = k²·cin runs on unbroken, a K step
// spans taps, and each 8-byte piece of a row (four channels of one tap) finds its own tap.
// FWD_CAT is the forward pass of a layer reading the concatenation [x | x2] of two tensors
// (the decoder's upsampled and skip features; ca and cin − ca channels, both multiples of 32)
// without it being written: each K step lies in one of them.
enum Mode { FWD, DX, DX_PHASED, FWD4, FWD_CAT };

// The tap and first channel of one four-channel piece of K in FWD4, stepped along K.
struct Piece {
    int tap, ky, kx, c4;  // c4: the piece's index within its tap (channels 4·c4 ..)
    // move on by `d` pieces (cq pieces to a tap, k taps to a row of the kernel)
    DEV void advance(int d, int cq, int k) {
        c4 += d;
        while (c4 >= cq) {
            c4 -= cq;
            ++tap;
            if (++kx == k) kx = 0, ++ky;
        }
    }
};

// C = im2col(x) · W over the layer's geometry `g` (M = output pixels, K = k²·cin, N columns of
// `wt`, np apart), each result through `out`; blocks of BM × TBN. In the data-gradient modes x
// is dY, M the (phase's) input pixels, K = taps·cout, `wt` the weights packed [tap][co][ci].
template <int TBN, Mode MODE = FWD, class Out>
DEV void gemm(const uint16_t* x, const uint16_t* wt, int np, const conv::Geom& g, int64_t M, int N, const Out& out,
              const uint16_t* x2 = nullptr, int ca = 0) {
    constexpr bool DX_ROWS = MODE == DX || MODE == DX_PHASED;
    static_assert(TBN == 64 || TBN == 32, "64- or 32-column tiles");
    constexpr int BCH = TBN / 8, JN = TBN / 16;  // B's chunks per row; a warp's 8-column MMA tiles
    alignas(128) __shared__ uint16_t As[STAGES][BM * BK];
    alignas(128) __shared__ uint16_t Bs[STAGES][BK * TBN];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t m0 = (int64_t)blockIdx.x * BM;
    const int n0 = blockIdx.y * TBN;

    // This thread copies 16 bytes of A rows tid / 4 and tid / 4 + 64 (chunk tid % 4) and of
    // B row tid / BCH (chunk tid % BCH; the first BK·BCH threads) in every step: their windows
    // decomposed once.
    const int ac = tid % 4, bk = tid / BCH, bc = tid % BCH;
    conv::BwdDataPhased phased{};  // its row decomposition only (MODE DX_PHASED)
    phased.g = g;
    if (MODE == DX_PHASED) phased.ph = conv::phase(g, (int)blockIdx.z);
    auto row = [&](int64_t m) {
        return MODE == DX_PHASED ? phased.mi(m, M) : DX_ROWS ? conv::grad_pixel(g, m, M) : conv::out_pixel(g, m, M);
    };
    conv::Window rows[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) rows[i] = row(m0 + tid / 4 + 64 * i);
    const int C = DX_ROWS ? g.cout : g.cin;              // channels of the gathered tensor
    const int kt = MODE == DX_PHASED ? phased.ph.kk : g.k;  // taps per side
    const bool b_copies = tid < BK * BCH, b_ok = n0 + 8 * bc < np;
    const int K4 = kt * kt * C;  // FWD4: K, unbroken
    const int steps = MODE == FWD4 ? (K4 + BK - 1) / BK : kt * kt * (C / BK);
    int lky = 0, lkx = 0, lc = 0;  // tap and first channel of the next step to copy
    // FWD4: this thread's pieces 2·ac and 2·ac + 1 of a K step's eight, and the step's first K row
    Piece pc[2] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    int lk4 = 0;
    if (MODE == FWD4)
        for (int j = 0; j < 2; ++j) pc[j].advance(2 * ac + j, C / 4, kt);
    auto copy_step4 = [&](int slot) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = tid / 4 + 64 * i;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const Piece& q = pc[j];
                const bool ok = q.tap < kt * kt && ((rows[i].valid >> q.tap) & 1u);
                const int off = (q.ky * g.w + q.kx) * C + 4 * q.c4;
                cp_async8(&As[slot][a_at(r, ac) + 4 * j], ok ? x + rows[i].base + off : x, ok);
            }
        }
        if (b_copies) {
            const bool ok = b_ok && lk4 + bk < K4;
            cp_async16(&Bs[slot][swizzled<BCH>(bk, bc)], ok ? wt + (int64_t)(lk4 + bk) * np + n0 + 8 * bc : wt, ok);
        }
        lk4 += BK;
        for (int j = 0; j < 2; ++j) pc[j].advance(BK / 4, C / 4, kt);
    };
    // FWD_CAT: the rows' window origins as pixel indices (the bases are pixel · cin)
    int64_t bpx[2] = {0, 0};
    if (MODE == FWD_CAT)
        for (int i = 0; i < 2; ++i) bpx[i] = rows[i].base / C;
    auto copy_step = [&](int slot) {
        if (MODE == FWD4) return copy_step4(slot);
        // the tap's bit in the rows' masks, and its index in the weights
        const int bit = lky * kt + lkx;
        const int tap = MODE == DX_PHASED ? (phased.ph.ky0 + g.stride * lky) * g.k + phased.ph.kx0 + g.stride * lkx : bit;
        // FWD_CAT: the step lies in one part, read with that part's channel count
        const bool second = MODE == FWD_CAT && lc >= ca;
        const uint16_t* src = second ? x2 : x;
        const int cs = MODE != FWD_CAT ? C : second ? C - ca : ca;
        const int off = (DX_ROWS ? -(lky * g.ow + lkx) : lky * g.w + lkx) * cs + (second ? lc - ca : lc) + 8 * ac;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = tid / 4 + 64 * i;
            const bool ok = (rows[i].valid >> bit) & 1u;
            const int64_t base = MODE == FWD_CAT ? bpx[i] * cs : rows[i].base;
            cp_async16(&As[slot][a_at(r, ac)], ok ? src + base + off : x, ok);
        }
        if (b_copies) {
            const uint16_t* w = wt + ((int64_t)tap * C + lc + bk) * np + n0 + 8 * bc;
            cp_async16(&Bs[slot][swizzled<BCH>(bk, bc)], b_ok ? w : wt, b_ok);
        }
        lc += BK;
        if (lc == C) {
            lc = 0;
            if (++lkx == kt) lkx = 0, ++lky;
        }
    };

    const int wm = (warp % 4) * 32, wn = (warp / 4) * (TBN / 2);
    float acc[2][JN][4];
    // A 16 × 16: lanes 0–15 address rows 0–15 at k chunk kk/8, lanes 16–31 the next chunk:
    // registers a0..a3 = (rows 0–7, 8–15) × (k 0–7, 8–15), mma's A fragment
    auto a_frags = [&](const uint16_t* as, int kk, uint32_t (&a)[2][4]) {
#pragma unroll
        for (int i = 0; i < 2; ++i) ldsm_x4(a[i], as + a_at(wm + 16 * i + lane % 16, kk / 8 + lane / 16));
    };
    mainloop<TBN>(As, Bs, steps, copy_step, a_frags, wn, acc);

    // C fragments: c0, c1 at (row g, columns 2t, 2t + 1), c2, c3 at row g + 8
    const int gq = lane / 4, tq = lane % 4;
    if (out.rows8()) {
        // through shared memory, eight columns a thread: whole 16-byte runs of a row's columns
        // (the fragments' pairs, four bytes each, left the halo kernels' stores at 36 % more
        // memory sectors than needed on the H200). In two passes of 64 rows — the MMA rows i of
        // every warp — so that a pass's f32 tile fits where A was staged.
        constexpr int CS = TBN + 8;  // floats a staged row takes (st2: conflict-free half-warps)
        static_assert(64 * CS * 4 <= sizeof(As), "a pass of the f32 tile fits A's slots");
        float* cs = reinterpret_cast<float*>(&As[0][0]);
        const int rq = tid % (TBN / 8), rr = tid / (TBN / 8);  // this thread's column run, first row
        constexpr int RSTEP = THREADS / (TBN / 8);              // rows apart: 32 (TBN 64) or 64
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            __syncthreads();  // every warp is done with A's slots (i = 0) or the last pass's rows
#pragma unroll
            for (int j = 0; j < JN; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    st2(cs + ((warp % 4) * 16 + gq + 8 * h) * CS + wn + 8 * j + 2 * tq, acc[i][j][2 * h],
                        acc[i][j][2 * h + 1]);
                }
            __syncthreads();
#pragma unroll
            for (int r = rr; r < 64; r += RSTEP) {
                // staged row r: the MMA row i of warp r / 16's 32 rows
                const int64_t m = m0 + 32 * (r / 16) + 16 * i + r % 16;
                const int n = n0 + 8 * rq;
                if (m >= M || n >= N) continue;
                const int64_t at = MODE == DX_PHASED ? phased.mi(m, M).p : m;
                H16_ACCESS(cs + r * CS + 8 * rq, 32, false);  // the emulator's hazard check
                out.store_row8(at, n, cs + r * CS + 8 * rq);
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < JN; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int64_t m = m0 + wm + 16 * i + gq + 8 * h;
                const int n = n0 + wn + 8 * j + 2 * tq;
                if (m >= M || n >= N) continue;
                // a phase's row is stored at its pixel's index
                const int64_t at = MODE == DX_PHASED ? phased.mi(m, M).p : m;
                out.store(at, n, n + 1 < N, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
}

// dW += im2col(x)ᵀ · dY over output pixels [k0, k1) (a K split; f32 atomics into dw, zeroed
// by the host): M = (tap, ci) rows of dW, K = output pixels, N = cout. Both operands are f16
// rows along their contiguous index — A's along m (a pixel's channels at one tap), B's along n
// — so both tiles are stored [k][·] and both fragments come out of ldmatrix transposed. A K
// step is 32 output pixels; each thread decomposes its two pixels' windows per step (A rows
// tid / 16 and + 16, chunk tid % 16: eight channels of one tap, cin a multiple of 8). With x2
// (ca > 0) x is the concatenation [x (ca channels) | x2] read in place: a thread's chunk is
// fixed for the whole reduction, and so is the part it lies in (ca a multiple of 8).
template <int TBN>
DEV void gemm_dw(const uint16_t* x, const uint16_t* dy, float* dw, const conv::Geom& g, int64_t k0, int64_t k1,
                 const uint16_t* x2 = nullptr, int ca = 0) {
    static_assert(TBN == 64 || TBN == 32, "64- or 32-column tiles");
    constexpr int BCH = TBN / 8, JN = TBN / 16, ACH = BM / 8;
    alignas(128) __shared__ uint16_t As[STAGES][BK * BM];
    alignas(128) __shared__ uint16_t Bs[STAGES][BK * TBN];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int M = g.k * g.k * g.cin, N = g.cout;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * TBN;

    // this thread's A chunk: rows (tap, ci .. ci + 7) of dW, fixed for the whole reduction
    const int ac = tid % ACH, ak = tid / ACH;
    const conv::Tap t = conv::x_tap(g, m0 + 8 * ac, M);
    // its part: the tensor, and the geometry whose cin the part's pixels are apart by
    const bool second = x2 && t.ch >= ca;
    const uint16_t* src = second ? x2 : x;
    conv::Geom gp = g;
    int off = t.off;
    if (x2) {
        gp.cin = second ? g.cin - ca : ca;
        const int ky = t.tap / g.k, kx = t.tap - ky * g.k;
        off = (ky * g.w + kx) * gp.cin + (second ? t.ch - ca : t.ch);
    }
    const int bk = tid / BCH, bc = tid % BCH;
    const bool b_copies = tid < BK * BCH, b_ok = n0 + 8 * bc < N;
    const int steps = (int)((k1 - k0 + BK - 1) / BK);
    int64_t lk = k0;  // first pixel of the next step to copy
    auto copy_step = [&](int slot) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = ak + (THREADS / ACH) * i;
            const conv::Window px = conv::out_pixel(gp, lk + r, k1);
            const bool ok = (px.valid >> t.bit) & 1u;
            cp_async16(&As[slot][swizzled<ACH>(r, ac)], ok ? src + px.base + off : x, ok);
        }
        if (b_copies) {
            const bool ok = b_ok && lk + bk < k1;
            cp_async16(&Bs[slot][swizzled<BCH>(bk, bc)], ok ? dy + (lk + bk) * N + n0 + 8 * bc : dy, ok);
        }
        lk += BK;
    };

    const int wm = (warp % 4) * 32, wn = (warp / 4) * (TBN / 2);
    float acc[2][JN][4];
    // A 16 × 16 from [k][m] rows, transposed: matrices (m 0–7, k 0–7), (m 8–15, k 0–7),
    // (m 0–7, k 8–15), (m 8–15, k 8–15) — lane l addresses k row l % 8 (+ 8 for the last two)
    // at m chunk + (l / 8) % 2: registers a0..a3, mma's A fragment
    auto a_frags = [&](const uint16_t* as, int kk, uint32_t (&a)[2][4]) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
            ldsm_x4_t(a[i], as + swizzled<ACH>(kk + lane % 8 + 8 * (lane / 16), (wm + 16 * i) / 8 + (lane / 8) % 2));
    };
    mainloop<TBN>(As, Bs, steps, copy_step, a_frags, wn, acc);
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < JN; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int m = m0 + wm + 16 * i + gq + (q >= 2 ? 8 : 0), n = n0 + wn + 8 * j + 2 * tq + (q & 1);
                if (m < M && n < N) atomicAdd(&dw[(int64_t)m * N + n], acc[i][j][q]);
            }
}

// The split of the reduction over `P` pixels that block z of `splits` takes: whole K steps.
DEV void dw_split(int64_t P, int splits, int z, int64_t* k0, int64_t* k1) {
    const int64_t steps = (P + BK - 1) / BK, per = (steps + splits - 1) / splits;
    *k0 = min(P, (int64_t)z * per * BK);
    *k1 = min(P, *k0 + per * BK);
}

// The layers' entry bodies (the emulator on the host calls these), on TBN-column tiles.
// the forward pass: MODE FWD, FWD4 (cin a multiple of 4, not of 32) or FWD_CAT (x2 the second
// part of the input, x its first ca channels)
template <int TBN, Mode MODE = FWD>
DEV void conv_fwd(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res, uint16_t* y,
                  int leaky, const conv::Geom& g, const uint16_t* x2 = nullptr, int ca = 0) {
    gemm<TBN, MODE>(x, wt, np, g, (int64_t)g.n * g.oh * g.ow, g.cout, FwdOut{bias, res, y, g.cout, leaky}, x2, ca);
}
// the data gradient of a stride-1 convolution from f16 dY and weights packed [tap][co][ci]
template <int TBN>
DEV void conv_dx(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx, int accumulate,
                 const conv::Geom& g) {
    gemm<TBN, DX>(dy, wt, np, g, (int64_t)g.n * g.h * g.w, g.cin, DxOutH{x, dx, g.cin, accumulate});
}
// the same for a strided layer whose kernel the stride divides, phase blockIdx.z (grid z: s²)
template <int TBN>
DEV void conv_dx_phased(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx,
                        int accumulate, const conv::Geom& g) {
    const conv::Phase ph = conv::phase(g, (int)blockIdx.z);
    const int64_t M = (int64_t)g.n * ph.hy * ph.wx;
    gemm<TBN, DX_PHASED>(dy, wt, np, g, M, g.cin, DxOutH{x, dx, g.cin, accumulate});
}
// the 2 × 2 / 2 transposed convolution as a 1 × 1 GEMM into 4·cout columns, scattered
DEV void up_fwd(const uint16_t* x, const uint16_t* wt, int np, const float* bias, uint16_t* y, int n, int h, int w,
                int cin, int cout) {
    const UpOut out{bias, y, h, w, cout, conv::fast_div(cout), conv::fast_div(w), conv::fast_div((uint32_t)h * w)};
    gemm<BN>(x, wt, np, conv::geom(n, h, w, cin, 4 * cout, 1, 1, 0), (int64_t)n * h * w, 4 * cout, out);
}

}  // namespace h16

#include "wgmma.cuh"
#include "conv_halo.cuh"
#include "conv_img.cuh"

#ifdef __CUDACC__
#define H16_LOOP(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// y = leaky?(conv(x) + bias) + res, f16 in and out; grid (⌈pixels / 128⌉, ⌈cout / 64⌉), or
// ⌈cout / 32⌉ for the narrow tile (`_h16n`, layers of at most 32 output channels); cin a
// multiple of 32, or of 4 (`fwd4_`); `fwd_cat_`: x the first ca channels of the input, x2 the
// rest (both multiples of 32; the other kernels ignore x2 and ca)
#define H16_CONV(NAME, MODE, TBN)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
        NAME(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res, uint16_t* y,   \
             int leaky, int n, int h, int w, int cin, int cout, int k, int stride, int pad, const uint16_t* x2,     \
             int ca) {                                                                                              \
        h16::conv_fwd<TBN, h16::MODE>(x, wt, np, bias, res, y, leaky, conv::geom(n, h, w, cin, cout, k, stride, pad), \
                                      x2, ca);                                                                     \
    }
H16_CONV(conv2d_fwd_h16, FWD, 64)
H16_CONV(conv2d_fwd_h16n, FWD, 32)
H16_CONV(conv2d_fwd4_h16, FWD4, 64)
H16_CONV(conv2d_fwd4_h16n, FWD4, 32)
H16_CONV(conv2d_fwd_cat_h16, FWD_CAT, 64)
H16_CONV(conv2d_fwd_cat_h16n, FWD_CAT, 32)

// The 3 × 3 stride-1 pad-1 layers from a staged halo (conv_halo.cuh): a grid of ⌈columns / 32⌉
// times the tile walkers, two slots of dynamic shared memory. The GEMM entries' signatures (k,
// stride, pad: 3, 1, 1), so the host launches either alike. Forward (`conv3_halo_fwd_h16`): cin a multiple of 32 (with x2: ca and cin − ca
// both), epilogue as conv2d_fwd_h16's. Data gradient: cout a multiple of 32, weights packed
// [tap][co][ci], epilogue as conv2d_bwd_data_h16's.
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_fwd_h16(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res,
                       uint16_t* y, int leaky, int n, int h, int w, int cin, int cout, int, int, int, const uint16_t* x2,
                       int ca) {
    h16::halo_fwd(x, wt, np, bias, res, y, leaky, n, h, w, cin, cout, x2, ca);
}
// The same from cin a multiple of 4 (conv_halo.cuh Halo3x3Four: 32-channel chunks, the last zero
// past cin; x2 unused)
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_fwd4_h16(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res,
                        uint16_t* y, int leaky, int n, int h, int w, int cin, int cout, int, int, int, const uint16_t*,
                        int) {
    h16::halo_fwd4(x, wt, np, bias, res, y, leaky, n, h, w, cin, cout);
}
// The 4 × 4 stride-2 pad-1 downsampling from a staged patch of even and odd column planes
// (conv_halo.cuh Down4x4): the GEMM entries' signature (k, stride, pad: 4, 2, 1; x2 unused); cin
// a multiple of 16; two 71,872-byte slots keep one block an SM
extern "C" __global__ void __launch_bounds__(256, 1)
    conv4_down_halo_fwd_h16(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res,
                            uint16_t* y, int leaky, int n, int h, int w, int cin, int cout, int, int, int,
                            const uint16_t*, int) {
    h16::down_fwd(x, wt, np, bias, res, y, leaky, n, h, w, cin, cout);
}
// Its data gradient by phases from a staged halo of dY (conv_halo.cuh Down4x4Dx): the GEMM data
// gradients' signature (h × w the input's, both even); cout a multiple of 32; weights packed
// [tap][co][ci]
extern "C" __global__ void __launch_bounds__(256, 2)
    conv4_down_halo_dx_h16(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx,
                           int accumulate, int n, int h, int w, int cin, int cout, int, int, int) {
    h16::down_dx(dy, wt, np, x, dx, accumulate, n, h, w, cin, cout);
}
// Its weight gradient (conv_halo.cuh down_dw): dW (f32, zeroed, rows (tap, ci) × cout) from f16
// x (n × h × w) and dY over `tiles` = halo_blocks(n, h / 2, w / 2) tiles, grid-strided; grid
// (splits, cin / 16 · ⌈cout / 32⌉); cin a multiple of 16, cout of 8
extern "C" __global__ void __launch_bounds__(256, 1)
    conv4_down_halo_dw_h16(const uint16_t* x, const uint16_t* dy, float* dw, int tiles, int h, int w, int cin,
                           int cout) {
    h16::down_dw(x, dy, dw, tiles, h, w, cin, cout);
}
// The forward into c1 = conv3(x) + bias with half instance norm's statistics of c1's first cn
// channels summed as it is written (FwdStatsOut: s0, s1 f64, zeroed, images × cn, shifted by
// the bias); cin a multiple of 32, cout of 8
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_fwd_stats_h16(const uint16_t* x, const uint16_t* wt, int np, const float* bias, uint16_t* y, int n,
                             int h, int w, int cin, int cout, double* s0, double* s1, int cn) {
    if (cout % 8 != 0) __trap();
    const h16::FwdStatsOut out{{bias, nullptr, y, cout, 0}, s0, s1, cn};
    h16::halo3<false>(x, nullptr, 0, cin, wt, np, cout, n, h, w, out);
}
// A residual block's tail: out = a2 + identity(x or [x | x2]) + bid, a2 = LeakyReLU(conv3(a1) +
// b2), kept where a2 is set (conv_halo.cuh halo_block); c2 and the identity's cin multiples of
// 32 (ca too, where x2 is set), cout of 8; weights packed as the forward's, np apart
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_block_h16(const uint16_t* a1, const uint16_t* wt2, int np, const float* b2, uint16_t* a2,
                         const uint16_t* x, const uint16_t* x2, int ca, int cid, const uint16_t* wid, const float* bid,
                         uint16_t* out, int n, int h, int w, int c2, int cout) {
    if (cout % 8 != 0) __trap();
    h16::halo_block(a1, wt2, np, bid, out, n, h, w, c2, cout, h16::HaloIdentity{x, x2, ca, cid, wid, b2, a2});
}
// The same with conv2 from a multiple of 4 channels (conv_halo.cuh Halo3x3Four: the low-rank
// head's 20 → 20 conv_2 beside its 32 → 20 identity); cout a multiple of 8 where a2 is kept,
// any where not (inference)
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_block4_h16(const uint16_t* a1, const uint16_t* wt2, int np, const float* b2, uint16_t* a2,
                          const uint16_t* x, const uint16_t* x2, int ca, int cid, const uint16_t* wid,
                          const float* bid, uint16_t* out, int n, int h, int w, int c2, int cout) {
    if (a2 && cout % 8 != 0) __trap();
    h16::halo_block<h16::Halo3x3Four>(a1, wt2, np, bid, out, n, h, w, c2, cout,
                                      h16::HaloIdentity{x, x2, ca, cid, wid, b2, a2});
}
// The same reading conv_1's output c1 (one tensor) in place of a1 = LeakyReLU(HIN(c1)), the norm
// applied as conv2 stages it (HaloNorm: stats the means then the rstds, n × half each; half a
// multiple of 8); inference (a2 null)
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_block_norm_h16(const uint16_t* c1, const uint16_t* wt2, int np, const float* b2, const uint16_t* x,
                              const uint16_t* x2, int ca, int cid, const uint16_t* wid, const float* bid,
                              uint16_t* out, int n, int h, int w, int c2, int cout, const float* stats,
                              const float* gamma, const float* beta, int half) {
    if (cout % 8 != 0 || half % 8 != 0) __trap();
    h16::HaloIdentity id{x, x2, ca, cid, wid, b2, nullptr};
    id.norm = h16::HaloNorm{stats, gamma, beta, n, half};
    h16::halo_block(c1, wt2, np, bid, out, n, h, w, c2, cout, id);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_dx_h16(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx, int accumulate,
                      int n, int h, int w, int cin, int cout, int, int, int) {
    h16::halo_dx(dy, wt, np, x, dx, accumulate, n, h, w, cin, cout);
}
// A residual block's input gradient (conv_halo.cuh halo_dx_block): dx = conv1ᵀ(dc1) +
// identityᵀ(d_out), conv1 3 × 3 from c1 channels (weights [tap][co][ci]), the identity 1 × 1
// from cid ([co][ci]), both multiples of 32, np apart; split into [dx | dx2] at ca where dx2 is
// set (ca a multiple of 32); cin a multiple of 8
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_dx_block_h16(const uint16_t* dc1, const uint16_t* wt1, int np, const uint16_t* d_out,
                            const uint16_t* wid, int cid, uint16_t* dx, uint16_t* dx2, int ca, int n, int h, int w,
                            int cin, int c1) {
    if (cin % 8 != 0) __trap();
    h16::DxOutH out{nullptr, dx, cin, 0};
    out.dx2 = dx2;
    out.ca = dx2 ? ca : 0;
    h16::halo_dx_block(dc1, wt1, np, d_out, wid, cid, out, n, h, w, cin, c1);
}

// dW (f32, zeroed, rows (tap, ci) × cout) and db (f32, zeroed, or null) += the weight and bias
// gradients of a 3 × 3 stride-1 pad-1 layer from f16 x and dY (cin a multiple of 32, cout of 8)
// over `tiles` = halo_blocks(n, h, w) tiles, grid-strided; grid (splits, cin / 32 · ⌈cout /
// 32⌉); x2 (ca > 0, both parts multiples of 32): x is [x | x2]
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_dw_h16(const uint16_t* x, const uint16_t* dy, float* dw, float* db, int tiles, int h, int w, int cin,
                      int cout, const uint16_t* x2, int ca) {
    h16::halo_dw(x, dy, dw, db, tiles, h, w, cin, cout, x2, x2 ? ca : 0);
}

// dW (f32, zeroed, rows (tap, ci) × cout) += the weight gradient from f16 x and dY; grid
// (⌈k²·cin / 128⌉, ⌈cout / TBN⌉, K splits); cin and cout multiples of 8; x2 (ca > 0, a multiple
// of 8): x is [x | x2]
#define H16_DW(NAME, TBN)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) NAME(const uint16_t* x, const uint16_t* dy, float* dw, int n, \
                                                           int h, int w, int cin, int cout, int k, int stride,      \
                                                           int pad, const uint16_t* x2, int ca) {                   \
        const conv::Geom g = conv::geom(n, h, w, cin, cout, k, stride, pad);                                        \
        int64_t k0, k1;                                                                                              \
        h16::dw_split((int64_t)n * g.oh * g.ow, gridDim.z, blockIdx.z, &k0, &k1);                                   \
        h16::gemm_dw<TBN>(x, dy, dw, g, k0, k1, x2, x2 ? ca : 0);                                                    \
    }
H16_DW(conv2d_bwd_weight_h16, 64)
H16_DW(conv2d_bwd_weight_h16n, 32)

// dX (f16) = [dX +] leaky'(x) · the data gradient of a stride-1 convolution (x null: no
// LeakyReLU), `conv_dx`; grid (⌈input pixels / 128⌉, ⌈cin / TBN⌉); cout a multiple of 32. The
// same by phases (`conv_dx_phased`) for strided layers whose kernel the stride divides; grid
// (⌈phase pixels / 128⌉, ⌈cin / TBN⌉, s²).
#define H16_DX(NAME, BODY, TBN)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
        NAME(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx, int accumulate, int n,  \
             int h, int w, int cin, int cout, int k, int stride, int pad) {                                         \
        h16::BODY<TBN>(dy, wt, np, x, dx, accumulate, conv::geom(n, h, w, cin, cout, k, stride, pad));              \
    }
H16_DX(conv2d_bwd_data_h16, conv_dx, 64)
H16_DX(conv2d_bwd_data_h16n, conv_dx, 32)
H16_DX(conv2d_bwd_data_phased_h16, conv_dx_phased, 64)
H16_DX(conv2d_bwd_data_phased_h16n, conv_dx_phased, 32)

// A data gradient's weights: element (tap, ci, co) of f32 w at tap·tap_stride + ci·ci_stride +
// co → f16 [tap][co][ci] with rows np ≥ cin apart, zero past cin. A convolution's [tap][ci][co]
// has strides (cin·cout, cout); the transposed convolution's [ci][tap][co] (cout, 4·cout).
extern "C" __global__ void pack_weights_t_h16(const float* w, int taps, int cin, int cout, int64_t tap_stride,
                                              int64_t ci_stride, int np, uint16_t* out) {
    H16_LOOP(i, (int64_t)taps * cout * np) {
        const int64_t r = i / np;  // (tap, co)
        const int ci = (int)(i - r * np), tap = (int)(r / cout), co = (int)(r - (int64_t)tap * cout);
        out[i] = ci < cin ? h16::f2h(w[tap * tap_stride + ci * ci_stride + co]) : (uint16_t)0;
    }
}

// The transposed convolution's weight gradient from its f16 body's [(tap, co)][ci] result
// (`t`) into the weights' [ci][tap][co]
extern "C" __global__ void up2_dw_unpack_f32(const float* t, int cin, int cout, float* dw) {
    H16_LOOP(i, (int64_t)cin * 4 * cout) {
        const int64_t ci = i / (4 * cout), r = i - ci * 4 * cout;  // r = tap·cout + co
        dw[i] = t[r * cin + ci];
    }
}

// The image's 3 × 3 layer (f32, 1–3 channels) into f16 on tensor cores, and its weight and bias
// gradients from f16 dY (conv_img.cuh; the host asks img_mma_fits): 128-thread blocks walking
// the 8 × 16 tiles, one wave
extern "C" __global__ void __launch_bounds__(h16::IMG_THREADS)
    conv2d_fwd_image_mma_h16(const float* x, const float* wt, const float* bias, uint16_t* y, int leaky, int n, int h,
                             int w, int cin, int cout) {
    if (!h16::img_mma_fits(3, 1, 1, cin, cout)) __trap();
    h16::img_fwd(x, wt, bias, y, leaky, n, h, w, cin, cout);
}
extern "C" __global__ void __launch_bounds__(h16::IMG_THREADS)
    conv2d_bwd_weight_image_mma_h16(const float* x, const uint16_t* dy, float* dw, float* db, int n, int h, int w,
                                    int cin, int cout) {
    if (!h16::img_mma_fits(3, 1, 1, cin, cout)) __trap();
    h16::img_dw(x, dy, dw, db, n, h, w, cin, cout);
}

// grid (⌈pixels / 128⌉, ⌈4·cout / 64⌉)
extern "C" __global__ void __launch_bounds__(256) up2_fwd_h16(const uint16_t* x, const uint16_t* wt, int np,
                                                              const float* bias, uint16_t* y, int n, int h, int w,
                                                              int cin, int cout) {
    h16::up_fwd(x, wt, np, bias, y, n, h, w, cin, cout);
}

// The layer's weights ([K][N] f32) as the kernels above read them: f16, rows np ≥ N apart,
// zero past N.
extern "C" __global__ void pack_weights_h16(const float* w, int64_t rows, int cols, int np, uint16_t* out) {
    H16_LOOP(i, rows * np) {
        const int64_t r = i / np;
        const int c = (int)(i - r * np);
        out[i] = c < cols ? h16::f2h(w[r * cols + c]) : (uint16_t)0;
    }
}

// f32 ↔ f16 storage (round to nearest even), where a layer's kernel takes the other
extern "C" __global__ void f32_to_h16(const float* x, uint16_t* y, int64_t n) {
    H16_LOOP(i, n) y[i] = h16::f2h(x[i]);
}
extern "C" __global__ void h16_to_f32(const uint16_t* x, float* y, int64_t n) {
    H16_LOOP(i, n) y[i] = h16::h2f(x[i]);
}

#endif
