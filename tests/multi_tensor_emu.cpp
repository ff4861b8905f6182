// The multi-tensor Adam and unscale of kernels/multi_tensor.cuh on the CPU: every block of a
// list runs in turn with emulated threads, against the single-tensor update element by element
// (the same arithmetic, so results must be equal bit for bit), with guard values after each
// tensor that no block may touch. It also prints the lists' layout, which
// tests/conv_ops_host.rs compares with the Rust structs that fill the kernel parameter.
// Built and run by tests/conv_ops_host.rs.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#define __device__
#define __forceinline__ inline
using std::isfinite;
using std::sqrt;
inline float sqrtf(float v) { return std::sqrt(v); }

#include "../kernels/multi_tensor.cuh"

static int failures = 0;
#define CHECK(cond, ...)                  \
    do {                                  \
        if (!(cond)) {                    \
            std::printf("FAIL: ");        \
            std::printf(__VA_ARGS__);     \
            std::printf("\n");            \
            ++failures;                   \
        }                                 \
    } while (0)

constexpr int GUARD = 64;
constexpr int THREADS = 256;

struct Tensor {
    std::vector<float> p, g, m, v;  // n values and GUARD guards each
    int64_t n;
};

static Tensor make(int64_t n, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    Tensor t{{}, {}, {}, {}, n};
    for (auto* a : {&t.p, &t.g, &t.m, &t.v}) {
        a->resize(n + GUARD);
        for (auto& x : *a) x = u(rng);
    }
    for (auto& x : t.v) x = std::fabs(x);
    return t;
}

