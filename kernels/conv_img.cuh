// The image's 3 × 3 layer (f32 image of 1–3 channels into ≤ 32 f16 channels; the U-Net's
// conv_init) and its weight gradient on tensor cores (included by conv_h16.cu, namespace h16).
//
// The direct f32 kernels (conv_small.cuh `small_fwd`, conv_few.cuh `few_direct_dw`) ran these
// at 12 and 11 TFLOP/s on an H200: 0.29 + 0.33 ms of a pre-training iteration and 0.30 ms of an
// inference batch, for ~160 MB of memory traffic (0.04 ms at 4.2 TB/s). The layer's whole K —
// 9 taps × cin ≤ 27, padded to 32 — is one step of two k16 slices, so here a block builds each
// output pixel's im2col row in shared memory from a staged halo and runs it through mma.sync.
//
// The image and the weights are f32, and the layer's f32 path is the reference (the test bounds
// of the kernels it replaces), so each f32 operand goes in as two halves, hi = f16(v) and
// lo = f16(v − hi): hi·hi + hi·lo + lo·hi leaves ~2⁻²² of v·w out, f32 accumulation — the
// direct kernels' sums to f32 rounding, at three MMAs where one would do (still a few percent
// of the tensor pipe). dY is f16 already: two MMAs (x hi and lo) in the weight gradient.
//
// Block: 128 threads (4 warps) on an 8 × 16 tile of output pixels, warp w on tile rows 2w and
// 2w + 1, thread t on pixel t: it builds its own im2col row, so a warp reads only rows its own
// lanes wrote (__syncwarp, not a block barrier, between). Rows are [hi 32 | lo 32 | 8 pad]
// halves, 144 bytes: any 8 consecutive rows an ldmatrix reads sit in 8 different bank groups.
// Blocks walk the tiles grid-strided (one wave), the weights staged once per block.

