// The GCN autoencoder's own kernels (SPEC §7; src/stages/gcn.rs is the reference): CSR sparse
// × dense products with the layer's activation fused, the input gather, the output loss and
// the small backward pieces. Dense layer products use dense_f32 (conv.cu).

#include <cstdint>

namespace gcn {
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
}  // namespace gcn

// h0[i] = the NMF score of spot rows0[i] (< n) or sigmoid of its learnable pseudo score
extern "C" __global__ void gcn_gather_input_f32(const float* score, const float* pseudo, const unsigned* rows0,
                                                int64_t nrows, int64_t n, int r, float* h0) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nrows * r;
         i += (int64_t)blockDim.x * gridDim.x) {
        const int64_t row = i / r, q = i % r, g = rows0[row];
        h0[i] = g < n ? score[g * r + q] : gcn::sigmoid(pseudo[(g - n) * r + q]);
    }
}

// Y (rows × c) = A · Z with A in CSR; act 0: none, 1: ReLU, 2: sigmoid. One warp per row,
// lanes over columns; each output summed in the CSR's order, as the CPU does.
extern "C" __global__ void spmm_f32(const unsigned* indptr, const unsigned* indices, const float* data, int64_t rows,
                                   int c, const float* z, int act, float* y) {
    const int64_t row = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const unsigned a = indptr[row], b = indptr[row + 1];
    for (int col = lane; col < c; col += 32) {
        float acc = 0.0f;
        for (unsigned e = a; e < b; ++e) acc += data[e] * z[(int64_t)indices[e] * c + col];
        if (act == 1) acc = fmaxf(acc, 0.0f);
        else if (act == 2) acc = gcn::sigmoid(acc);
        y[row * c + col] = acc;
    }
}

// du = scale · (y − s) · y (1 − y) over the n × r outputs; *loss += Σ (y − s)² (f64)
extern "C" __global__ void gcn_output_loss_f32(const float* y, const float* score, int64_t count, float scale,
                                               float* du, double* loss) {
    __shared__ double part[8];
    double acc = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)blockDim.x * gridDim.x) {
        const float e = y[i] - score[i];
        acc += (double)e * (double)e;
        du[i] = scale * e * y[i] * (1.0f - y[i]);
    }
    for (int o = 16; o > 0; o /= 2) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < blockDim.x / 32; ++w) acc += part[w];
        atomicAdd(loss, acc);
    }
}

// du = h > 0 ? dh : 0 (ReLU backward from the activation)
extern "C" __global__ void relu_mask_f32(const float* h, const float* dh, int64_t count, float* du) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)blockDim.x * gridDim.x)
        du[i] = h[i] > 0.0f ? dh[i] : 0.0f;
}

// gradient of the pseudo scores through their sigmoid (grad zeroed first: pseudo spots outside
// the plan's input rows get none)
extern "C" __global__ void gcn_pseudo_grad_f32(const unsigned* rows0, int64_t nrows, int64_t n, int r,
                                               const float* dh, const float* h0, float* grad) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nrows * r;
         i += (int64_t)blockDim.x * gridDim.x) {
        const int64_t row = i / r, q = i % r, g = rows0[row];
        if (g >= n) {
            const float s = h0[i];
            grad[(g - n) * r + q] = dh[i] * s * (1.0f - s);
        }
    }
}