static bool same(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// The host's part, as src/backend/cuda/multi.rs does it: lists of up to `per` non-empty
// tensors, each tensor ceil(n / MT_CHUNK) blocks.
template <class F>
static void lists(const std::vector<int64_t>& n, int per, F&& each) {
    std::vector<int> members;
    auto flush = [&] {
        if (!members.empty()) each(members);
        members.clear();
    };
    for (int i = 0; i < (int)n.size(); ++i) {
        if (n[i] == 0) continue;
        members.push_back(i);
        if ((int)members.size() == per) flush();
    }
    flush();
}

static void adam_case(bool device_scalars, bool skip_flag) {
    std::mt19937 rng(7 + device_scalars + 2 * skip_flag);
    const std::vector<int64_t> sizes = {5,    0, 8192, 8193, 1, 30000, 16384, 7, 0, 8191, 3 * 8192 + 5, 2, 40000,
                                        1000, 9, 13,   8200, 4, 64,    1,     1, 1, 2, 3,    5,            8, 13,
                                        21,   34, 55,  89,   144, 233, 377,   610, 987, 1597, 2584, 4181, 6765, 10946,
                                        17711, 28657, 46368};
    std::vector<Tensor> ts, want;
    for (auto n : sizes) ts.push_back(make(n, rng));
    want = ts;
    // scalars per tensor, different each: step size, √bc2, β1, β2, eps, weight decay
    std::vector<float> dev(6 * sizes.size());
    for (size_t k = 0; k < sizes.size(); ++k) {
        float s[6] = {1e-3f * (1 + k), 0.9f + 0.001f * k, 0.9f, 0.999f, 1e-8f, k % 3 == 0 ? 1e-4f : 0.0f};
        std::memcpy(&dev[6 * k], s, sizeof s);
    }
    for (size_t k = 0; k < sizes.size() && !skip_flag; ++k) {
        auto& t = want[k];
        const float* s = &dev[6 * k];
        for (int64_t i = 0; i < t.n; ++i)
            adam_element(t.p.data(), t.g.data(), t.m.data(), t.v.data(), i, s[0], s[1], s[2], s[3], s[4], s[5]);
    }
    const unsigned skip = skip_flag ? 1u : 0u;
    int launches = 0;
    lists(sizes, MT_ADAM, [&](const std::vector<int>& members) {
        AdamList L;
        std::memset(&L, 0, sizeof L);
        L.count = (int)members.size();
        L.first[0] = 0;
        for (int j = 0; j < L.count; ++j) {
            auto& t = ts[members[j]];
            L.p[j] = t.p.data();
            L.g[j] = t.g.data();
            L.m[j] = t.m.data();
            L.v[j] = t.v.data();
            L.n[j] = t.n;
            L.at[j] = members[j];
            std::memcpy(L.s[j], &dev[6 * members[j]], 24);
            L.first[j + 1] = L.first[j] + (int)((t.n + MT_CHUNK - 1) / MT_CHUNK);
        }
        ++launches;
        for (int b = 0; b < L.first[L.count]; ++b)
            for (int t = 0; t < THREADS; ++t)
                adam_multi_block(L, device_scalars ? dev.data() : nullptr, skip_flag || device_scalars ? &skip : nullptr,
                                 b, t, THREADS);
    });
    CHECK(launches == 2, "44 tensors (2 empty) make two lists, got %d", launches);
    for (size_t k = 0; k < sizes.size(); ++k) {
        CHECK(same(ts[k].p, want[k].p) && same(ts[k].m, want[k].m) && same(ts[k].v, want[k].v) &&
                  same(ts[k].g, want[k].g),
              "adam (device scalars %d, skip %d): tensor %zu of %lld values differs", device_scalars, skip_flag, k,
              (long long)sizes[k]);
    }
}

// The gradients of tensors `members` as the host lists them
static GradList grad_list(std::vector<Tensor>& ts, const std::vector<int>& members) {
    GradList L;
    std::memset(&L, 0, sizeof L);
    L.count = (int)members.size();
    for (int j = 0; j < L.count; ++j) {
        Tensor& t = ts[members[j]];
        L.g[j] = t.g.data();
        L.n[j] = t.n;
        L.first[j + 1] = L.first[j] + (int)((t.n + MT_CHUNK - 1) / MT_CHUNK);
    }
    return L;
}

static void unscale_case(int bad_tensor) {
    std::mt19937 rng(11 + bad_tensor);
    std::vector<int64_t> sizes;
    for (int k = 0; k < 130; ++k) sizes.push_back(k % 17 == 0 ? 0 : 1 + (k * 7919) % 20000);
    std::vector<Tensor> ts;
    for (auto n : sizes) ts.push_back(make(n, rng));
    if (bad_tensor >= 0) ts[bad_tensor].g[sizes[bad_tensor] - 1] = INFINITY;
    auto want = ts;
    const float inv = 1.0f / 1024.0f;
    for (auto& t : want)
        for (int64_t i = 0; i < t.n; ++i) t.g[i] *= inv;
    unsigned found = 0;
    int launches = 0;
    lists(sizes, MT_GRADS, [&](const std::vector<int>& members) {
        const GradList L = grad_list(ts, members);
        ++launches;
        for (int b = 0; b < L.first[L.count]; ++b)
            for (int t = 0; t < THREADS; ++t) unscale_multi_block(L, inv, &found, b, t, THREADS);
    });
    CHECK(launches == 2, "122 gradients make two lists, got %d", launches);
    for (size_t k = 0; k < sizes.size(); ++k) CHECK(same(ts[k].g, want[k].g), "unscale: tensor %zu differs", k);
    CHECK(found == (bad_tensor >= 0 ? 1u : 0u), "unscale: found-inf %u with a bad tensor at %d", found, bad_tensor);
}

// Every listed gradient zeroed (sizes across chunk edges, empty tensors passed over), nothing
// beyond a tensor's end touched (its guard values).
static void zero_case() {
    std::mt19937 rng(23);
    std::vector<int64_t> sizes;
    for (int k = 0; k < 130; ++k) sizes.push_back(k % 17 == 0 ? 0 : 1 + (k * 7919) % 20000);
    std::vector<Tensor> ts;
    for (auto n : sizes) ts.push_back(make(n, rng));
    for (auto& t : ts) t.g[t.n] = 7.0f;  // the first guard value
    int launches = 0;
    lists(sizes, MT_GRADS, [&](const std::vector<int>& members) {
        const GradList L = grad_list(ts, members);
        ++launches;
        for (int b = 0; b < L.first[L.count]; ++b)
            for (int t = 0; t < THREADS; ++t) zero_multi_block(L, b, t, THREADS);
    });
    CHECK(launches == 2, "122 gradients make two lists, got %d", launches);
    for (size_t k = 0; k < sizes.size(); ++k) {
        bool zero = true;
        for (int64_t i = 0; i < sizes[k]; ++i) zero &= ts[k].g[i] == 0.0f;
        CHECK(zero, "zero: tensor %zu keeps a value", k);
        CHECK(ts[k].g[sizes[k]] == 7.0f, "zero: tensor %zu written past its end", k);
    }
}

int main() {
    std::printf("layout AdamList p=%zu g=%zu m=%zu v=%zu n=%zu s=%zu at=%zu first=%zu count=%zu size=%zu\n",
                offsetof(AdamList, p), offsetof(AdamList, g), offsetof(AdamList, m), offsetof(AdamList, v),
                offsetof(AdamList, n), offsetof(AdamList, s), offsetof(AdamList, at), offsetof(AdamList, first),
                offsetof(AdamList, count), sizeof(AdamList));
    std::printf("layout GradList g=%zu n=%zu first=%zu count=%zu size=%zu\n", offsetof(GradList, g),
                offsetof(GradList, n), offsetof(GradList, first), offsetof(GradList, count), sizeof(GradList));
    std::printf("constants chunk=%d adam=%d grads=%d\n", MT_CHUNK, MT_ADAM, MT_GRADS);
    for (bool dev : {false, true})
        for (bool skip : {false, true}) adam_case(dev, skip);
    unscale_case(-1);
    unscale_case(129);
    unscale_case(3);
    zero_case();
    if (failures) {
        std::printf("%d failures\n", failures);
        return 1;
    }
    std::printf("multi-tensor Adam and unscale match the single-tensor updates exactly, and the zeroing clears "
                "every listed gradient\n");
    return 0;
}
