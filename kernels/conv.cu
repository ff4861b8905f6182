// Convolutions of the backend seam as implicit GEMMs, f32 storage and f32 accumulation (SIMT):
// the exact path the CPU backend's conv.rs is the reference of. Layouts as there: activations
// NHWC, conv weights [ky][kx][ci][co], transposed-conv weights [ci][ky][kx][co].
//
// One tiled GEMM body (64 × 64 block tile, K step 16, 256 threads with 4 × 4 outputs each)
// takes an operand policy: how element (m, k) of A and (k, n) of B are gathered from the
// tensors (im2col on the fly, zero outside the image) and what the epilogue does with C
// (bias, LeakyReLU, residual; scatter of the transposed conv; atomic adds for split-K weight
// gradients). The tensor-core fp16 kernels of issue 8 keep these policies.

#include <cstdint>

namespace conv {

constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;
constexpr float SLOPE = 0.2f;

struct Geom {
    int n, h, w, cin, cout, k, stride, pad, oh, ow;
};

// C[m][n] = Σ_k A(m, k) B(k, n) over k in [k0, k1) for the block's 64 × 64 tile.
// A_K_FAST / B_N_FAST say which index runs along contiguous memory, so loads coalesce.
template <class Op>
__device__ __forceinline__ void gemm_tile(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int64_t m0 = (int64_t)blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int64_t kt = k0; kt < k1; kt += BK) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = tid + THREADS * i;
            const int mm = Op::A_K_FAST ? e / BK : e % BM;
            const int kk = Op::A_K_FAST ? e % BK : e / BM;
            const int64_t m = m0 + mm, k = kt + kk;
            As[kk][mm] = (m < M && k < k1) ? op.a(m, k) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = tid + THREADS * i;
            const int nn = Op::B_N_FAST ? e % BN : e / BK;
            const int kk = Op::B_N_FAST ? e / BN : e % BK;
            const int n = n0 + nn;
            const int64_t k = kt + kk;
            Bs[kk][nn] = (n < N && k < k1) ? op.b(k, n) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int64_t m = m0 + ty + 16 * i;
            const int n = n0 + tx + 16 * j;
            if (m < M && n < N) op.store(m, n, acc[i][j]);
        }
}

// The K range of this block's split (blockIdx.z of gridDim.z), in whole BK steps.
__device__ __forceinline__ void split_range(int64_t K, int64_t* k0, int64_t* k1) {
    const int64_t per = ((K + gridDim.z - 1) / gridDim.z + BK - 1) / BK * BK;
    *k0 = (int64_t)blockIdx.z * per;
    *k1 = min(K, *k0 + per);
}

// im2col value: input pixel read by output pixel p at GEMM column kw = (ky, kx, ci)
__device__ __forceinline__ float im2col(const float* x, const Geom& g, int64_t p, int64_t kw) {
    const int ohw = g.oh * g.ow;
    const int img = (int)(p / ohw), r = (int)(p % ohw);
    const int oy = r / g.ow, ox = r % g.ow;
    const int ci = (int)(kw % g.cin), tap = (int)(kw / g.cin);
    const int iy = oy * g.stride - g.pad + tap / g.k, ix = ox * g.stride - g.pad + tap % g.k;
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.0f;
    return x[(((int64_t)img * g.h + iy) * g.w + ix) * g.cin + ci];
}

// y = leaky?(conv(x) + bias) + residual: M = output pixels, K = k·k·Cin, N = Cout
struct Fwd {
    static constexpr bool A_K_FAST = true, B_N_FAST = true;
    const float *x, *w, *bias, *res;
    float* y;
    Geom g;
    int leaky;
    __device__ float a(int64_t m, int64_t k) const { return im2col(x, g, m, k); }
    __device__ float b(int64_t k, int n) const { return w[k * g.cout + n]; }
    __device__ void store(int64_t m, int n, float v) const {
        if (bias) v += bias[n];
        if (leaky) v = v > 0.0f ? v : SLOPE * v;
        if (res) v += res[m * g.cout + n];
        y[m * g.cout + n] = v;
    }
};

