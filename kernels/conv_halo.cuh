// 3 × 3 stride-1 convolutions into at most 32 columns from a staged halo (included by
// conv_h16.cu, namespace h16): the full-resolution layers of the U-Net (32 channels at 256²),
// forward and data gradient.
//
// The implicit GEMM (conv_h16.cu `gemm`) copies a K step of one tap × 32 channels per step:
// each input pixel reaches shared memory nine times, and a 128-row tile of a 32 → 32 layer
// runs its 9 steps through a 3-stage pipeline whose fill and epilogue weigh as much as its
// MMAs. Here a block takes a 16 × 16 tile of output pixels, copies its input once with a
// one-pixel halo (18 × 18 pixels × 32 channels) and the weights of those 32 channels (9 taps ×
// 32 × 32), and reads the nine taps as shifted views: ldmatrix takes each of its rows from an
// address of its own, so a tap is an offset added to every lane's row address. Staged pixels
// are 40 halves (80 bytes) apart, so any eight consecutive pixels an ldmatrix reads sit in
// eight different 16-byte bank groups whatever the shift. Wider inputs run 32 channels at a
// time; the two parts of a concatenation (the decoder's, read in place) are each multiples of
// 32 channels, so each chunk lies in one part.
//
// Warp w owns tile rows 2w and 2w + 1 (two 16-pixel MMA rows) and all 32 columns: per 16-wide
// K slice two A and two B ldmatrix for eight MMAs.
//
// The data gradient of a stride-1, pad-1 layer is the same sum over dY with the taps mirrored
// (dX(y, x) = Σ dY(y + 1 − ky, x + 1 − kx) · W[ky, kx]ᵀ) and the weights packed [tap][co][ci].