namespace h16 {

constexpr int IMG_TH = 8, IMG_TW = 16;           // output tile: rows × columns
constexpr int IMG_SH = IMG_TH + 2, IMG_SW = IMG_TW + 2;  // staged, with the halo
constexpr int IMG_PX = IMG_TH * IMG_TW;          // 128 pixels, one a thread
constexpr int IMG_THREADS = IMG_PX;
constexpr int IMG_K = 32;                        // 9 taps × cin ≤ 27 (and the ones row), padded
constexpr int IMG_ROW = 2 * IMG_K + 8;           // halves an im2col row takes: hi, lo, pad
constexpr int IMG_N = 32;                        // output columns (cout ≤ 32)
constexpr int IMG_NROW = IMG_N + 8;              // halves a weight or dY row takes (80 bytes)
constexpr int IMG_MAX_CIN = 3;

// Whether these kernels take a layer: 3 × 3, stride 1, padding 1, 1–3 input channels, a
// multiple of 8 of at most 32 output channels (the host asks first; the kernels trap otherwise).
HD bool img_mma_fits(int k, int stride, int pad, int cin, int cout) {
    return k == 3 && stride == 1 && pad == 1 && cin >= 1 && cin <= IMG_MAX_CIN && cout >= 8 && cout <= IMG_N &&
           cout % 8 == 0;
}

HD int64_t img_tiles(int n, int h, int w) {
    return (int64_t)n * ((h + IMG_TH - 1) / IMG_TH) * ((w + IMG_TW - 1) / IMG_TW);
}

// The tile's image pixels with the halo into hx ([row][col][cin] f32, zero outside the image).
template <int CIN>
DEV void img_halo(float* hx, const float* x, int img, int y0, int x0, int h, int w) {
    for (int i = threadIdx.x; i < IMG_SH * IMG_SW * CIN; i += IMG_THREADS) {
        const int p = i / CIN, c = i - p * CIN, r = p / IMG_SW, col = p - r * IMG_SW;
        const int gy = y0 - 1 + r, gx = x0 - 1 + col;
        const bool in = (unsigned)gy < (unsigned)h && (unsigned)gx < (unsigned)w;
        hx[i] = in ? x[(((int64_t)img * h + gy) * w + gx) * CIN + c] : 0.0f;
    }
}

// v as hi + lo halves
DEV void split_half(float v, uint16_t& hi, uint16_t& lo) {
    hi = f2h(v);
    lo = f2h(v - h2f(hi));
}

// This thread's im2col row (pixel t of the tile: row t / 16, column t mod 16) from the halo:
// k = tap·cin + c, then (ONES) a 1 at k = 9·cin — the bias's row of the weight gradient — and
// zeros to 32; hi halves at 0.., lo at 32..
template <int CIN, bool ONES>
DEV void img_row(uint16_t* a, const float* hx) {
    const int t = threadIdx.x, py = t / IMG_TW, px = t % IMG_TW;
    alignas(16) uint16_t hi[IMG_K], lo[IMG_K];
#pragma unroll
    for (int k = 0; k < IMG_K; ++k) {
        hi[k] = lo[k] = 0;
        if (k < 9 * CIN) {
            const int tap = k / CIN, c = k % CIN;
            split_half(hx[((py + tap / 3) * IMG_SW + px + tap % 3) * CIN + c], hi[k], lo[k]);
        } else if (ONES && k == 9 * CIN) {
            hi[k] = 0x3c00;  // f16 1.0
        }
    }
    uint16_t* row = a + t * IMG_ROW;
#pragma unroll
    for (int q = 0; q < IMG_K / 8; ++q) {
        store8(row + 8 * q, *reinterpret_cast<const Pack8<uint16_t>*>(hi + 8 * q));
        store8(row + IMG_K + 8 * q, *reinterpret_cast<const Pack8<uint16_t>*>(lo + 8 * q));
    }
}

// The tile's halo into hx, then (after a barrier) this thread's im2col row into a
template <bool ONES>
DEV void img_stage(uint16_t* a, float* hx, const float* x, int cin, int img, int y0, int x0, int h, int w) {
    switch (cin) {
        case 1: img_halo<1>(hx, x, img, y0, x0, h, w); break;
        case 2: img_halo<2>(hx, x, img, y0, x0, h, w); break;
        default: img_halo<3>(hx, x, img, y0, x0, h, w);
    }
    __syncthreads();
    switch (cin) {
        case 1: img_row<1, ONES>(a, hx); break;
        case 2: img_row<2, ONES>(a, hx); break;
        default: img_row<3, ONES>(a, hx);
    }
}

// The tile of walk step b: image, first row, first column
DEV void img_tile(int64_t b, int h, int w, int& img, int& y0, int& x0) {
    const int tx = (w + IMG_TW - 1) / IMG_TW, ty = (h + IMG_TH - 1) / IMG_TH;
    const int64_t r = b / tx;
    x0 = (int)(b - r * tx) * IMG_TW;
    img = (int)(r / ty);
    y0 = (int)(r - (int64_t)img * ty) * IMG_TH;
}

// y (f16, cout channels) = leaky?(conv3(x) + bias)
DEV void img_fwd(const float* x, const float* wt, const float* bias, uint16_t* y, int leaky, int n, int h, int w,
                 int cin, int cout) {
    __shared__ float hx[IMG_SH * IMG_SW * IMG_MAX_CIN];
    alignas(16) __shared__ uint16_t as[IMG_PX * IMG_ROW];
    alignas(16) __shared__ uint16_t bs[2 * IMG_K * IMG_NROW];  // hi rows, then lo rows: [k][n]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // the weights ([tap][ci][co] f32 = rows k = tap·cin + ci) as hi and lo, zero past 9·cin and cout
    for (int i = threadIdx.x; i < IMG_K * IMG_N; i += IMG_THREADS) {
        const int k = i / IMG_N, c = i % IMG_N;
        uint16_t hi = 0, lo = 0;
        if (k < 9 * cin && c < cout) split_half(wt[k * cout + c], hi, lo);
        bs[k * IMG_NROW + c] = hi, bs[(IMG_K + k) * IMG_NROW + c] = lo;
    }
    // A: lane l reads pixel row 16 i + l mod 16 at k 8 (l / 16) (+ 16 kk, + 32 for lo); B: rows
    // k = 16 kk + l mod 8 + 8 ((l / 8) mod 2), columns 16 j + 8 (l / 16), transposed
    const int arow = (32 * warp + lane % 16) * IMG_ROW + 8 * (lane / 16);
    const int brow = (lane % 8 + 8 * ((lane / 8) & 1)) * IMG_NROW + 8 * (lane / 16);
    // this lane's bias: columns 8 j + 2 (l mod 4), + 1
    float bv[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int c = 8 * j + 2 * (lane % 4) + e;
            bv[j][e] = bias && c < cout ? bias[c] : 0.0f;
        }
    const int64_t tiles = img_tiles(n, h, w);
    for (int64_t b = blockIdx.x; b < tiles; b += gridDim.x) {
        int img, y0, x0;
        img_tile(b, h, w, img, y0, x0);
        __syncthreads();  // every warp is done with the last tile's halo (and the weights are in)
        img_stage<false>(as, hx, x, cin, img, y0, x0, h, w);
        __syncwarp();  // the warp's rows are its own lanes'
        float acc[2][4][4] = {};
#pragma unroll
        for (int kk = 0; kk < IMG_K; kk += 16) {
            uint32_t ah[2][4], al[2][4], bh[4][2], bl[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                ldsm_x4(ah[i], as + arow + 16 * i * IMG_ROW + kk);
                ldsm_x4(al[i], as + arow + 16 * i * IMG_ROW + IMG_K + kk);
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                ldsm_b2(bh + 2 * j, bs + brow + kk * IMG_NROW + 16 * j);
                ldsm_b2(bl + 2 * j, bs + brow + (IMG_K + kk) * IMG_NROW + 16 * j);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    conv::mma_f16(acc[i][j], al[i], bh[j]);  // the small terms first
                    conv::mma_f16(acc[i][j], ah[i], bl[j]);
                    conv::mma_f16(acc[i][j], ah[i], bh[j]);
                }
        }
        // bias and LeakyReLU, rounded to f16 into the warp's own rows (c0, c1 at pixel g, columns
        // 2t, 2t + 1; c2, c3 at pixel g + 8), then whole 16-byte runs of a pixel's channels out
        __syncwarp();  // every lane's ldmatrix of these rows is done
        const int gq = lane / 4, tq = lane % 4;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int c = 8 * j + 2 * tq;
                    float v[2] = {acc[i][j][2 * hh] + bv[j][0], acc[i][j][2 * hh + 1] + bv[j][1]};
                    if (leaky)
#pragma unroll
                        for (int e = 0; e < 2; ++e) v[e] = v[e] > 0.0f ? v[e] : conv::SLOPE * v[e];
                    uint16_t* o = as + (32 * warp + 16 * i + gq + 8 * hh) * IMG_ROW + c;
                    o[0] = f2h(v[0]), o[1] = f2h(v[1]);
                }
        __syncwarp();
        // lane l: channels 8 (l mod 4) .. of the warp's pixels l / 4, + 8, .. (tile rows 2w, 2w + 1)
        const int q = lane % 4;
        if (8 * q < cout)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int p = 8 * i + lane / 4, yy = y0 + 2 * warp + p / IMG_TW, xx = x0 + p % IMG_TW;
                if (yy < h && xx < w)
                    store8(y + (((int64_t)img * h + yy) * w + xx) * cout + 8 * q,
                           load8(as + (32 * warp + p) * IMG_ROW + 8 * q));
            }
    }
}