// dX = Σ over the output pixels that read each input pixel: M = input pixels, K = k·k·Cout
// (tap, co), N = Cin
struct BwdData {
    static constexpr bool A_K_FAST = true, B_N_FAST = false;
    const float *dy, *w;
    float* dx;
    Geom g;
    __device__ float a(int64_t m, int64_t k) const {
        const int hw = g.h * g.w;
        const int img = (int)(m / hw), r = (int)(m % hw);
        const int iy = r / g.w, ix = r % g.w;
        const int co = (int)(k % g.cout), tap = (int)(k / g.cout);
        const int ty = iy + g.pad - tap / g.k, tx = ix + g.pad - tap % g.k;
        if (ty < 0 || tx < 0 || ty % g.stride || tx % g.stride) return 0.0f;
        const int oy = ty / g.stride, ox = tx / g.stride;
        if (oy >= g.oh || ox >= g.ow) return 0.0f;
        return dy[(((int64_t)img * g.oh + oy) * g.ow + ox) * g.cout + co];
    }
    __device__ float b(int64_t k, int n) const {
        const int64_t co = k % g.cout, tap = k / g.cout;
        return w[(tap * g.cin + n) * g.cout + co];
    }
    __device__ void store(int64_t m, int n, float v) const { dx[m * g.cin + n] = v; }
};

// dW += im2colᵀ · dY over this split's output pixels: M = k·k·Cin, K = output pixels, N = Cout
struct BwdWeight {
    static constexpr bool A_K_FAST = false, B_N_FAST = true;
    const float *x, *dy;
    float* dw;
    Geom g;
    __device__ float a(int64_t m, int64_t k) const { return im2col(x, g, k, m); }
    __device__ float b(int64_t k, int n) const { return dy[k * g.cout + n]; }
    __device__ void store(int64_t m, int n, float v) const { atomicAdd(&dw[m * g.cout + n], v); }
};

// element (p, q·Cout + co) of the transposed conv's GEMM output: output pixel (2iy+ky, 2ix+kx)
__device__ __forceinline__ int64_t up_index(const Geom& g, int64_t p, int n) {
    const int hw = g.h * g.w;
    const int img = (int)(p / hw), r = (int)(p % hw);
    const int iy = r / g.w, ix = r % g.w;
    const int q = n / g.cout, co = n % g.cout;
    return (((int64_t)img * 2 * g.h + 2 * iy + q / 2) * 2 * g.w + 2 * ix + q % 2) * g.cout + co;
}

// 2×2 stride-2 transposed conv: M = input pixels, K = Cin, N = 4·Cout, scattered + bias
struct UpFwd {
    static constexpr bool A_K_FAST = true, B_N_FAST = true;
    const float *x, *w, *bias;
    float* y;
    Geom g;
    __device__ float a(int64_t m, int64_t k) const { return x[m * g.cin + k]; }
    __device__ float b(int64_t k, int n) const { return w[k * 4 * g.cout + n]; }
    __device__ void store(int64_t m, int n, float v) const { y[up_index(g, m, n)] = v + bias[n % g.cout]; }
};

// its dX: M = input pixels, K = 4·Cout (gathered dY), N = Cin
struct UpBwdData {
    static constexpr bool A_K_FAST = true, B_N_FAST = false;
    const float *dy, *w;
    float* dx;
    Geom g;
    __device__ float a(int64_t m, int64_t k) const { return dy[up_index(g, m, (int)k)]; }
    __device__ float b(int64_t k, int n) const { return w[(int64_t)n * 4 * g.cout + k]; }
    __device__ void store(int64_t m, int n, float v) const { dx[m * g.cin + n] = v; }
};

// its dW += Xᵀ · gathered dY: M = Cin, K = input pixels, N = 4·Cout
struct UpBwdWeight {
    static constexpr bool A_K_FAST = false, B_N_FAST = true;
    const float *x, *dy;
    float* dw;
    Geom g;
    __device__ float a(int64_t m, int64_t k) const { return x[k * g.cin + m]; }
    __device__ float b(int64_t k, int n) const { return dy[up_index(g, k, n)]; }
    __device__ void store(int64_t m, int n, float v) const { atomicAdd(&dw[m * 4 * g.cout + n], v); }
};

