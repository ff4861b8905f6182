// What the two C++ convolution checks share (tests/conv_ops_check.cpp,
// tests/conv_kernels_emu.cpp): small-integer data, so every sum is exact, the plain GEMM the
// policies are driven through, and exact comparison. Include after kernels/conv_ops.cuh.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

static unsigned long long check_state = 88172645463325252ull;

// n integers in [-3, 3] (xorshift64: the same sequence on every machine)
static std::vector<float> small_ints(size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) {
        check_state ^= check_state << 13;
        check_state ^= check_state >> 7;
        check_state ^= check_state << 17;
        x = (float)((int)(check_state % 7) - 3);
    }
    return v;
}

static int failures = 0;

// got == want element for element; a failure says how many differ and the first
static void expect_equal(const std::string& what, const std::vector<float>& got, const std::vector<float>& want) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); ++i)
        if (got[i] != want[i] && !bad++) first = i;
    if (bad) {
        std::printf("FAIL %s: %zu of %zu differ, first %zu: %g, want %g\n", what.c_str(), bad, want.size(), first,
                    got[first], want[first]);
        ++failures;
    }
}

// C = A · B through an operand policy, one element at a time, into the policy's epilogue
template <class Op>
static void plain_gemm(const Op& op, int64_t M, int64_t N, int64_t K) {
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            auto mi = op.mi(m, M);
            auto ni = op.ni(n, N);
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) {
                auto ki = op.ki(k, K);
                acc += op.a(mi, ki) * op.b(ki, ni);
            }
            op.store(mi, ni, acc);
        }
}
