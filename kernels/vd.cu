// The Voronoi (VD) score of one component (SPEC §8; src/stages/voronoi.rs is the reference):
// nearest-spot fill in half precision, the k × k box blur with OpenCV's reflect-101 border as
// two separable passes with f64 sums, the blur's change statistics that stop the passes, and
// the final rescale and mask.

#include <cstdint>
#include <cuda_fp16.h>

namespace vd {
__device__ __forceinline__ int reflect101(int i, int n) {
    if (n == 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - 2 - i;
    return i;
}
__device__ __forceinline__ float half_round(float v) { return __half2float(__float2half_rn(v)); }

// stats[0] += v, stats[1] += c over the block (256 threads)
__device__ __forceinline__ void add_stats(double v, double c, double* stats) {
    for (int o = 16; o > 0; o /= 2) {
        v += __shfl_down_sync(0xffffffffu, v, o);
        c += __shfl_down_sync(0xffffffffu, c, o);
    }
    if (threadIdx.x % 32 == 0 && (v != 0.0 || c != 0.0)) {
        atomicAdd(&stats[0], v);
        atomicAdd(&stats[1], c);
    }
}
}  // namespace vd

#define PIXELS(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

// out = the half-precision score of each pixel's nearest spot for component t; stats += (sum,
// count) of the non-zero values. Block 256, grid-stride.
extern "C" __global__ void vd_fill_f32(const unsigned* near, int64_t n, const float* scores, int r, int t, float* out,
                                       double* stats) {
    double s = 0.0, c = 0.0;
    PIXELS(i, n) {
        const float v = vd::half_round(scores[(int64_t)near[i] * r + t]);
        out[i] = v;
        if (v != 0.0f) {
            s += v;
            c += 1.0;
        }
    }
    vd::add_stats(s, c, stats);
}

// hs[y][x] = Σ_{|d| ≤ a} src[y][reflect(x + d)] (f64)
extern "C" __global__ void box_rows_f64(const float* src, int64_t h, int w, int a, double* hs) {
    PIXELS(i, h * w) {
        const int64_t y = i / w;
        const int x = (int)(i % w);
        double s = 0.0;
        for (int d = -a; d <= a; ++d) s += src[y * w + vd::reflect101(x + d, w)];
        hs[i] = s;
    }
}

// out[y][x] = scale · Σ_{|d| ≤ a} hs[reflect(y + d)][x]; stats += (Σ |src − out|, count) over
// the pixels that changed
extern "C" __global__ void box_cols_f32(const double* hs, const float* src, int64_t h, int w, int a, double scale,
                                        float* out, double* stats) {
    double s = 0.0, c = 0.0;
    PIXELS(i, h * w) {
        const int y = (int)(i / w), x = (int)(i % w);
        double acc = 0.0;
        for (int d = -a; d <= a; ++d) acc += hs[(int64_t)vd::reflect101(y + d, (int)h) * w + x];
        const float v = (float)(acc * scale);
        out[i] = v;
        const float diff = fabsf(src[i] - v);
        if (diff != 0.0f) {
            s += diff;
            c += 1.0;
        }
    }
    vd::add_stats(s, c, stats);
}

// stats[0] += Σ cur over the pixels whose filled value is non-zero
extern "C" __global__ void vd_masked_sum(const unsigned* near, const float* scores, int r, int t, const float* cur,
                                         int64_t n, double* stats) {
    double s = 0.0;
    PIXELS(i, n) {
        if (vd::half_round(scores[(int64_t)near[i] * r + t]) != 0.0f) s += cur[i];
    }
    vd::add_stats(s, 0.0, stats);
}

// the component's final values: rescaled to the input mean, clamped to [0, 1], half
// precision inside the mask, 0 outside
extern "C" __global__ void vd_finish_f32(const float* cur, const unsigned char* mask, int64_t n, float mean_in,
                                         float mean_out, float* out) {
    PIXELS(i, n) {
        float v = cur[i];
        if (mean_out > 0.0f) v = fminf(fmaxf(v / mean_out * mean_in, 0.0f), 1.0f);
        out[i] = mask[i] ? vd::half_round(v) : 0.0f;
    }
}
