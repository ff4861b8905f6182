// Host check of kernels/conv_ops.cuh (built and run by tests/conv_ops_host.rs): every operand
// policy, driven through a plain triple-loop GEMM, must reproduce the layer it stands for as
// written out directly (scatter/gather loops over pixels and taps). Small integer values make
// every sum exact, so results must be equal, not close. Out-of-range rows, K indices and
// columns must read as zero.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../kernels/conv_ops.cuh"
#include "conv_check.h"

using namespace conv;

// The plain GEMM, and out-of-range rows, K indices and columns reading as zero.
template <class Op>
static void host_gemm(const Op& op, int64_t M, int64_t N, int64_t K) {
    plain_gemm(op, M, N, K);
    // past the ends: zeros
    auto m_out = op.mi(M, M);
    auto k_out = op.ki(K, K);
    auto n_out = op.ni(N, N);
    if (op.a(m_out, op.ki(0, K)) != 0.0f || op.a(op.mi(0, M), k_out) != 0.0f || op.b(k_out, op.ni(0, N)) != 0.0f ||
        op.b(op.ki(0, K), n_out) != 0.0f) {
        std::printf("FAIL: an out-of-range index did not read as zero\n");
        ++failures;
    }
}

static bool same4(const F4& v, float a, float b, float c, float d) { return v.x == a && v.y == b && v.z == c && v.w == d; }

// The four-wide gathers against four scalar ones, at every run start inside and one past the
// end (zeros), where the layer's layout allows them.
template <class Op>
static void check_vec(const char* what, const Op& op, int64_t M, int64_t N, int64_t K) {
    if (!op.vec_a() || !op.vec_b()) {
        std::printf("FAIL %s: a layout with channel counts divisible by 4 refused four-wide loads\n", what);
        ++failures;
        return;
    }
    int bad = 0;
    for (int64_t m = 0; m <= M; m += Op::A_K_FAST ? 1 : 4)
        for (int64_t k = 0; k <= K; k += Op::A_K_FAST ? 4 : 1) {
            const F4 v = op.a4(op.mi(m, M), op.ki(k, K));
            if (Op::A_K_FAST)
                bad += !same4(v, op.a(op.mi(m, M), op.ki(k, K)), op.a(op.mi(m, M), op.ki(k + 1, K)),
                              op.a(op.mi(m, M), op.ki(k + 2, K)), op.a(op.mi(m, M), op.ki(k + 3, K)));
            else
                bad += !same4(v, op.a(op.mi(m, M), op.ki(k, K)), op.a(op.mi(m + 1, M), op.ki(k, K)),
                              op.a(op.mi(m + 2, M), op.ki(k, K)), op.a(op.mi(m + 3, M), op.ki(k, K)));
        }
    for (int64_t k = 0; k <= K; k += Op::B_N_FAST ? 1 : 4)
        for (int64_t n = 0; n <= N; n += Op::B_N_FAST ? 4 : 1) {
            const F4 v = op.b4(op.ki(k, K), op.ni(n, N));
            if (Op::B_N_FAST)
                bad += !same4(v, op.b(op.ki(k, K), op.ni(n, N)), op.b(op.ki(k, K), op.ni(n + 1, N)),
                              op.b(op.ki(k, K), op.ni(n + 2, N)), op.b(op.ki(k, K), op.ni(n + 3, N)));
            else
                bad += !same4(v, op.b(op.ki(k, K), op.ni(n, N)), op.b(op.ki(k + 1, K), op.ni(n, N)),
                              op.b(op.ki(k + 2, K), op.ni(n, N)), op.b(op.ki(k + 3, K), op.ni(n, N)));
        }
    if (bad) {
        std::printf("FAIL %s: %d four-wide gathers differ from the scalar ones\n", what, bad);
        ++failures;
    }
}

