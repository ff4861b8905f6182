// The memory passes of kernels/elementwise.cu and kernels/norm.cu on the CPU (tests/emu_cuda.h's
// threads). Where every operand is 16-byte aligned these kernels move eight values a thread;
// otherwise one at a time, the loops that ran on the H200 against the CPU backend
// (tests/cuda_backend.rs). Each case here runs a kernel twice on the same values, once on
// aligned buffers and once on buffers one element off (which the kernel must take one at a
// time), and the two results must be equal bit for bit: the eight-wide paths do the same
// arithmetic on each value. Small grids make every thread walk several runs, and lengths that
// are not multiples of eight leave a tail for the one-at-a-time loop.
// pixel_runs and colsum_runs, which sum eight channels a thread, are compared with pixel_sums
// and colsum, a channel a lane. Built and run by tests/conv_ops_host.rs.
#include <cstdio>
#include <random>
#include <string>

#include "emu_cuda.h"
using std::isfinite;

// the f64 and f32 sums of norm.cu, atomic as the device's
template <class F, class U>
inline void atomic_add(F* p, F v) {
    U* q = reinterpret_cast<U*>(p);
    U cur = __atomic_load_n(q, __ATOMIC_RELAXED), next;
    do {
        F f;
        std::memcpy(&f, &cur, sizeof(F));
        f += v;
        std::memcpy(&next, &f, sizeof(F));
    } while (!__atomic_compare_exchange_n(q, &cur, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}
inline void atomicAdd(double* p, double v) { atomic_add<double, uint64_t>(p, v); }
inline void atomicAdd(float* p, float v) { atomic_add<float, uint32_t>(p, v); }

#include "../kernels/elementwise.cu"
#include "../kernels/norm.cu"

static int failures = 0, cases = 0;

// A buffer of n values of T either 16-byte aligned or one element off it.
template <class T>
struct Buf {
    std::vector<T> store;
    T* p;
    int64_t n;
    Buf(int64_t n, bool off) : store(n + 16), p(store.data() + (off ? 1 : 0)), n(n) {
        if (!h16::aligned16(store.data())) std::abort();
    }
    std::vector<T> values() const { return std::vector<T>(p, p + n); }
};

static std::mt19937 rng(7);
// values in [-lo, hi] rounded to T, a few exact zeros among them (LeakyReLU's edge)
template <class T>
static std::vector<T> random(int64_t n, float lo = 4.0f, float hi = 4.0f) {
    std::uniform_real_distribution<float> u(-lo, hi);
    std::vector<T> v(n);
    for (auto& x : v) {
        const float f = rng() % 16 == 0 ? 0.0f : u(rng);
        if constexpr (sizeof(T) == 2) x = h16::f2h(f);
        else x = f;
    }
    return v;
}
template <class T>
static void fill(Buf<T>& b, const std::vector<T>& v) {
    std::copy(v.begin(), v.end(), b.p);
}

template <class T>
static void expect_same(const std::string& what, const std::vector<T>& a, const std::vector<T>& b) {
    ++cases;
    if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0) return;
    ++failures;
    size_t i = 0;
    while (i < a.size() && std::memcmp(&a[i], &b[i], sizeof(T)) == 0) ++i;
    std::printf("FAIL: %s: eight-wide and one-at-a-time differ first at %zu of %zu\n", what.c_str(), i, a.size());
}

static void run(unsigned blocks, const std::function<void()>& body) { launch(Dim3{blocks, 1, 1}, Dim3{256, 1, 1}, body); }

template <class T>
static const char* kind() {
    return sizeof(T) == 2 ? "f16" : "f32";
}

// y (read and written) from x: add_assign, leaky_relu_backward, sigmoid_backward; sigmoid
// writes y from x alone
template <class T>
static void two_operands(int64_t n, unsigned blocks) {
    using K = void (*)(const T*, T*, int64_t);
    const std::pair<const char*, K> kernels[] = {
        {"add_assign", add_assign<T>},
        {"leaky_relu_backward", leaky_relu_backward<T>},
        {"sigmoid", sigmoid<T>},
        {"sigmoid_backward", sigmoid_backward<T>},
    };
    const auto x = random<T>(n), y = random<T>(n);
    for (const auto& [name, k] : kernels) {
        std::vector<T> out[2];
        for (int off = 0; off < 2; ++off) {
            Buf<T> a(n, off), b(n, off);
            fill(a, x);
            fill(b, y);
            run(blocks, [&] { k(a.p, b.p, n); });
            out[off] = b.values();
        }
        expect_same(std::string(name) + " " + kind<T>() + " n " + std::to_string(n), out[0], out[1]);
    }
}

// the VD prior, every pairing of l and vd kinds: eight-wide (all aligned) against one at a time
// (hr misaligned), the same bits
template <class L, class V>
static void prior(int64_t n, unsigned blocks) {
    const auto l = random<L>(n), vd = random<V>(n, 0.1f, 1.2f);
    std::vector<float> out[2];
    for (int off = 0; off < 2; ++off) {
        Buf<L> a(n, false);
        Buf<V> b(n, false);
        Buf<float> hr(n, off);
        fill(a, l);
        fill(b, vd);
        run(blocks, [&] { prior_sigmoid(a.p, b.p, hr.p, n); });
        out[off] = hr.values();
    }
    expect_same(std::string("prior_sigmoid l ") + kind<L>() + " vd " + kind<V>() + " n " + std::to_string(n), out[0],
                out[1]);
}

// leaky_relu_grad: out of place, against leaky_relu_backward in place (the same bits), eight-wide
// and one at a time (the output alone misaligned)
template <class T>
static void out_of_place(int64_t n, unsigned blocks) {
    const auto y = random<T>(n), dy = random<T>(n);
    Buf<T> a(n, false), b(n, false);
    fill(a, y);
    fill(b, dy);
    run(blocks, [&] { leaky_relu_backward<T>(a.p, b.p, n); });
    for (int off = 0; off < 2; ++off) {
        Buf<T> g(n, off), d(n, false);
        fill(d, dy);
        run(blocks, [&] { leaky_relu_grad<T>(a.p, d.p, g.p, n); });
        expect_same(std::string("leaky_relu_grad ") + kind<T>() + " n " + std::to_string(n) + (off ? " misaligned" : ""),
                    g.values(), b.values());
        expect_same(std::string("leaky_relu_grad keeps dy, ") + kind<T>(), d.values(), dy);
    }
}

template <class T>
static void channels(int64_t px, int ca, int cb, unsigned blocks) {
    const int64_t c = ca + cb;
    const auto a = random<T>(px * ca), b = random<T>(px * cb), d = random<T>(px * c);
    std::vector<T> cat[2], sa[2], sb[2];
    for (int off = 0; off < 2; ++off) {
        Buf<T> A(px * ca, off), B(px * cb, off), O(px * c, off);
        fill(A, a);
        fill(B, b);
        run(blocks, [&] { concat_channels(A.p, ca, B.p, cb, O.p, px); });
        cat[off] = O.values();
        fill(O, d);
        run(blocks, [&] { split_channels(O.p, ca, cb, A.p, B.p, px); });
        sa[off] = A.values();
        sb[off] = B.values();
    }
    const std::string at = std::string(kind<T>()) + " " + std::to_string(ca) + " + " + std::to_string(cb);
    expect_same("concat_channels " + at, cat[0], cat[1]);
    expect_same("split_channels (first part) " + at, sa[0], sa[1]);
    expect_same("split_channels (second part) " + at, sb[0], sb[1]);
    // and the concatenation is the parts side by side
    bool ok = true;
    for (int64_t p = 0; p < px; ++p)
        for (int64_t k = 0; k < c; ++k) {
            const T want = k < ca ? a[p * ca + k] : b[p * cb + k - ca];
            ok &= std::memcmp(&cat[0][p * c + k], &want, sizeof(T)) == 0;
        }
    ++cases;
    if (!ok) ++failures, std::printf("FAIL: concat_channels %s is not [a | b]\n", at.c_str());
}

// Half instance norm's apply and backward over `images` images of hw pixels × c channels:
// statistics (means, then 1/σ), gamma, beta and the f64 sums drawn at random.
template <class T>
static void half_norm(int images, int64_t hw, int c, unsigned blocks) {
    const int half = c / 2;
    const int64_t total = images * hw * c, at = (int64_t)images * half;
    const auto x = random<T>(total), dy = random<T>(total);
    auto stats = random<float>(2 * at), gamma = random<float>(half, 0.5f, 2.0f), beta = random<float>(half);
    for (int64_t i = at; i < 2 * at; ++i) stats[i] = std::fabs(stats[i]) + 0.25f;  // 1/σ > 0
    std::vector<double> s0(at), s1(at);
    std::uniform_real_distribution<double> u(-50.0, 50.0);
    for (int64_t i = 0; i < at; ++i) s0[i] = u(rng), s1[i] = u(rng);
    const std::string shape = std::string(kind<T>()) + " " + std::to_string(images) + " × " + std::to_string(hw) +
                              " × " + std::to_string(c);
    for (int leaky = 0; leaky < 2; ++leaky) {
        std::vector<T> out[2];
        for (int off = 0; off < 2; ++off) {
            Buf<T> X(total, off), Y(total, off);
            fill(X, x);
            run(blocks, [&] {
                hin_apply(X.p, stats.data(), gamma.data(), beta.data(), leaky, images, hw, c, Y.p);
            });
            out[off] = Y.values();
        }
        expect_same("hin_apply " + shape + (leaky ? " leaky" : ""), out[0], out[1]);
    }
    std::vector<T> out[2];
    for (int off = 0; off < 2; ++off) {
        Buf<T> X(total, off), D(total, off), O(total, off);
        fill(X, x);
        fill(D, dy);
        run(blocks, [&] {
            hin_backward(X.p, stats.data(), gamma.data(), D.p, s0.data(), s1.data(), images, hw, c, O.p);
        });
        out[off] = O.values();
    }
    expect_same("hin_backward " + shape, out[0], out[1]);
}

template <class S>
static double relative(const std::vector<S>& got, const std::vector<S>& want) {
    double err = 0.0, norm = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        err += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        norm += (double)want[i] * want[i];
    }
    return norm > 0.0 ? std::sqrt(err / norm) : INFINITY;
}