namespace h16 {

constexpr int HALO_T = 16;                   // output tile side
constexpr int HALO_S = HALO_T + 2;           // staged side, with the halo
constexpr int HALO_PX = HALO_S * HALO_S;     // 324 staged pixels
constexpr int HALO_C = 32;                   // channels staged at once
constexpr int HALO_ROW = HALO_C + 8;         // halves per staged pixel (80 bytes)
constexpr int HALO_N = 32;                   // at most this many output columns

// Output tile of block b over n images of h × w: image, first row and first column.
struct HaloTile {
    int img, y0, x0;
};
DEV HaloTile halo_tile(int b, int h, int w) {
    const int tx = (w + HALO_T - 1) / HALO_T, ty = (h + HALO_T - 1) / HALO_T;
    const int x = b % tx, r = b / tx;
    return HaloTile{r / ty, (r % ty) * HALO_T, x * HALO_T};
}

// Stage channels c0 .. c0 + 31 of the tile's input with its halo (zero outside the image) into
// hs, from x (its first `ca` channels of C; all C where x2 is null) or x2 (the rest), by NT
// threads. Part of a cp.async group the caller commits.
template <int NT = THREADS>
DEV void halo_stage(uint16_t* hs, const uint16_t* x, const uint16_t* x2, int ca, int C, int c0, const HaloTile& t,
                    int h, int w) {
    const bool second = x2 && c0 >= ca;
    const uint16_t* src = second ? x2 : x;
    const int cs = !x2 ? C : second ? C - ca : ca, cc = second ? c0 - ca : c0;
    for (int p = threadIdx.x; p < HALO_PX * (HALO_C / 8); p += NT) {
        const int px = p / (HALO_C / 8), q = p % (HALO_C / 8);
        const int gy = t.y0 - 1 + px / HALO_S, gx = t.x0 - 1 + px % HALO_S;
        const bool ok = gy >= 0 && gy < h && gx >= 0 && gx < w;
        const int64_t at = (((int64_t)t.img * h + gy) * w + gx) * cs + cc + 8 * q;
        cp_async16(hs + px * HALO_ROW + 8 * q, ok ? src + at : src, ok);
    }
}

// Stage rows (tap, c0 .. c0 + 31) of packed weights ([tap][C][np] f16) as 32 columns, zero past
// np, rows swizzled as the GEMM's B tiles.
DEV void halo_weights(uint16_t* ws, const uint16_t* wt, int np, int C, int c0) {
    for (int p = threadIdx.x; p < 9 * HALO_C * 4; p += THREADS) {
        const int r = p / 4, q = p % 4, tap = r / HALO_C;
        const bool ok = 8 * q < np;
        cp_async16(ws + swizzled<4>(r, q), ok ? wt + ((int64_t)tap * C + c0 + r % HALO_C) * np + 8 * q : wt, ok);
    }
}

// out(m, n) for the block's tile: Σ over taps and C channels of the staged input at the pixel
// shifted by the tap (mirrored where DX) times the weights; `out.store` as the GEMM's
// epilogues (FwdOut, DxOutH) with m the pixel's index and N ≤ 32 columns.
template <bool DX, class Out>
DEV void halo3(const uint16_t* x, const uint16_t* x2, int ca, int C, const uint16_t* wt, int np, int N, int h, int w,
               const Out& out) {
    alignas(128) __shared__ uint16_t Hs[HALO_PX * HALO_ROW];  // 25,920 bytes
    alignas(128) __shared__ uint16_t Ws[9 * HALO_C * 32];     // 18,432 bytes
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const HaloTile t = halo_tile((int)blockIdx.x, h, w);
    // A 16 × 16 of MMA row i (tile row 2·warp + i): lanes 0–15 address pixels 0–15 at k 0–7,
    // lanes 16–31 the same pixels at k 8–15 (ldmatrix's four matrices: mma's a0..a3); the
    // centre tap's address, the other taps an offset from it
    int arow[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) arow[i] = ((2 * warp + i + 1) * HALO_S + lane % 16 + 1) * HALO_ROW + 8 * (lane / 16);
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
    for (int c0 = 0; c0 < C; c0 += HALO_C) {
        if (c0 > 0) __syncthreads();  // every warp is done with the last chunk
        halo_stage(Hs, x, x2, ca, C, c0, t, h, w);
        halo_weights(Ws, wt, np, C, c0);
        cp_commit();
        cp_wait<0>();
        __syncthreads();
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) {
            const int dy = DX ? 1 - tap / 3 : tap / 3 - 1, dx = DX ? 1 - tap % 3 : tap % 3 - 1;
            const int shift = (dy * HALO_S + dx) * HALO_ROW;
#pragma unroll
            for (int kk = 0; kk < HALO_C; kk += 16) {
                uint32_t a[2][4], b[4][2];
#pragma unroll
                for (int i = 0; i < 2; ++i) ldsm_x4(a[i], Hs + arow[i] + shift + kk);
                // B 16 × 16 ([k][n] rows, transposed): as the GEMM's mainloop, columns 16j ..
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int k = tap * HALO_C + kk + lane % 8 + 8 * ((lane / 8) & 1);
                    uint32_t r[4];
                    ldsm_x4_t(r, Ws + swizzled<4>(k, 2 * j + lane / 16));
                    b[2 * j][0] = r[0], b[2 * j][1] = r[1], b[2 * j + 1][0] = r[2], b[2 * j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) conv::mma_f16(acc[i][j], a[i], b[j]);
            }
        }
    }
    // C fragments: c0, c1 at (pixel g, columns 2t, 2t + 1), c2, c3 at pixel g + 8
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int y = t.y0 + 2 * warp + i;
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int xx = t.x0 + gq + 8 * hh;
            if (y >= h || xx >= w) continue;
            const int64_t m = ((int64_t)t.img * h + y) * w + xx;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = 8 * j + 2 * tq;
                if (n < N) out.store(m, n, n + 1 < N, acc[i][j][2 * hh], acc[i][j][2 * hh + 1]);
            }
        }
    }
}

// The weight gradient's block: nine warps, one per tap.
constexpr int HALO_DW_THREADS = 9 * 32;