// The kernels' four-wide load placement covers a ROWS × 32 operand tile exactly once (64: the
// 64 × 64 kernels' A and B, and the wide kernels' B; 128: the wide kernels' A).
template <int ROWS>
static void check_vec_slots() {
    constexpr int LOADS = ROWS * 32 / 4 / 256;
    for (bool k_fast : {true, false}) {
        std::vector<int> hits(ROWS * 32, 0);
        for (int tid = 0; tid < 256; ++tid)
            for (int i = 0; i < LOADS; ++i) {
                const Slot q = vec_slot<ROWS, 32, 256>(k_fast, tid, i);
                for (int j = 0; j < 4; ++j) {
                    const int r = q.r + (k_fast ? 0 : j), c = q.c + (k_fast ? j : 0);
                    if (r < 0 || r >= ROWS || c < 0 || c >= 32) {
                        std::printf("FAIL vec_slot<%d>: (%d, %d) outside the tile\n", ROWS, r, c);
                        ++failures;
                        return;
                    }
                    ++hits[r * 32 + c];
                }
            }
        for (int h : hits)
            if (h != 1) {
                std::printf("FAIL vec_slot<%d> (k_fast %d): an element loaded %d times\n", ROWS, k_fast, h);
                ++failures;
                return;
            }
    }
}

// The half-precision kernels' placement along the rows (pair_slot) covers a ROWS × 32 tile
// exactly once, each thread's loads 2p and 2p + 1 at the same rows and at k 2j, 2j + 1 (one
// packed word each); 32 rows: only the first 128 threads load.
template <int ROWS>
static void check_pair_slots() {
    constexpr int LOADS = pair_loads<ROWS, 32, 256>();
    std::vector<int> hits(ROWS * 32, 0);
    for (int tid = 0; tid < 256; ++tid)
        for (int i = 0; i < LOADS; ++i) {
            if (!pair_active<ROWS, 32, 256>(tid, i)) continue;
            const Slot q = pair_slot<ROWS, 32, 256>(tid, i), e = pair_slot<ROWS, 32, 256>(tid, i & ~1);
            if (q.r != e.r || q.c != e.c + (i & 1) || e.c % 2 || q.r % 4 || q.r >= ROWS || q.c >= 32) {
                std::printf("FAIL pair_slot<%d>: thread %d load %d at (%d, %d)\n", ROWS, tid, i, q.r, q.c);
                ++failures;
                return;
            }
            for (int j = 0; j < 4; ++j) ++hits[(q.r + j) * 32 + q.c];
        }
    for (int h : hits)
        if (h != 1) {
            std::printf("FAIL pair_slot<%d>: an element loaded %d times\n", ROWS, h);
            ++failures;
            return;
        }
}

static void check_conv(int n, int h, int w, int cin, int cout, int k, int stride, int pad) {
    Geom g = geom(n, h, w, cin, cout, k, stride, pad);
    auto x = small_ints((size_t)n * h * w * cin), wt = small_ints((size_t)k * k * cin * cout), bias = small_ints(cout);
    auto res = small_ints((size_t)n * g.oh * g.ow * cout), dy = small_ints((size_t)n * g.oh * g.ow * cout);
    auto X = [&](int i, int y, int xx, int c) { return x[(((size_t)i * h + y) * w + xx) * cin + c]; };
    auto W = [&](int ky, int kx, int ci, int co) { return wt[(((size_t)ky * k + kx) * cin + ci) * cout + co]; };
    // direct forward, its data gradient (scatter) and weight gradient
    std::vector<float> y(res.size()), dx(x.size(), 0.0f), dw(wt.size(), 0.0f);
    for (int i = 0; i < n; ++i)
        for (int oy = 0; oy < g.oh; ++oy)
            for (int ox = 0; ox < g.ow; ++ox)
                for (int co = 0; co < cout; ++co) {
                    const size_t o = (((size_t)i * g.oh + oy) * g.ow + ox) * cout + co;
                    float s = 0.0f;
                    for (int ky = 0; ky < k; ++ky)
                        for (int kx = 0; kx < k; ++kx) {
                            const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                            for (int ci = 0; ci < cin; ++ci) {
                                s += X(i, iy, ix, ci) * W(ky, kx, ci, co);
                                dx[(((size_t)i * h + iy) * w + ix) * cin + ci] += dy[o] * W(ky, kx, ci, co);
                                dw[(((size_t)ky * k + kx) * cin + ci) * cout + co] += X(i, iy, ix, ci) * dy[o];
                            }
                        }
                    s += bias[co];
                    s = s > 0.0f ? s : SLOPE * s;
                    y[o] = s + res[o];
                }
    std::vector<float> got(y.size(), -99.0f);
    Fwd f{x.data(), wt.data(), bias.data(), res.data(), got.data(), g, 1};
    host_gemm(f, (int64_t)n * g.oh * g.ow, cout, (int64_t)k * k * cin);
    expect_equal("conv forward", got, y);
    std::vector<float> gdx(dx.size(), -99.0f);
    BwdData bd{dy.data(), wt.data(), gdx.data(), g};
    host_gemm(bd, (int64_t)n * h * w, cin, (int64_t)k * k * cout);
    expect_equal("conv data gradient", gdx, dx);
    if (stride > 1 && k % stride == 0) {
        // by phases: each writes its own pixels, together all of them
        std::vector<float> pdx(dx.size(), -99.0f);
        for (int q = 0; q < stride * stride; ++q) {
            const BwdDataPhased ph{{dy.data(), wt.data(), pdx.data(), g}, phase(g, q)};
            const int64_t rows = (int64_t)n * ph.ph.hy * ph.ph.wx, kq = (int64_t)ph.ph.kk * ph.ph.kk * cout;
            host_gemm(ph, rows, cin, kq);
            if (cin % 4 == 0 && cout % 4 == 0) check_vec("conv data gradient by phases", ph, rows, cin, kq);
        }
        expect_equal("conv data gradient by phases", pdx, dx);
    }
    std::vector<float> gdw(dw.size(), 0.0f);
    BwdWeight bw{x.data(), dy.data(), gdw.data(), g};
    host_gemm(bw, (int64_t)k * k * cin, cout, (int64_t)n * g.oh * g.ow);
    expect_equal("conv weight gradient", gdw, dw);
    if (cin % 4 == 0 && cout % 4 == 0) {
        check_vec("conv forward", f, (int64_t)n * g.oh * g.ow, cout, (int64_t)k * k * cin);
        check_vec("conv data gradient", bd, (int64_t)n * h * w, cin, (int64_t)k * k * cout);
        check_vec("conv weight gradient", bw, (int64_t)k * k * cin, cout, (int64_t)n * g.oh * g.ow);
    }
}

