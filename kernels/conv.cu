// Convolutions of the backend seam as implicit GEMMs, f32 storage and f32 accumulation: the
// CPU backend's conv.rs is their reference. Layouts as there: activations
// NHWC, conv weights [ky][kx][ci][co], transposed-conv weights [ci][ky][kx][co].
//
// One tiled GEMM body (64 × 64 block tile, K step 16, 256 threads with 4 × 4 outputs each)
// takes an operand policy: how element (m, k) of A and (k, n) of B are gathered from the
// tensors (im2col on the fly, zero outside the image) and what the epilogue does with C
// (bias, LeakyReLU, residual; scatter of the transposed conv; atomic adds for split-K weight
// gradients). Two GEMM bodies take the same policies: f32 SIMT (bit-for-bit the CPU's
// arithmetic up to summation order) and TF32 tensor cores (mma.sync, f32 accumulation).

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

// The same GEMM on tensor cores: TF32 operands (f32 with a 10-bit mantissa, rounded to
// nearest on the way into shared memory), f32 accumulation, mma.sync m16n8k8 (sm_80+).
// Block tile 64 × 64 × 32, 8 warps as 2 (m) × 4 (n), each warp 32 × 16 = 2 × 2 MMA tiles.
// Shared rows are 36 words apart so the fragment reads (rows g, columns t) hit 32 banks.
constexpr int TK = 32, TS = TK + 4;

__device__ __forceinline__ uint32_t to_tf32(float v) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return r;
}

