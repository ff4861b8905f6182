// NMF by coordinate descent (scikit-learn's solver 'cd', SPEC §6; src/stages/nmf.rs is the
// reference): the products X·M with M cast to f32 (dense data) or in f64 (sparse data), the
// Gram matrices MᵀM and one sweep of coordinate updates over the rows, all in f64 like the
// reference except where it runs f32 BLAS.

#include <cstdint>

extern "C" __global__ void f64_to_f32(const double* a, int64_t n, float* b) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x)
        b[i] = (float)a[i];
}

// Y (rows × c, f64) = X · Z with X in CSR (f32 values) and Z f64; one warp per row
extern "C" __global__ void spmm_f64(const unsigned* indptr, const unsigned* indices, const float* data, int64_t rows,
                                   int c, const double* z, double* y) {
    const int64_t row = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const unsigned a = indptr[row], b = indptr[row + 1];
    for (int col = lane; col < c; col += 32) {
        double acc = 0.0;
        for (unsigned e = a; e < b; ++e) acc += (double)data[e] * z[(int64_t)indices[e] * c + col];
        y[row * c + col] = acc;
    }
}

// G (r × r) = Aᵀ A for A rows × r (f64): one block per entry (t, q), block 256
extern "C" __global__ void gram_f64(const double* a, int64_t rows, int r, double* g) {
    __shared__ double part[8];
    const int t = blockIdx.x / r, q = blockIdx.x % r;
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) acc += a[i * r + t] * a[i * r + q];
    for (int o = 16; o > 0; o /= 2) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < blockDim.x / 32; ++w) acc += part[w];
        g[blockIdx.x] = acc;
    }
}

// One coordinate-descent sweep over the rows of A (rows × r) for ‖Y − A Bᵀ‖ given Y·B (yb, f64,
// or yb32 in f32 when given) and BᵀB (btb): each row's r coordinates in order, clipped at 0;
// *viol += the projected-gradient norm (L1). One thread per row; BᵀB in shared memory.
extern "C" __global__ void cd_sweep_f64(double* a, int64_t rows, int r, const double* yb, const float* yb32,
                                        const double* btb, double* viol) {
    extern __shared__ double g[];
    for (int i = threadIdx.x; i < r * r; i += blockDim.x) g[i] = btb[i];
    __syncthreads();
    const int64_t row = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    double v = 0.0;
    if (row < rows) {
        double* ai = a + row * r;
        for (int t = 0; t < r; ++t) {
            double grad = yb32 ? -(double)yb32[row * r + t] : -yb[row * r + t];
            for (int q = 0; q < r; ++q) grad += g[t * r + q] * ai[q];
            const double pg = ai[t] == 0.0 ? fmin(grad, 0.0) : grad;
            v += fabs(pg);
            const double hess = g[t * r + t];
            if (hess != 0.0) ai[t] = fmax(ai[t] - grad / hess, 0.0);
        }
    }
    for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) atomicAdd(viol, v);
}