// dW (f32 rows (tap, ci) × N, zeroed; atomics) += Σ over the output pixels of tiles blockIdx.x,
// + gridDim.x, .. of x(pixel + tap) · dY(pixel), and where db is set (f32, zeroed) db += dY's
// column sums. Warp `tap` owns rows (tap, c0 .. c0 + 31) × 32 columns; a 16-wide K slice is
// one tile row of 16 pixels: A (channels × pixels) from the staged halo shifted by the tap,
// B (pixels × columns) from the staged dY tile, both transposed out of their pixel rows. The
// column sums ride on the same B fragments as an MMA with an all-ones A, spread over the
// warps (tile row r on warp r mod 9). Inputs wider than 32 channels walk the tiles once per
// 32-channel chunk. dY has N channels, N a multiple of 8 and at most 32.
DEV void halo_dw(const uint16_t* x, const uint16_t* dy, float* dw, float* db, int tiles, int h, int w, int C, int N) {
    alignas(128) __shared__ uint16_t Hs[HALO_PX * HALO_ROW];       // 25,920 bytes
    alignas(128) __shared__ uint16_t Ds[HALO_T * HALO_T * HALO_N];  // 16,384 bytes
    const int tap = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int ty = tap / 3, tx = tap % 3;  // the tap's offset + 1
    // A from [pixel][channel] rows, transposed (as gemm_dw's): lane l addresses pixel
    // l % 8 + 8 (l / 16) of the K slice at channel chunk (l / 8) % 2 of the 16-channel half i
    const int acol = lane % 8 + 8 * (lane / 16) + tx, achunk = (lane / 8) % 2;
    const uint32_t ones[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};  // f16 1.0 pairs
    float bacc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) bacc[j][q] = 0.0f;
    for (int c0 = 0; c0 < C; c0 += HALO_C) {
        const bool sums = db && c0 == 0;
        float acc[2][4][4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
        for (int b = blockIdx.x; b < tiles; b += gridDim.x) {
            __syncthreads();  // every warp is done with the last tile
            const HaloTile t = halo_tile(b, h, w);
            halo_stage<HALO_DW_THREADS>(Hs, x, nullptr, 0, C, c0, t, h, w);
            for (int p = threadIdx.x; p < HALO_T * HALO_T * 4; p += HALO_DW_THREADS) {
                const int px = p / 4, q = p % 4, y = t.y0 + px / HALO_T, xx = t.x0 + px % HALO_T;
                const bool ok = y < h && xx < w && 8 * q < N;
                const int64_t at = (((int64_t)t.img * h + y) * w + xx) * N + 8 * q;
                cp_async16(Ds + swizzled<4>(px, q), ok ? dy + at : dy, ok);
            }
            cp_commit();
            cp_wait<0>();
            __syncthreads();
#pragma unroll 4
            for (int r = 0; r < HALO_T; ++r) {
                uint32_t a[2][4], bf[4][2];
                const int arow = ((r + ty) * HALO_S + acol) * HALO_ROW;
#pragma unroll
                for (int i = 0; i < 2; ++i) ldsm_x4_t(a[i], Hs + arow + 8 * (2 * i + achunk));
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    uint32_t rr[4];
                    ldsm_x4_t(rr, Ds + swizzled<4>(HALO_T * r + lane % 8 + 8 * ((lane / 8) & 1), 2 * j + lane / 16));
                    bf[2 * j][0] = rr[0], bf[2 * j][1] = rr[1], bf[2 * j + 1][0] = rr[2], bf[2 * j + 1][1] = rr[3];
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) conv::mma_f16(acc[i][j], a[i], bf[j]);
                if (sums && r % 9 == tap)
#pragma unroll
                    for (int j = 0; j < 4; ++j) conv::mma_f16(bacc[j], ones, bf[j]);
            }
        }
        // C fragments: c0, c1 at (channel g, columns 2t, 2t + 1), c2, c3 at channel g + 8
        const int gq = lane / 4, tq = lane % 4;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int m = tap * C + c0 + 16 * i + gq + (q >= 2 ? 8 : 0), n = 8 * j + 2 * tq + (q & 1);
                    if (n < N) atomicAdd(&dw[(int64_t)m * N + n], acc[i][j][q]);
                }
        // every row of the ones-MMA holds the column sums: row 0 (lanes 0–3) adds them
        if (sums && gq == 0)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int q = 0; q < 2; ++q)
                    if (8 * j + 2 * tq + q < N) atomicAdd(&db[8 * j + 2 * tq + q], bacc[j][q]);
    }
}

// Blocks of the halo kernels over n images of h × w.
HD int64_t halo_blocks(int n, int h, int w) {
    return (int64_t)n * ((h + HALO_T - 1) / HALO_T) * ((w + HALO_T - 1) / HALO_T);
}

// y = leaky?(conv3(x) + bias) + res into cout ≤ 32 channels; x2 (ca > 0): the input is [x | x2]
DEV void halo_fwd(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res, uint16_t* y,
                  int leaky, int h, int w, int cin, int cout, const uint16_t* x2, int ca) {
    halo3<false>(x, x2, ca, cin, wt, np, cout, h, w, FwdOut{bias, res, y, cout, leaky});
}
// dX (cin ≤ 32 channels) = [dX +] leaky'(x) · the data gradient from dY (cout channels)
DEV void halo_dx(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx, int accumulate, int h,
                 int w, int cin, int cout) {
    halo3<true>(dy, nullptr, 0, cout, wt, np, cin, h, w, DxOutH{x, dx, cin, accumulate});
}

}  // namespace h16
