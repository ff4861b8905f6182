// Image and tile movement: bilinear resize with align_corners (the spot-embedding windows,
// nn.UpsamplingBilinear2d; model::unet::resize_bilinear_ac is the reference) and the
// frame-weighted accumulation of overlapping inference tiles into a band of rows
// (stages::score::BandAverager is the reference).

#include <cstdint>

// out (n × oh × ow × c) from src (n × h × w × c), align_corners=True, f32 arithmetic as the CPU
extern "C" __global__ void resize_bilinear_ac_f32(const float* src, int n, int h, int w, int c, int oh, int ow,
                                                  float* out) {
    const float ry = oh > 1 ? (float)(h - 1) / (float)(oh - 1) : 0.0f;
    const float rx = ow > 1 ? (float)(w - 1) / (float)(ow - 1) : 0.0f;
    const int64_t total = (int64_t)n * oh * ow * c;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)blockDim.x * gridDim.x) {
        const int k = (int)(i % c);
        const int64_t p = i / c;
        const int x = (int)(p % ow), y = (int)(p / ow % oh), img = (int)(p / ((int64_t)ow * oh));
        const float fy = ry * (float)y, fx = rx * (float)x;
        const int y0 = min((int)fy, h - 1), x0 = min((int)fx, w - 1);
        const int y1 = min(y0 + 1, h - 1), x1 = min(x0 + 1, w - 1);
        const float ly = fy - (float)y0, lx = fx - (float)x0;
        const float* s = src + (int64_t)img * h * w * c;
        auto v = [&](int yy, int xx) { return s[((int64_t)yy * w + xx) * c + k]; };
        out[i] = (1.0f - ly) * ((1.0f - lx) * v(y0, x0) + lx * v(y0, x1)) + ly * ((1.0f - lx) * v(y1, x0) + lx * v(y1, x1));
    }
}

// Add one tile's HR (split × split × r, channels last) at band column c0 of a band of split rows
// × wp columns: acc += f·hr, weight += f with f = 1 inside the tile's frame (bound pixels in
// from each edge) and 0 on it. Tiles of one band are added one launch after another.
extern "C" __global__ void tile_accumulate_f32(const float* hr, int split, int bound, int r, int wp, int c0, float* acc,
                                               float* weight) {
    const int64_t total = (int64_t)split * split * r;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)blockDim.x * gridDim.x) {
        const int k = (int)(i % r);
        const int64_t p = i / r;
        const int x = (int)(p % split), y = (int)(p / split);
        if (y < bound || y + bound >= split || x < bound || x + bound >= split || c0 + x >= wp) continue;
        const int64_t at = (int64_t)y * wp + c0 + x;
        acc[at * r + k] += hr[i];
        if (k == 0) weight[at] += 1.0f;
    }
}

// rows (done × (wp − 2·bound) × r) = acc / weight over the band's first `done` rows, padding
// columns dropped (weight 0 reads as 1)
extern "C" __global__ void band_average_f32(const float* acc, const float* weight, int done, int wp, int bound, int r,
                                            float* rows) {
    const int w = wp - 2 * bound;
    const int64_t total = (int64_t)done * w * r;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)blockDim.x * gridDim.x) {
        const int k = (int)(i % r);
        const int64_t p = i / r;
        const int x = (int)(p % w), y = (int)(p / w);
        const int64_t at = (int64_t)y * wp + bound + x;
        const float wt = weight[at];
        rows[i] = acc[at * r + k] * (wt == 0.0f ? 1.0f : 1.0f / wt);
    }
}

// dst[i] = i < keep ? src[i + shift] : 0 (the band moving down; src and dst distinct)
extern "C" __global__ void band_shift_f32(const float* src, int64_t shift, int64_t keep, int64_t total, float* dst) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)blockDim.x * gridDim.x)
        dst[i] = i < keep ? src[i + shift] : 0.0f;
}