__device__ __forceinline__ Geom geom(int n, int h, int w, int cin, int cout, int k, int stride, int pad) {
    Geom g{n, h, w, cin, cout, k, stride, pad, (h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1};
    return g;
}

}  // namespace conv

#define CONV_GEOM_ARGS int n, int h, int w, int cin, int cout, int k, int stride, int pad
#define CONV_GEOM conv::geom(n, h, w, cin, cout, k, stride, pad)

// grid (⌈N·OH·OW / 64⌉, ⌈Cout / 64⌉)
extern "C" __global__ void __launch_bounds__(256)
    conv2d_fwd_f32(const float* x, const float* wt, const float* bias, const float* res, float* y, int leaky,
                   CONV_GEOM_ARGS) {
    conv::Fwd op{x, wt, bias, res, y, CONV_GEOM, leaky};
    conv::gemm_tile(op, (int64_t)n * op.g.oh * op.g.ow, cout, 0, (int64_t)k * k * cin);
}

// grid (⌈N·H·W / 64⌉, ⌈Cin / 64⌉)
extern "C" __global__ void __launch_bounds__(256)
    conv2d_bwd_data_f32(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS) {
    conv::BwdData op{dy, wt, dx, CONV_GEOM};
    conv::gemm_tile(op, (int64_t)n * h * w, cin, 0, (int64_t)k * k * cout);
}

// grid (⌈k·k·Cin / 64⌉, ⌈Cout / 64⌉, splits); dw zeroed first
extern "C" __global__ void __launch_bounds__(256)
    conv2d_bwd_weight_f32(const float* x, const float* dy, float* dw, CONV_GEOM_ARGS) {
    conv::BwdWeight op{x, dy, dw, CONV_GEOM};
    int64_t k0, k1;
    conv::split_range((int64_t)n * op.g.oh * op.g.ow, &k0, &k1);
    conv::gemm_tile(op, (int64_t)k * k * cin, cout, k0, k1);
}

// grid (⌈N·H·W / 64⌉, ⌈4·Cout / 64⌉)
extern "C" __global__ void __launch_bounds__(256)
    up2_fwd_f32(const float* x, const float* wt, const float* bias, float* y, int n, int h, int w, int cin, int cout) {
    conv::UpFwd op{x, wt, bias, y, conv::geom(n, h, w, cin, cout, 2, 2, 0)};
    conv::gemm_tile(op, (int64_t)n * h * w, 4 * cout, 0, cin);
}

// grid (⌈N·H·W / 64⌉, ⌈Cin / 64⌉)
extern "C" __global__ void __launch_bounds__(256)
    up2_bwd_data_f32(const float* dy, const float* wt, float* dx, int n, int h, int w, int cin, int cout) {
    conv::UpBwdData op{dy, wt, dx, conv::geom(n, h, w, cin, cout, 2, 2, 0)};
    conv::gemm_tile(op, (int64_t)n * h * w, cin, 0, 4 * cout);
}

// grid (⌈Cin / 64⌉, ⌈4·Cout / 64⌉, splits); dw zeroed first
extern "C" __global__ void __launch_bounds__(256)
    up2_bwd_weight_f32(const float* x, const float* dy, float* dw, int n, int h, int w, int cin, int cout) {
    conv::UpBwdWeight op{x, dy, dw, conv::geom(n, h, w, cin, cout, 2, 2, 0)};
    int64_t k0, k1;
    conv::split_range((int64_t)n * h * w, &k0, &k1);
    conv::gemm_tile(op, cin, 4 * cout, k0, k1);
}

// out[c] += Σ over rows of x[row][c] (the bias gradients): block (32, 8), grid (⌈cols / 32⌉,
// row chunks); out zeroed first
extern "C" __global__ void colsum_f32(const float* x, int64_t rows, int cols, int64_t chunk, float* out) {
    __shared__ float part[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float s = 0.0f;
    if (c < cols)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += x[r * cols + c];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        for (int i = 1; i < 8; ++i) s += part[i][threadIdx.x];
        atomicAdd(&out[c], s);
    }
}