// dW ([tap][ci][co] f32, zeroed) += Σ over the pixels of the tiles blockIdx.x, + gridDim.x, .. of
// im2col(x) ⊗ dY, and db (f32, zeroed; where set) += dY's column sums: the ones row of the im2col
// (k = 9·cin) makes them row 9·cin of the same product. M = the 32 im2col rows (A transposed out
// of the pixel rows), N = cout, K = pixels: warp w's two tile rows are its two k16 slices. The
// four warps' sums meet in shared memory, then one atomic per weight per block.
DEV void img_dw(const float* x, const uint16_t* dy, float* dw, float* db, int n, int h, int w, int cin, int cout) {
    __shared__ float hx[IMG_SH * IMG_SW * IMG_MAX_CIN];
    alignas(16) __shared__ uint16_t as[IMG_PX * IMG_ROW];
    alignas(16) __shared__ uint16_t ds[IMG_PX * IMG_NROW];
    __shared__ float red[IMG_K * IMG_N];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = threadIdx.x; i < IMG_K * IMG_N; i += IMG_THREADS) red[i] = 0.0f;
    // A (rows k, columns pixels) from the pixel rows, transposed: lane l reads pixel
    // l mod 8 + 8 (l / 16) of the slice at k 8 ((l / 8) mod 2) (+ 16 i, + 32 for lo); B (rows
    // pixels, columns n) from the dY rows as img_fwd's B from its weights
    const int arow = (32 * warp + lane % 8 + 8 * (lane / 16)) * IMG_ROW + 8 * ((lane / 8) % 2);
    const int brow = (32 * warp + lane % 8 + 8 * ((lane / 8) & 1)) * IMG_NROW + 8 * (lane / 16);
    float acc[2][4][4] = {};
    const int64_t tiles = img_tiles(n, h, w);
    const int q = lane % 4;
    for (int64_t b = blockIdx.x; b < tiles; b += gridDim.x) {
        int img, y0, x0;
        img_tile(b, h, w, img, y0, x0);
        // dY of the warp's pixels, lane l: channels 8 (l mod 4) .. of pixels l / 4, + 8, .. (zero
        // outside the image and past cout), loaded before the halo's wait
        Pack8<uint16_t> d[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int p = 8 * i + lane / 4, yy = y0 + 2 * warp + p / IMG_TW, xx = x0 + p % IMG_TW;
            d[i] = Pack8<uint16_t>{};
            if (yy < h && xx < w && 8 * q < cout) d[i] = load8(dy + (((int64_t)img * h + yy) * w + xx) * cout + 8 * q);
        }
        __syncthreads();  // every warp is done with the last tile's halo
        img_stage<true>(as, hx, x, cin, img, y0, x0, h, w);
#pragma unroll
        for (int i = 0; i < 4; ++i) store8(ds + (32 * warp + 8 * i + lane / 4) * IMG_NROW + 8 * q, d[i]);
        __syncwarp();  // the warp's rows are its own lanes'
#pragma unroll
        for (int s = 0; s < 2; ++s) {  // the warp's two tile rows: 16 pixels of K each
            uint32_t ah[2][4], al[2][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                ldsm_x4_t(ah[i], as + arow + 16 * s * IMG_ROW + 16 * i);
                ldsm_x4_t(al[i], as + arow + 16 * s * IMG_ROW + IMG_K + 16 * i);
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) ldsm_b2(bf + 2 * j, ds + brow + 16 * s * IMG_NROW + 16 * j);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    conv::mma_f16(acc[i][j], al[i], bf[j]);
                    conv::mma_f16(acc[i][j], ah[i], bf[j]);
                }
        }
        __syncwarp();  // every lane's ldmatrix is done before the next tile's rows
    }
    // C fragments: c0, c1 at (row k = g, columns 2t, 2t + 1), c2, c3 at row g + 8
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                atomicAdd(&red[(16 * i + gq + 8 * (e / 2)) * IMG_N + 8 * j + 2 * tq + e % 2], acc[i][j][e]);
    __syncthreads();
    for (int i = threadIdx.x; i < IMG_K * IMG_N; i += IMG_THREADS) {
        const int k = i / IMG_N, c = i % IMG_N;
        if (c >= cout) continue;
        if (k < 9 * cin) atomicAdd(&dw[k * cout + c], red[i]);
        else if (k == 9 * cin && db) atomicAdd(&db[c], red[i]);
    }
}

}  // namespace h16