// finish_moments_shifted with the image's first pixels as the shift gives finish_moments' bits
// (mode 3's sums; the shift taken from x there)
template <class T>
static void moments(int images, int64_t hw, int c, int cn) {
    const int64_t at = (int64_t)images * cn;
    const auto x = random<T>(images * hw * c);
    std::vector<double> s0(at), s1(at);
    launch(Dim3{1, (unsigned)(cn + 31) / 32, (unsigned)images}, Dim3{32, 8, 1}, [&] {
        pixel_sums(x.data(), x.data(), nullptr, nullptr, 3, hw, c, cn, hw, s0.data(), s1.data());
    });
    // one shift per channel: a single image (the shifted form's shift is per channel)
    std::vector<float> shift(cn);
    for (int ch = 0; ch < cn; ++ch) shift[ch] = h16::ld(x.data() + ch);
    std::vector<float> m0(at), r0(at), m1(at), r1(at);
    run(1, [&] { finish_moments(s0.data(), s1.data(), x.data(), at, cn, hw, c, m0.data(), r0.data()); });
    run(1, [&] { finish_moments_shifted(s0.data(), s1.data(), shift.data(), at, cn, hw, m1.data(), r1.data()); });
    expect_same(std::string("finish_moments_shifted ") + kind<T>() + ", means", m1, m0);
    expect_same(std::string("finish_moments_shifted ") + kind<T>() + ", 1/sigma", r1, r0);
}