static void check_up(int n, int h, int w, int cin, int cout) {
    Geom g = geom(n, h, w, cin, cout, 2, 2, 0);
    auto x = small_ints((size_t)n * h * w * cin), wt = small_ints((size_t)cin * 4 * cout), bias = small_ints(cout);
    auto dy = small_ints((size_t)n * 4 * h * w * cout);
    auto Y = [&](int i, int oy, int ox, int co) { return (((size_t)i * 2 * h + oy) * 2 * w + ox) * cout + co; };
    std::vector<float> y(dy.size()), dx(x.size(), 0.0f), dw(wt.size(), 0.0f);
    for (int i = 0; i < n; ++i)
        for (int iy = 0; iy < h; ++iy)
            for (int ix = 0; ix < w; ++ix)
                for (int ky = 0; ky < 2; ++ky)
                    for (int kx = 0; kx < 2; ++kx)
                        for (int co = 0; co < cout; ++co) {
                            const size_t o = Y(i, 2 * iy + ky, 2 * ix + kx, co);
                            float s = bias[co];
                            for (int ci = 0; ci < cin; ++ci) {
                                const size_t xi = (((size_t)i * h + iy) * w + ix) * cin + ci;
                                const size_t wi = (((size_t)ci * 2 + ky) * 2 + kx) * cout + co;
                                s += x[xi] * wt[wi];
                                dx[xi] += dy[o] * wt[wi];
                                dw[wi] += x[xi] * dy[o];
                            }
                            y[o] = s;
                        }
    std::vector<float> got(y.size(), -99.0f);
    UpFwd f{x.data(), wt.data(), bias.data(), got.data(), g};
    host_gemm(f, (int64_t)n * h * w, 4 * cout, cin);
    expect_equal("transposed conv forward", got, y);
    std::vector<float> gdx(dx.size(), -99.0f);
    UpBwdData bd{dy.data(), wt.data(), gdx.data(), g};
    host_gemm(bd, (int64_t)n * h * w, cin, 4 * cout);
    expect_equal("transposed conv data gradient", gdx, dx);
    std::vector<float> gdw(dw.size(), 0.0f);
    UpBwdWeight bw{x.data(), dy.data(), gdw.data(), g};
    host_gemm(bw, cin, 4 * cout, (int64_t)n * h * w);
    expect_equal("transposed conv weight gradient", gdw, dw);
    if (cin % 4 == 0 && cout % 4 == 0) {
        check_vec("transposed conv forward", f, (int64_t)n * h * w, 4 * cout, cin);
        check_vec("transposed conv data gradient", bd, (int64_t)n * h * w, cin, 4 * cout);
        check_vec("transposed conv weight gradient", bw, cin, 4 * cout, (int64_t)n * h * w);
    }
}