__device__ __forceinline__ void mma_tf32(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <class Op>
__device__ __forceinline__ void gemm_tile_tc(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    __shared__ uint32_t As[BM][TS];  // [m][k]
    __shared__ uint32_t Bs[BN][TS];  // [n][k]
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = (warp / 4) * 32, wn = (warp % 4) * 16;
    const int64_t m0 = (int64_t)blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    float acc[2][2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
    for (int64_t kt = k0; kt < k1; kt += TK) {
#pragma unroll
        for (int i = 0; i < BM * TK / THREADS; ++i) {
            const int e = tid + THREADS * i;
            const int mm = Op::A_K_FAST ? e / TK : e % BM;
            const int kk = Op::A_K_FAST ? e % TK : e / BM;
            const int64_t m = m0 + mm, k = kt + kk;
            As[mm][kk] = to_tf32((m < M && k < k1) ? op.a(m, k) : 0.0f);
        }
#pragma unroll
        for (int i = 0; i < BN * TK / THREADS; ++i) {
            const int e = tid + THREADS * i;
            const int nn = Op::B_N_FAST ? e % BN : e / TK;
            const int kk = Op::B_N_FAST ? e / BN : e % TK;
            const int n = n0 + nn;
            const int64_t k = kt + kk;
            Bs[nn][kk] = to_tf32((n < N && k < k1) ? op.b(k, n) : 0.0f);
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < TK; ks += 8) {
            uint32_t a[2][4], b[2][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = wm + 16 * i + g;
                a[i][0] = As[r][ks + t];
                a[i][1] = As[r + 8][ks + t];
                a[i][2] = As[r][ks + t + 4];
                a[i][3] = As[r + 8][ks + t + 4];
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int c = wn + 8 * j + g;
                b[j][0] = Bs[c][ks + t];
                b[j][1] = Bs[c][ks + t + 4];
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) mma_tf32(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int64_t m = m0 + wm + 16 * i + g + (q >= 2 ? 8 : 0);
                const int n = n0 + wn + 8 * j + 2 * t + (q & 1);
                if (m < M && n < N) op.store(m, n, acc[i][j][q]);
            }
}

// Either body: f32 SIMT (exact path) or TF32 tensor cores.
template <bool TC, class Op>
__device__ __forceinline__ void gemm(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    if constexpr (TC) gemm_tile_tc(op, M, N, k0, k1);
    else gemm_tile(op, M, N, k0, k1);
}

// The K range of this block's split (blockIdx.z of gridDim.z), in whole BK steps.
__device__ __forceinline__ void split_range(int64_t K, int64_t* k0, int64_t* k1) {
    const int64_t per = ((K + gridDim.z - 1) / gridDim.z + TK - 1) / TK * TK;
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

// C = A · B (+ bias) for small dense operands given by strides (the GCN's layers):
// A(m, k) = A[m·sam + k·sak], B(k, n) = B[k·sbk + n·sbn]; with split-K (gridDim.z > 1) the
// splits add atomically into a zeroed C and only split 0 adds the bias.
struct Dense {
    static constexpr bool A_K_FAST = true, B_N_FAST = true;
    const float *A, *B, *bias;
    float* C;
    int64_t sam, sak, sbk, sbn;
    int ldc, atomic;
    __device__ float a(int64_t m, int64_t k) const { return A[m * sam + k * sak]; }
    __device__ float b(int64_t k, int n) const { return B[k * sbk + n * sbn]; }
    __device__ void store(int64_t m, int n, float v) const {
        if (bias && blockIdx.z == 0) v += bias[n];
        if (atomic) atomicAdd(&C[m * ldc + n], v);
        else C[m * ldc + n] = v;
    }
};

__device__ __forceinline__ Geom geom(int n, int h, int w, int cin, int cout, int k, int stride, int pad) {
    Geom g{n, h, w, cin, cout, k, stride, pad, (h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1};
    return g;
}

}  // namespace conv

#define CONV_GEOM_ARGS int n, int h, int w, int cin, int cout, int k, int stride, int pad
#define CONV_GEOM conv::geom(n, h, w, cin, cout, k, stride, pad)
#define UP_ARGS int n, int h, int w, int cin, int cout
#define UP_GEOM conv::geom(n, h, w, cin, cout, 2, 2, 0)

namespace conv {
// y = conv: grid (⌈N·OH·OW / 64⌉, ⌈Cout / 64⌉)
template <bool TC>
__device__ void fwd(const float* x, const float* wt, const float* bias, const float* res, float* y, int leaky,
                    CONV_GEOM_ARGS) {
    Fwd op{x, wt, bias, res, y, CONV_GEOM, leaky};
    gemm<TC>(op, (int64_t)n * op.g.oh * op.g.ow, cout, 0, (int64_t)k * k * cin);
}
// dX: grid (⌈N·H·W / 64⌉, ⌈Cin / 64⌉)
template <bool TC>
__device__ void bwd_data(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS) {
    BwdData op{dy, wt, dx, CONV_GEOM};
    gemm<TC>(op, (int64_t)n * h * w, cin, 0, (int64_t)k * k * cout);
}
// dW: grid (⌈k·k·Cin / 64⌉, ⌈Cout / 64⌉, splits); dw zeroed first
template <bool TC>
__device__ void bwd_weight(const float* x, const float* dy, float* dw, CONV_GEOM_ARGS) {
    BwdWeight op{x, dy, dw, CONV_GEOM};
    int64_t k0, k1;
    split_range((int64_t)n * op.g.oh * op.g.ow, &k0, &k1);
    gemm<TC>(op, (int64_t)k * k * cin, cout, k0, k1);
}
// transposed conv: grid (⌈N·H·W / 64⌉, ⌈4·Cout / 64⌉)
template <bool TC>
__device__ void up_fwd(const float* x, const float* wt, const float* bias, float* y, UP_ARGS) {
    UpFwd op{x, wt, bias, y, UP_GEOM};
    gemm<TC>(op, (int64_t)n * h * w, 4 * cout, 0, cin);
}
// its dX: grid (⌈N·H·W / 64⌉, ⌈Cin / 64⌉)
template <bool TC>
__device__ void up_bwd_data(const float* dy, const float* wt, float* dx, UP_ARGS) {
    UpBwdData op{dy, wt, dx, UP_GEOM};
    gemm<TC>(op, (int64_t)n * h * w, cin, 0, 4 * cout);
}
// its dW: grid (⌈Cin / 64⌉, ⌈4·Cout / 64⌉, splits); dw zeroed first
template <bool TC>
__device__ void up_bwd_weight(const float* x, const float* dy, float* dw, UP_ARGS) {
    UpBwdWeight op{x, dy, dw, UP_GEOM};
    int64_t k0, k1;
    split_range((int64_t)n * h * w, &k0, &k1);
    gemm<TC>(op, cin, 4 * cout, k0, k1);
}
}  // namespace conv

// Each convolution twice: _f32 (SIMT, the CPU-exact path) and _tf32 (tensor cores).
#define CONV_KERNELS(SUFFIX, TC)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        conv2d_fwd_##SUFFIX(const float* x, const float* wt, const float* bias, const float* res, float* y,          \
                            int leaky, CONV_GEOM_ARGS) {                                                              \
        conv::fwd<TC>(x, wt, bias, res, y, leaky, n, h, w, cin, cout, k, stride, pad);                                \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        conv2d_bwd_data_##SUFFIX(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS) {                      \
        conv::bwd_data<TC>(dy, wt, dx, n, h, w, cin, cout, k, stride, pad);                                           \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        conv2d_bwd_weight_##SUFFIX(const float* x, const float* dy, float* dw, CONV_GEOM_ARGS) {                     \
        conv::bwd_weight<TC>(x, dy, dw, n, h, w, cin, cout, k, stride, pad);                                          \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        up2_fwd_##SUFFIX(const float* x, const float* wt, const float* bias, float* y, UP_ARGS) {                    \
        conv::up_fwd<TC>(x, wt, bias, y, n, h, w, cin, cout);                                                         \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        up2_bwd_data_##SUFFIX(const float* dy, const float* wt, float* dx, UP_ARGS) {                                \
        conv::up_bwd_data<TC>(dy, wt, dx, n, h, w, cin, cout);                                                        \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        up2_bwd_weight_##SUFFIX(const float* x, const float* dy, float* dw, UP_ARGS) {                               \
        conv::up_bwd_weight<TC>(x, dy, dw, n, h, w, cin, cout);                                                       \
    }

CONV_KERNELS(f32, false)
CONV_KERNELS(tf32, true)

// grid (⌈M / 64⌉, ⌈N / 64⌉, splits); f32 SIMT (the GCN's layers are small and launch-bound)
extern "C" __global__ void __launch_bounds__(256)
    dense_f32(const float* A, int64_t sam, int64_t sak, const float* B, int64_t sbk, int64_t sbn, const float* bias,
              float* C, int ldc, int64_t M, int N, int64_t K, int atomic) {
    conv::Dense op{A, B, bias, C, sam, sak, sbk, sbn, ldc, atomic};
    int64_t k0, k1;
    conv::split_range(K, &k0, &k1);
    conv::gemm_tile(op, M, N, k0, k1);
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