// pixel_runs (eight channels a thread) against pixel_sums (a channel a lane) in each mode: f64
// sums in another order, so equal to a relative 1e-12
template <class T>
static void sums(int images, int64_t hw, int c, int cn, int64_t chunk) {
    const int64_t at = (int64_t)images * cn;
    const auto x = random<T>(images * hw * c), dy = random<T>(images * hw * c);
    auto mean = random<float>(at), rstd = random<float>(at);
    for (auto& r : rstd) r = std::fabs(r) + 0.25f;
    const unsigned chunks = (unsigned)((hw + chunk - 1) / chunk), img = (unsigned)images;
    for (int mode = 0; mode < 4; ++mode) {
        std::vector<double> a0(at), a1(at), b0(at), b1(at);
        launch(Dim3{chunks, (unsigned)(cn + 31) / 32, img}, Dim3{32, 8, 1}, [&] {
            pixel_sums(x.data(), dy.data(), mean.data(), rstd.data(), mode, hw, c, cn, chunk, a0.data(), a1.data());
        });
        launch(Dim3{chunks, 1, img}, Dim3{256, 1, 1}, [&] {
            pixel_runs(x.data(), dy.data(), mean.data(), rstd.data(), mode, hw, c, cn, chunk, b0.data(), b1.data());
        });
        a0.insert(a0.end(), a1.begin(), a1.end());
        b0.insert(b0.end(), b1.begin(), b1.end());
        const double e = relative(b0, a0);
        ++cases;
        if (!(e < 1e-12))
            ++failures, std::printf("FAIL: pixel_runs %s mode %d, %d × %lld × %d (%d summed): relative error %g\n",
                                    kind<T>(), mode, images, (long long)hw, c, cn, e);
    }
}