static void check_dense(int M, int N, int K) {
    // A stored transposed (column-major), B row-major, with a bias
    auto A = small_ints((size_t)M * K), B = small_ints((size_t)K * N), bias = small_ints(N);
    std::vector<float> want((size_t)M * N);
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            float s = bias[n];
            for (int k = 0; k < K; ++k) s += A[(size_t)k * M + m] * B[(size_t)k * N + n];
            want[(size_t)m * N + n] = s;
        }
    std::vector<float> got(want.size(), -99.0f);
    Dense d{A.data(), B.data(), bias.data(), got.data(), 1, M, N, 1, N, 0};
    host_gemm(d, M, N, K);
    expect_equal("dense", got, want);
}

// The multiply-high divisions against `/` and `%`: every divisor up to 3,000 and the powers
// of two with their neighbours, dividends at and around multiples of the divisor, the ends of
// the range and a pseudo-random spread below 2^31.
static void check_fast_div() {
    std::vector<uint32_t> ds;
    for (uint32_t d = 1; d <= 3000; ++d) ds.push_back(d);
    for (int b = 12; b < 31; ++b)
        for (int e = -1; e <= 1; ++e) ds.push_back((1u << b) + e);
    ds.push_back(0x7fffffffu);
    uint64_t state = 0x9E3779B97F4A7C15ull;
    auto next = [&] {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        return (uint32_t)(state & 0x7fffffffu);
    };
    int64_t checked = 0;
    for (uint32_t d : ds) {
        const FastDiv f = fast_div(d);
        std::vector<uint32_t> ns = {0, 1, d - 1, d, d + 1, 2 * d - 1, 2 * d, 0x7ffffffeu, 0x7fffffffu};
        for (int i = 0; i < 64; ++i) ns.push_back(next());
        for (int i = 0; i < 16; ++i) {
            const uint32_t q = next() / d;
            for (int e = -1; e <= 1; ++e) ns.push_back(q * d + e);
        }
        for (uint32_t n : ns) {
            if (n > 0x7fffffffu) continue;
            ++checked;
            if (f.div(n) != n / d || f.mod(n) != n % d) {
                std::printf("FAIL fast_div(%u): %u / d gave %u (want %u)\n", d, n, f.div(n), n / d);
                ++failures;
                return;
            }
        }
    }
    std::printf("fast_div: %lld divisions exact\n", (long long)checked);
}

int main() {
    check_fast_div();
    check_conv(2, 9, 11, 5, 7, 3, 1, 1);
    check_conv(3, 10, 14, 6, 9, 4, 2, 1);
    check_conv(1, 7, 5, 4, 3, 1, 1, 0);
    check_conv(2, 8, 8, 3, 4, 4, 2, 1);
    check_conv(2, 9, 7, 3, 5, 4, 2, 1);  // odd sizes under stride 2: the parity masks
    check_conv(1, 7, 9, 2, 3, 3, 2, 1);
    check_conv(1, 6, 7, 2, 2, 5, 1, 2);  // the largest kernel the 25-bit masks hold
    // channel counts divisible by 4: the four-wide gathers too
    check_conv(2, 9, 11, 8, 12, 3, 1, 1);
    check_conv(2, 9, 7, 4, 8, 4, 2, 1);
    check_conv(1, 10, 6, 8, 4, 4, 2, 1);  // even sizes: the U-Net's downsampling
    check_conv(1, 9, 8, 4, 4, 4, 2, 2);   // another padding: other phases' first taps
    check_conv(1, 11, 7, 3, 2, 2, 2, 0);  // a 2 × 2 / 2 kernel: one tap per phase
    check_conv(1, 7, 5, 12, 4, 1, 1, 0);
    check_up(2, 5, 7, 9, 6);
    check_up(1, 4, 3, 2, 5);
    check_up(2, 3, 5, 8, 4);
    check_vec_slots<64>();
    check_vec_slots<128>();
    check_pair_slots<32>();
    check_pair_slots<64>();
    check_pair_slots<128>();
    check_dense(13, 7, 11);
    if (failures) return 1;
    std::printf("conv_ops: every policy reproduces its layer exactly\n");
    return 0;
}