// colsum_runs (eight columns a thread) against colsum (a column a lane): f32 sums in another
// order, so equal to a relative 1e-6
template <class T>
static void column_sums(int64_t rows, int cols, int64_t chunk) {
    const auto x = random<T>(rows * cols);
    std::vector<float> a(cols), b(cols);
    const unsigned chunks = (unsigned)((rows + chunk - 1) / chunk);
    launch(Dim3{(unsigned)(cols + 31) / 32, chunks, 1}, Dim3{32, 8, 1},
           [&] { colsum(x.data(), rows, cols, chunk, a.data()); });
    launch(Dim3{chunks, 1, 1}, Dim3{256, 1, 1}, [&] { colsum_runs(x.data(), rows, cols, chunk, b.data()); });
    const double e = relative(b, a);
    ++cases;
    if (!(e < 1e-6))
        ++failures, std::printf("FAIL: colsum_runs %s %lld × %d: relative error %g\n", kind<T>(), (long long)rows,
                                cols, e);
}

template <class T>
static void every_kernel() {
    for (int64_t n : {8, 1000, 1003, 4099}) two_operands<T>(n, n < 100 ? 1 : 3);
    for (int64_t n : {16, 1003, 4099}) out_of_place<T>(n, n < 100 ? 1 : 3);
    for (int64_t n : {24, 1003}) prior<T, uint16_t>(n, 2), prior<T, float>(n, 2);
    channels<T>(37, 32, 32, 2);  // the decoder's equal parts
    channels<T>(29, 64, 32, 3);
    channels<T>(41, 8, 24, 1);
    channels<T>(13, 12, 20, 1);  // parts not multiples of eight: one at a time both ways
    half_norm<T>(2, 37, 32, 3);        // the first down block's 16 normalised channels of 32
    half_norm<T>(3, 19, 64, 2);
    half_norm<T>(1, 23, 48, 1);        // 24 normalised: three runs of eight, then the other half
    half_norm<T>(2, 11, 20, 1);        // 10 normalised: one at a time both ways
    half_norm<T>(2, 37, 17, 3);        // odd c: a half of 8, but pixels of 17 (one at a time)
    half_norm<T>(1, 5, 33, 1);
    moments<T>(1, 300, 32, 16);        // the shifted finish against the first-pixel one
    sums<T>(2, 300, 32, 16, 128);      // HIN's half of the first down block: 2 runs, 128 lanes
    sums<T>(3, 77, 64, 64, 40);        // every channel (spatial means), 8 runs, a short last chunk
    sums<T>(1, 50, 256, 128, 50);      // 16 runs, 16 lanes
    column_sums<T>(1000, 32, 300);     // 4 runs, 64 lanes, a short last chunk
    column_sums<T>(777, 64, 777);
    column_sums<T>(300, 256, 100);     // 32 runs, 8 lanes
    column_sums<T>(500, 8, 128);       // 1 run, 256 lanes
}

int main() {
    every_kernel<uint16_t>();
    every_kernel<float>();
    if (failures) {
        std::printf("%d of %d cases failed\n", failures, cases);
        return 1;
    }
    std::printf("memory kernels: %d cases; the eight-wide paths of the element-wise, channel and half instance "
                "norm kernels give the one-at-a-time loops' bits, and pixel_runs and colsum_runs the sums of "
                "pixel_sums and colsum\n",
                cases);
    return 0;
}
