// Convolutions from a staged halo (included by conv_h16.cu, namespace h16): every 3 × 3
// stride-1 layer of the U-Net and every 4 × 4 stride-2 one (Down4x4 and after), forward, data
// gradient and weight (+ bias) gradient.
//
// The implicit GEMM (conv_h16.cu `gemm`) copies a K step of one tap × 32 channels per step:
// each input pixel reaches shared memory nine times, and a 128-row tile of a 32 → 32 layer
// runs its 9 steps through a 3-stage pipeline whose fill and epilogue weigh as much as its
// MMAs. Here a block takes a 16 × 16 tile of output pixels and 32 of its columns, copies its
// input once with a one-pixel halo (18 × 18 pixels × 32 channels) and the weights of those 32
// channels (9 taps × 32 × 32 columns), and reads the nine taps as shifted views: ldmatrix
// takes each of its rows from an address of its own, so a tap is an offset added to every
// lane's row address. Staged pixels
// are 40 halves (80 bytes) apart, so any eight consecutive pixels an ldmatrix reads sit in
// eight different 16-byte bank groups whatever the shift. Wider inputs run 32 channels at a
// time; the two parts of a concatenation (the decoder's, read in place) are each multiples of
// 32 channels, so each chunk lies in one part.
//
// Warp w owns tile rows 2w and 2w + 1 (two 16-pixel MMA rows) and the block's 32 columns: per
// 16-wide K slice two A and two B ldmatrix for eight MMAs. More columns take more blocks
// each staging the input again: 1.27 reads of it per 32 columns against the GEMM's nine per 64.
//
// The data gradient of a stride-1, pad-1 layer is the same sum over dY with the taps mirrored
// (dX(y, x) = Σ dY(y + 1 − ky, x + 1 − kx) · W[ky, kx]ᵀ) and the weights packed [tap][co][ci].

namespace h16 {

constexpr int HALO_T = 16;                   // output tile side
constexpr int HALO_S = HALO_T + 2;           // staged side, with the halo
constexpr int HALO_PX = HALO_S * HALO_S;     // 324 staged pixels
constexpr int HALO_C = 32;                   // channels staged at once
constexpr int HALO_ROW = HALO_C + 8;         // halves per staged pixel (80 bytes)
constexpr int HALO_N = 32;                   // output columns a block takes
constexpr int HALO_CS = HALO_N + 8;          // floats a pixel of the staged result takes (160 bytes)

// 16 × 16 tiles of n images of h × w.
HD int64_t halo_blocks(int n, int h, int w) {
    return (int64_t)n * ((h + HALO_T - 1) / HALO_T) * ((w + HALO_T - 1) / HALO_T);
}

// Output tile of block b over n images of h × w: image, first row and first column.
struct HaloTile {
    int img, y0, x0;
};
DEV HaloTile halo_tile(int b, int h, int w) {
    const int tx = (w + HALO_T - 1) / HALO_T, ty = (h + HALO_T - 1) / HALO_T;
    const int x = b % tx, r = b / tx;
    return HaloTile{r / ty, (r % ty) * HALO_T, x * HALO_T};
}
// The tile `by` tiles on from t, by = dy · ⌈w / 16⌉ + dx (dx < ⌈w / 16⌉) given as dx, dy: adds
// and compares, where halo_tile divides (a walker's next tile, every step)
DEV HaloTile halo_advance(HaloTile t, int dx, int dy, int h, int w) {
    t.x0 += HALO_T * dx;
    if (t.x0 >= w) t.x0 -= (w + HALO_T - 1) / HALO_T * HALO_T, ++dy;
    t.y0 += HALO_T * dy;
    while (t.y0 >= h) t.y0 -= (h + HALO_T - 1) / HALO_T * HALO_T, ++t.img;
    return t;
}

// The copies of a step, and the epilogue's stores, go to threads so that each thread's differ
// by constant offsets: a pointer add and a row check each. The loops they replace divided every
// copy's index into pixel, row and column (~45 SASS instructions a 16-byte copy on sm_90, more
// than the MMAs they fed; Nsight Compute had MMAs at a tenth of the instructions executed).
// The tile's 256 pixels × 4 runs of 8 columns make four per thread, tile rows 4 apart.
static_assert(HALO_T == 16 && HALO_N / 8 == 4 && THREADS == 256, "four pixels a thread, tile rows four apart");

// Stage channels c0 .. c0 + 31 of the tile's input with its halo (zero outside the image) into
// hs, from x (its first `ca` channels of C; all C where x2 is null) or x2 (the rest). Thread
// t < 216 copies 16-byte chunk t mod 4 of halo column t / 4 mod 18 in halo rows t / 72, + 3, ..
// (six rows). Part of a cp.async group the caller commits. `centre`: the 16 × 16 pixels of the
// tile alone, the ring around them left as it was (a 1 × 1 step reads only the centre tap).
// FOUR: C a multiple of 4, not of 32 (one tensor): each 16-byte chunk as two 8-byte copies,
// channels past C zero (the low-rank head's 20, whose pixels are 40 bytes apart).
constexpr int HALO_COPIES = HALO_S * (HALO_C / 8);  // 72 a halo row
constexpr int HALO_ROWS_AT = THREADS / HALO_COPIES; // 3 halo rows a pass
static_assert(HALO_S % HALO_ROWS_AT == 0, "six passes of three halo rows");
template <bool FOUR = false>
DEV void halo_stage(uint16_t* hs, const uint16_t* x, const uint16_t* x2, int ca, int C, int c0, const HaloTile& t,
                    int h, int w, bool centre = false) {
    const int tid = threadIdx.x;
    if (tid >= HALO_ROWS_AT * HALO_COPIES) return;
    const bool second = x2 && c0 >= ca;
    const uint16_t* src = second ? x2 : x;
    const int cs = !x2 ? C : second ? C - ca : ca, cc = second ? c0 - ca : c0;
    const int q = tid % 4, col = tid / 4 % HALO_S, row = tid / HALO_COPIES;
    const int gx = t.x0 - 1 + col, gy = t.y0 - 1 + row;
    const bool x_in = (unsigned)gx < (unsigned)w;
    const uint16_t* g = src + ((((int64_t)t.img * h + gy) * w + gx) * cs + cc + 8 * q);
    const int64_t step = (int64_t)HALO_ROWS_AT * w * cs;
    uint16_t* s = hs + (row * HALO_S + col) * HALO_ROW + 8 * q;
    const bool ring_col = col == 0 || col == HALO_S - 1;
#pragma unroll
    for (int i = 0; i < HALO_S / HALO_ROWS_AT; ++i, g += step) {
        const int r = row + HALO_ROWS_AT * i;
        if (centre && (ring_col || r == 0 || r == HALO_S - 1)) continue;
        const bool ok = x_in && (unsigned)(gy + HALO_ROWS_AT * i) < (unsigned)h;
        uint16_t* d = s + i * HALO_ROWS_AT * HALO_S * HALO_ROW;
        if constexpr (FOUR) {
            const int left = cs - cc - 8 * q;  // this chunk's channels that exist
            const bool lo = ok && left > 0, hi = ok && left > 4;
            cp_async8(d, lo ? g : src, lo);
            cp_async8(d + 4, hi ? g + 4 : src, hi);
        } else {
            cp_async16(d, ok ? g : src, ok);
        }
    }
}

// Stage rows (tap, c0 .. c0 + 31), columns n0 .. n0 + 31 of packed weights ([tap][C][np] f16),
// zero past np, rows swizzled as the GEMM's B tiles. Thread t copies chunk t mod 4 of rows
// t / 4, + 64, .. (the same channel two taps on).
// FOUR: rows of channels c0 + r mod 32 ≥ C zero (C a multiple of 4, not of 32).
template <bool FOUR = false>
DEV void halo_weights(uint16_t* ws, const uint16_t* wt, int np, int C, int c0, int n0) {
    constexpr int AT = THREADS / 4;  // rows a pass
    static_assert(AT % HALO_C == 0 && HALO_C * 9 <= 5 * AT, "five passes, each whole taps");
    const int q = threadIdx.x % 4, r = threadIdx.x / 4;
    const bool ok = n0 + 8 * q < np && (!FOUR || c0 + r % HALO_C < C);
    const uint16_t* g = wt + (((int64_t)(r / HALO_C) * C + c0 + r % HALO_C) * np + n0 + 8 * q);
    const int64_t step = (int64_t)(AT / HALO_C) * C * np;
    uint16_t* s = ws + swizzled<4>(r, q);  // rows AT apart keep the swizzle: AT·32 halves on
#pragma unroll
    for (int i = 0; i < 5; ++i, g += step)
        if (i < 4 || r + AT * i < 9 * HALO_C) cp_async16(s + i * AT * HALO_N, ok ? g : wt, ok);
}

// A residual block's identity branch fused into its conv2 (`halo_block`): after conv2's last
// chunk of a tile its sums become a2 = LeakyReLU(Σ + b2), rounded to f16 as the unfused
// identity would read it (and stored where a2 is set: training's backward reads it), then the
// 1 × 1 identity's 32-channel chunks of x (or [x | x2]) add onto them through the centre tap
// only, and the epilogue adds the identity's bias. The identity's own pass — reading x and a2,
// writing the block's output, at ~2 of the card's 4.2 TB/s — and a2's round trip go away.
// The backward pass mirrors it (`halo_dx_block`): the block input's gradient is conv1's data
// gradient from dc1 plus the identity's from d_out, the latter as centre-tap steps of d_out
// after conv1's chunks of dc1 — no identity GEMM writing dx, no second pass adding onto it.
// Half instance norm and LeakyReLU of conv_1's output applied as conv_2 stages it (`halo_block`
// reading c1 in inference: no pass writes a1 = LeakyReLU(HIN(c1)) and none reads it back): per
// (image, channel < half) the means, then the rstds (images × half each), γ and β (half); the
// other half through LeakyReLU alone — hin_apply's arithmetic, so a1 rounds as it would.
struct HaloNorm {
    const float *stats = nullptr, *gamma = nullptr, *beta = nullptr;  // stats null: no norm
    int images = 0, half = 0;                                          // half a multiple of 8
};
struct HaloIdentity {
    const uint16_t *x, *x2;  // the block's input: [x (ca channels) | x2] where x2 is set (DX: d_out)
    int ca, C;               // ... and all its channels
    const uint16_t* wt;      // the identity's weights packed [C][np] f16 (np as conv2's; DX: [co][ci])
    const float* b2;         // conv2's bias (null: none; not read in DX)
    uint16_t* a2;            // conv2's activation, kept (null: not written; not in DX)
    HaloNorm norm = {};      // conv2's input is c1, normalised as staged (not in DX)
};

// HaloNorm on the chunks this thread staged (halo_stage's mapping, one tensor of C channels) of
// channels c0 .. c0 + 31 of tile t in slot hs, once its copies have landed (its own writes: no
// barrier before); pixels outside the image stay zero, as the padding of a1 is.
DEV void halo_norm_own(uint16_t* hs, const HaloNorm& nm, int c0, const HaloTile& t, int h, int w) {
    const int tid = threadIdx.x;
    if (tid >= HALO_ROWS_AT * HALO_COPIES) return;
    const int q = tid % 4, col = tid / 4 % HALO_S, row = tid / HALO_COPIES, c = c0 + 8 * q;
    const int gx = t.x0 - 1 + col, gy = t.y0 - 1 + row;
    if ((unsigned)gx >= (unsigned)w) return;
    const bool normed = c < nm.half;  // all eight channels in one half
    float m[8], r[8], g[8], b[8];
    if (normed) {
        const int64_t at = (int64_t)t.img * nm.half + c;
        h16::ld8(nm.stats + at, m);
        h16::ld8(nm.stats + (int64_t)nm.images * nm.half + at, r);
        h16::ld8(nm.gamma + c, g);
        h16::ld8(nm.beta + c, b);
    }
    uint16_t* s = hs + (row * HALO_S + col) * HALO_ROW + 8 * q;
#pragma unroll
    for (int i = 0; i < HALO_S / HALO_ROWS_AT; ++i, s += HALO_ROWS_AT * HALO_S * HALO_ROW) {
        if ((unsigned)(gy + HALO_ROWS_AT * i) >= (unsigned)h) continue;
        float v[8];
        h16::ld8(s, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (normed) v[j] = (v[j] - m[j]) * r[j] * g[j] + b[j];
            v[j] = v[j] > 0.0f ? v[j] : conv::SLOPE * v[j];
        }
        h16::st8(s, v);
    }
}

// Stage rows c0 .. c0 + 31 of the identity's packed weights ([C][np]) as the centre tap's rows
// of a slot's weights (ws: the slot's weight rows; tap 4 starts 4·32 rows in, and rows 128 + c
// swizzle as rows c do), zero past np. Threads 0–127: chunk t mod 4 of row t / 4.
DEV void halo_centre_weights(uint16_t* ws, const uint16_t* wt, int np, int c0, int n0) {
    const int q = threadIdx.x % 4, r = threadIdx.x / 4;
    if (r >= HALO_C) return;
    const bool ok = n0 + 8 * q < np;
    cp_async16(ws + 4 * HALO_C * HALO_N + swizzled<4>(r, q), ok ? wt + (int64_t)(c0 + r) * np + n0 + 8 * q : wt, ok);
}

// Both kernels stage in two slots of dynamic shared memory, the next one's copies in flight
// while the MMAs read the other (past 48 KB: the host opts in; src/backend/cuda/half.rs
// HALO_FWD_STAGE, HALO_DW_SMEM): the forward and data gradient a 32-channel chunk's halo and
// weights (44,352 bytes a slot), the weight gradient a tile's halo
// and dY (42,304).
constexpr int HALO_FWD_STAGE = HALO_PX * HALO_ROW + 9 * HALO_C * HALO_N;     // halves
constexpr int HALO_DW_STAGE = HALO_PX * HALO_ROW + HALO_T * HALO_T * HALO_N;  // halves
constexpr int HALO_DW_SMEM = 2 * HALO_DW_STAGE * 2;                           // bytes
static_assert(HALO_FWD_STAGE * 2 == 44352 && HALO_DW_SMEM == 84608, "the host's sizes");
#ifdef __CUDACC__
#define HALO_DYNAMIC_SMEM(name, halves) extern __shared__ __align__(128) uint16_t name[]
#else
// the host's emulator learns where the launch's dynamic shared memory is (smem_addr)
#ifndef HALO_EMU_SMEM
#define HALO_EMU_SMEM(name) (void)0
#endif
#define HALO_DYNAMIC_SMEM(name, halves) \
    alignas(128) static uint16_t name[halves]; \
    HALO_EMU_SMEM(name)
#endif

// Where a layer's taps find their input in a slot (`halo_conv`'s geometry G): the channels a
// step stages (CH), its taps, the slot's size, the input's share of it, the first A address of
// each lane's MMA row, each tap's offset from it (and the tile's, `a_offset`), the copies that
// fill a slot, and where a tile's pixel goes out (`pixel`: the index of pixel (y, x) of the
// walkers' h × w grid; `rows4`: four grid rows on).
// HaloPlainOut: each walker image one image of the output, A's addresses alike at every tile.
struct HaloPlainOut {
    static constexpr bool WG = false;  // B through ldmatrix and mma.sync (Halo3x3Wg: wgmma)
    DEV static int64_t pixel(const HaloTile& t, int y, int x, int h, int w) { return ((int64_t)t.img * h + y) * w + x; }
    DEV static int64_t rows4(int w) { return 4 * (int64_t)w; }
    DEV static int a_offset(const HaloTile&) { return 0; }
};
// The 3 × 3 stride-1 pad-1 layers: an 18 × 18 halo, 32 channels a step.
struct Halo3x3 : HaloPlainOut {
    static constexpr int TAPS = 9, CH = HALO_C, IN = HALO_PX * HALO_ROW, STAGE = HALO_FWD_STAGE;
    // MMA row i of a warp (tile row 2·warp + i): lanes 0–15 address pixels 0–15 at k 0–7,
    // lanes 16–31 the same pixels at k 8–15 (ldmatrix's four matrices: mma's a0..a3), here at
    // the centre tap
    DEV static int arow(int warp, int i, int lane) {
        return ((2 * warp + i + 1) * HALO_S + lane % 16 + 1) * HALO_ROW + 8 * (lane / 16);
    }
    template <bool DX>
    DEV static constexpr int shift(int tap) {
        const int dy = DX ? 1 - tap / 3 : tap / 3 - 1, dx = DX ? 1 - tap % 3 : tap % 3 - 1;
        return (dy * HALO_S + dx) * HALO_ROW;
    }
    DEV static void stage(uint16_t* hs, const uint16_t* x, const uint16_t* x2, int ca, int C, int c0,
                          const HaloTile& t, int ih, int iw, const uint16_t* wt, int np, int n0, int = 0) {
        halo_stage(hs, x, x2, ca, C, c0, t, ih, iw);
        halo_weights(hs + IN, wt, np, C, c0, n0);
    }
};

// The same from C channels a multiple of 4, not of 32 (the low-rank head's 20 → 20 layer: one
// 32-channel chunk): the last chunk's channels past C zero (12 of 32 idle MMA columns at 20,
// against the four-channel GEMM's ~38 TFLOP/s on an H200).
struct Halo3x3Four : Halo3x3 {
    DEV static void stage(uint16_t* hs, const uint16_t* x, const uint16_t*, int, int C, int c0, const HaloTile& t,
                          int ih, int iw, const uint16_t* wt, int np, int n0, int = 0) {
        halo_stage<true>(hs, x, nullptr, 0, C, c0, t, ih, iw);
        halo_weights<true>(hs + IN, wt, np, C, c0, n0);
    }
};

// The same layers on wgmma (sm_90a: kernels/sm90a/conv_wg.cu). A warpgroup's wgmma m64n32k16
// takes its four warps' 16-pixel A fragments from registers (the ldmatrix of the mma.sync path)
// and B straight from the slot, so B needs neither ldmatrix nor registers and a warp issues two
// wgmma for the eight mma.sync of a 16-channel slice. B must then sit as the tensor cores read
// it without swizzle: K-major core matrices of 8 columns × 8 channels (128 contiguous bytes),
// [tap][channel / 8][column][channel mod 8] — 512 bytes from one core matrix to the next along
// the channels, 128 along the columns — staged from weights packed K-major ([tap][N][np]: a
// column's channels contiguous; the other direction's packing, `packed_weights_t` for the
// forward and `packed_weights` for the data gradient). The halo and the slot's size are the
// mma.sync path's.
constexpr int WG_TAP = HALO_C * HALO_N;         // halves of a tap's weights
constexpr uint32_t WG_LBO = 8 * HALO_N * 2;     // bytes between core matrices along the channels
constexpr uint32_t WG_SBO = 8 * 8 * 2;          // ... and along the columns
// Stage channels c0 .. c0 + 31, columns n0 .. n0 + 31 of every tap from wt ([tap][N][np] f16)
// into ws as above, zero past N. Thread t: 16-byte chunk (t / 8) mod 4 (channels 8·that ..) of
// column t mod 8 + 8·((t / 32) mod 4) of taps t / 128, + 2, .. (five passes; the last takes tap
// 8 alone): a warp reads eight columns' 64 bytes each, and the eight threads of a store phase
// write one core matrix's 128 contiguous bytes (no bank conflict: chunk t mod 4 of column t / 4
// put four threads of a phase in one bank group).
DEV int wg_col(int t) { return t % 8 + 8 * (t / 32 % 4); }
DEV void wg_weights(uint16_t* ws, const uint16_t* wt, int np, int N, int c0, int n0) {
    const int kg = threadIdx.x / 8 % 4, col = wg_col(threadIdx.x), tap0 = threadIdx.x / (4 * HALO_N);
    static_assert(THREADS == 8 * HALO_N && HALO_C == 32, "two taps a pass");
    const bool ok = n0 + col < N;
    const uint16_t* g = wt + (((int64_t)tap0 * N + n0 + col) * np + c0 + 8 * kg);
    const int64_t step = (int64_t)2 * N * np;
    uint16_t* s = ws + tap0 * WG_TAP + kg * 8 * HALO_N + col * 8;
#pragma unroll
    for (int i = 0; i < 5; ++i, g += step)
        if (tap0 + 2 * i < 9) cp_async16(s + 2 * i * WG_TAP, ok ? g : wt, ok);
}
// The identity's weights (K-major, [N][np]: np its input's channels C, HaloIdentity's) as the
// centre tap's of a Halo3x3Wg slot: channels
// c0 .. c0 + 31, columns n0 .. n0 + 31, zero past N. Threads 0–127 as wg_weights' first tap.
DEV void wg_centre_weights(uint16_t* ws, const uint16_t* wt, int np, int N, int c0, int n0) {
    if (threadIdx.x >= 4 * HALO_N) return;
    const int kg = threadIdx.x / 8 % 4, col = wg_col(threadIdx.x);
    const bool ok = n0 + col < N;
    cp_async16(ws + 4 * WG_TAP + kg * 8 * HALO_N + col * 8, ok ? wt + ((int64_t)(n0 + col) * np + c0 + 8 * kg) : wt,
               ok);
}
struct Halo3x3Wg : Halo3x3 {
    static constexpr bool WG = true;
    DEV static void stage(uint16_t* hs, const uint16_t* x, const uint16_t* x2, int ca, int C, int c0,
                          const HaloTile& t, int ih, int iw, const uint16_t* wt, int np, int n0, int N) {
        halo_stage(hs, x, x2, ca, C, c0, t, ih, iw);
        wg_weights(hs + IN, wt, np, N, c0, n0);
    }
};

// The 4 × 4 stride-2 pad-1 downsampling: a 16 × 16 tile of output pixels reads 34 × 34 input
// pixels (output (y, x) reads rows 2y − 1 .. 2y + 2 and as many columns). Consecutive output
// pixels of a tap read every other input column, and 80- or 48-byte pixels two apart put two
// of an ldmatrix's eight rows in one bank group; so a staged row keeps its even and its odd
// columns as two planes of 17 pixels each, and a tap (ky, kx) reads plane kx mod 2 from pixel
// kx / 2 on, of row 2y + ky. At 32 channels a slot would take 92 KB of halo: it stages 16 (48
// bytes a pixel, eight consecutive pixels in eight bank groups), 71,872 bytes with the 16
// taps' weights; two slots keep one block an SM.
constexpr int DOWN_S = 2 * HALO_T + 2;                            // staged rows and columns
constexpr int DOWN_P = DOWN_S / 2;                                // pixels a plane
constexpr int DOWN_C = 16;                                        // channels a step
constexpr int DOWN_ROW = DOWN_C + 8;                              // halves a staged pixel
constexpr int DOWN_IN = DOWN_S * 2 * DOWN_P * DOWN_ROW;           // the input's halves
constexpr int DOWN_STAGE = DOWN_IN + 16 * DOWN_C * HALO_N;        // and the weights'
constexpr int DOWN_SMEM = 2 * DOWN_STAGE * 2;                     // bytes
static_assert(DOWN_SMEM == 143744, "the host's size (src/backend/cuda/half.rs DOWN_SMEM)");
// Stage channels c0 .. c0 + 15 of the input rows 2·y0 − 1 .. and columns 2·x0 − 1 .. of output
// tile t (zero outside the image) as even and odd planes into hs. Thread t < 204: 16-byte
// chunk t mod 2 of staged column t / 2 mod 34 in rows t / 68, + 3, .. (12 passes).
DEV void down_stage(uint16_t* hs, const uint16_t* x, int C, int c0, const HaloTile& t, int ih, int iw) {
    constexpr int COPIES = DOWN_S * 2, AT = THREADS / COPIES;  // 68 a row, 3 rows a pass
    const int tid = threadIdx.x;
    if (tid >= AT * COPIES) return;
    const int q = tid % 2, col = tid / 2 % DOWN_S, row = tid / COPIES;
    const int gx = 2 * t.x0 - 1 + col, gy = 2 * t.y0 - 1 + row;
    const bool x_in = (unsigned)gx < (unsigned)iw;
    const uint16_t* g = x + ((((int64_t)t.img * ih + gy) * iw + gx) * C + c0 + 8 * q);
    const int64_t step = (int64_t)AT * iw * C;
    uint16_t* s = hs + ((row * 2 + col % 2) * DOWN_P + col / 2) * DOWN_ROW + 8 * q;
#pragma unroll
    for (int i = 0; i < (DOWN_S + AT - 1) / AT; ++i, g += step) {
        if (row + AT * i >= DOWN_S) continue;
        const bool ok = x_in && (unsigned)(gy + AT * i) < (unsigned)ih;
        cp_async16(s + i * AT * 2 * DOWN_P * DOWN_ROW, ok ? g : x, ok);
    }
}
struct Down4x4 : HaloPlainOut {
    static constexpr int TAPS = 16, CH = DOWN_C, IN = DOWN_IN, STAGE = DOWN_STAGE;
    // MMA row i of a warp: output row 2·warp + i, pixels lane mod 16 of plane 0 from tap (0, 0)
    DEV static int arow(int warp, int i, int lane) {
        return (2 * (2 * warp + i) * 2 * DOWN_P + lane % 16) * DOWN_ROW + 8 * (lane / 16);
    }
    template <bool DX>
    DEV static constexpr int shift(int tap) {
        static_assert(!DX, "the forward only");
        return ((tap / 4 * 2 + tap % 2) * DOWN_P + tap % 4 / 2) * DOWN_ROW;
    }
    // The input as down_stage; the weights as halo_weights, 16 channels of 16 taps: chunk t mod
    // 4 of rows t / 4, + 64, .. (the same channel four taps on)
    DEV static void stage(uint16_t* hs, const uint16_t* x, const uint16_t*, int, int C, int c0, const HaloTile& t,
                          int ih, int iw, const uint16_t* wt, int np, int n0, int = 0) {
        down_stage(hs, x, C, c0, t, ih, iw);
        constexpr int WAT = THREADS / 4;  // weight rows a pass
        static_assert(WAT % DOWN_C == 0 && 16 * DOWN_C == 4 * WAT, "four passes, each whole taps");
        const int q = threadIdx.x % 4, r = threadIdx.x / 4;
        const bool ok = n0 + 8 * q < np;
        const uint16_t* g = wt + (((int64_t)(r / DOWN_C) * C + c0 + r % DOWN_C) * np + n0 + 8 * q);
        const int64_t step = (int64_t)(WAT / DOWN_C) * C * np;
        uint16_t* s = hs + IN + swizzled<4>(r, q);
#pragma unroll
        for (int i = 0; i < 4; ++i, g += step) cp_async16(s + i * WAT * HALO_N, ok ? g : wt, ok);
    }
};

// The same layer's data gradient by phases: dX at input pixel (2y + py, 2x + px) is Σ over a,
// b ∈ {0, 1} of dY(y + py − a, x + px − b) · W[2a + 1 − py, 2b + 1 − px]ᵀ, a 2 × 2 layer over
// dY for each phase, and every phase of a 16 × 16 tile of (y, x) reads the same 18 × 18 halo
// of dY (y0 − 1 .. y0 + 16): the 3 × 3 layers' staging, four taps' weights. The walker's images
// are (image, phase) pairs, 4·image + 2·py + px, over dY's h × w (the input's sides even), so
// an image's four phases follow each other and its dY stays in L2 while they run. Weights
// packed [tap][co][ci] as the data gradient's.
struct Down4x4Dx {
    // a slot as large as the tile's f32 result its epilogue stages (40,960 bytes; the halo and
    // four taps' weights take 34,112): two keep two blocks an SM
    static constexpr int TAPS = 4, CH = HALO_C, IN = HALO_PX * HALO_ROW, STAGE = HALO_T * HALO_T * HALO_CS * 2;
    static constexpr bool WG = false;
    static_assert(IN + 4 * HALO_C * HALO_N <= STAGE, "the halo and weights fit a slot");
    DEV static int64_t pixel(const HaloTile& t, int y, int x, int h, int w) {
        const int py = (t.img >> 1) & 1, px = t.img & 1;
        return ((int64_t)(t.img >> 2) * 2 * h + 2 * y + py) * 2 * w + 2 * x + px;
    }
    DEV static int64_t rows4(int w) { return 16 * (int64_t)w; }  // four rows of a phase: eight of dX
    // tap (a, b) = (0, 0) of the tile's phase: dY row y + py, column x + px
    DEV static int a_offset(const HaloTile& t) { return (((t.img >> 1) & 1) * HALO_S + (t.img & 1)) * HALO_ROW; }
    DEV static int arow(int warp, int i, int lane) { return Halo3x3::arow(warp, i, lane); }
    template <bool DX>
    DEV static constexpr int shift(int tap) {
        static_assert(DX, "the data gradient only");
        return -(tap / 2 * HALO_S + tap % 2) * HALO_ROW;
    }
    // dY's halo as halo_stage's; weights as halo_weights', taps (a, b) = (i, r / 32) of the
    // phase for thread t's rows r = t / 4, + 64 (chunk t mod 4)
    DEV static void stage(uint16_t* hs, const uint16_t* dy, const uint16_t*, int, int C, int c0, const HaloTile& t,
                          int ih, int iw, const uint16_t* wt, int np, int n0, int = 0) {
        halo_stage(hs, dy, nullptr, 0, C, c0, HaloTile{t.img >> 2, t.y0, t.x0}, ih, iw);
        const int py = (t.img >> 1) & 1, px = t.img & 1;
        const int q = threadIdx.x % 4, r = threadIdx.x / 4, b = r / HALO_C;
        const bool ok = n0 + 8 * q < np;
        uint16_t* s = hs + IN + swizzled<4>(r, q);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int tap = (2 * i + 1 - py) * 4 + 2 * b + 1 - px;
            const uint16_t* g = wt + (((int64_t)tap * C + c0 + r % HALO_C) * np + n0 + 8 * q);
            cp_async16(s + i * 64 * HALO_N, ok ? g : wt, ok);
        }
    }
};

// out(m, n) over the 16 × 16 tiles of n images of h × w and N columns: block b takes columns
// n0 = 32·(b mod ⌈N / 32⌉) .. and walks tiles b / ⌈N / 32⌉, + gridDim.x / ⌈N / 32⌉, .. (one wave
// of blocks: the next step's copies fly while this one's MMAs and epilogue run; the tile and
// chunk carried from step to step, where dividing them out again took six integer divisions,
// ~110 instructions a step). A step is one (tile, chunk of G::CH channels): Σ over taps and the
// chunk's channels of the staged input at the pixel shifted by the tap (mirrored where DX)
// times the weights. After a tile's last chunk the
// GEMM's epilogues (FwdOut, DxOutH; m the pixel's index, N columns) write it: where N is a
// multiple of 8, from the tile's f32 result staged in the slot just read, eight columns a
// thread (`store_row8`: on the H200 the pairs of `store` from the MMA fragments took 36 % more
// memory sectors than needed, and a tenth of the instructions were MMAs).
// G (Halo3x3, Halo3x3Four, Down4x4, Down4x4Dx) places the taps; h × w the walkers' grid of output pixels
// (Down4x4Dx: of each phase), ih × iw the staged input's.
template <class G, bool DX, class Out, bool ID = false>
DEV void halo_conv(const uint16_t* x, const uint16_t* x2, int ca, int C, const uint16_t* wt, int np, int N, int n,
                   int h, int w, int ih, int iw, const Out& out, const HaloIdentity& id = {}) {
    static_assert(HALO_T * HALO_T * HALO_CS * 4 <= G::STAGE * 2, "a tile's f32 result fits a slot");
    static_assert(!ID || std::is_base_of_v<Halo3x3, G>, "the identity's steps stage as the 3 x 3 layers");
    HALO_DYNAMIC_SMEM(smem, 2 * G::STAGE);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int nb = (N + HALO_N - 1) / HALO_N, walkers = (int)gridDim.x / nb, first = (int)blockIdx.x / nb;
    const int n0 = HALO_N * ((int)blockIdx.x % nb);
    // a tile's steps: conv2's chunks of x, then (ID) the identity's of its own input
    const int tiles = (int)halo_blocks(n, h, w), chunks2 = (C + G::CH - 1) / G::CH;
    const int chunks = chunks2 + (ID ? id.C / HALO_C : 0);
    const int steps = first < tiles ? ((tiles - 1 - first) / walkers + 1) * chunks : 0;
    // A 16 × 16 of MMA row i (tile row 2·warp + i) at one tap, the other taps an offset from it
    int arow[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) arow[i] = G::arow(warp, i, lane);
    // B: lane l reads weight row 16·(tap·2 + kk / 16) + l mod 8 + 8·((l / 8) mod 2); the swizzle
    // of a row depends only on its low four bits, so each lane's two column addresses are
    // offsets fixed here plus a constant per (tap, kk) (left to the compiler, it kept one
    // register per tap and two multiplies a load)
    int bcol[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) bcol[j] = swizzled<4>(lane % 8 + 8 * ((lane / 8) & 1), 2 * j + lane / 16);
    float acc[2][4][4];
    auto zero = [&] {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
    };
    zero();
    // step s (chunk k of tile t)'s halo and weights into slot s mod 2 (one cp.async group)
    auto stage = [&](int s, int k, const HaloTile& t) {
        uint16_t* hs = smem + (s & 1) * G::STAGE;
        if (ID && k >= chunks2) {
            const int c0 = HALO_C * (k - chunks2);
            halo_stage(hs, id.x, id.x2, id.ca, id.C, c0, t, h, w, true);
            if constexpr (G::WG) wg_centre_weights(hs + G::IN, id.wt, id.C, N, c0, n0);
            else halo_centre_weights(hs + G::IN, id.wt, np, c0, n0);
            return;
        }
        G::stage(hs, x, x2, ca, C, G::CH * k, t, ih, iw, wt, np, n0, N);
    };
    const int gq = lane / 4, tq = lane % 4;
    // this tile's sums out through the slot just read (`cs`, free until the step after next
    // stages into it), eight columns a thread: 16-byte, coalesced loads and stores of whole
    // pixel rows (N a multiple of 8; every thread calls it)
    auto store_tile = [&](const auto& o, const HaloTile& t, float* cs) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    st2(cs + ((2 * warp + i) * HALO_T + gq + 8 * hh) * HALO_CS + 8 * j + 2 * tq,
                        acc[i][j][2 * hh], acc[i][j][2 * hh + 1]);
                }
        __syncthreads();
        // thread t: columns 8 (t mod 4) .. of tile pixels t / 4, + 64, .. (tile rows four apart)
        const int q = threadIdx.x % 4, px = threadIdx.x / 4, nn = n0 + 8 * q;
        const int y = t.y0 + px / HALO_T, xx = t.x0 + px % HALO_T;
        constexpr bool STATS = std::remove_reference_t<decltype(o)>::STATS;
        float p0[8] = {}, p1[8] = {};  // STATS: this thread's pixels' sums, its eight columns
        if (xx < w && nn < N) {
            int64_t m = G::pixel(t, y, xx, h, w);
#pragma unroll
            for (int i = 0; i < 4; ++i, m += G::rows4(w))
                if (y + 4 * i < h) {
                    H16_ACCESS(cs + (px + 64 * i) * HALO_CS + 8 * q, 32, false);  // the emulator's hazard check
                    o.store_row8(m, nn, cs + (px + 64 * i) * HALO_CS + 8 * q);
                    if constexpr (STATS) o.sums8(nn, cs + (px + 64 * i) * HALO_CS + 8 * q, p0, p1);
                }
        }
        if constexpr (STATS) {
            // the tile's sums: a warp's eight lanes of one column run (lanes equal mod 4) add
            // theirs by shuffles, lanes 0–3 put the warp's through the slot, then a thread per
            // (column, moment) adds the eight warps' in f64 and once into the image's sums
#pragma unroll
            for (int m = 4; m < 32; m *= 2)
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    p0[j] += __shfl_xor_sync(0xffffffffu, p0[j], m);
                    p1[j] += __shfl_xor_sync(0xffffffffu, p1[j], m);
                }
            __syncthreads();  // every thread is done reading the staged result
            if (lane < 4)
#pragma unroll
                for (int j = 0; j < 8; ++j) cs[(warp * 4 + lane) * 16 + j] = p0[j], cs[(warp * 4 + lane) * 16 + 8 + j] = p1[j];
            __syncthreads();
            const int r = threadIdx.x, col = r % HALO_N, moment = r / HALO_N, cn = n0 + col;
            if (r < 2 * HALO_N && cn < o.cn && cn < N) {
                double a = 0.0;
#pragma unroll
                for (int v = 0; v < THREADS / 32; ++v) a += cs[(v * 4 + col / 8) * 16 + 8 * moment + col % 8];
                atomicAdd((moment ? o.s1 : o.s0) + (int64_t)t.img * o.cn + cn, a);
            }
        }
        __syncthreads();  // every thread is done with the slot before it is staged again
    };
    // this step's tile and chunk, carried from step to step; a walker moves `walkers` tiles on
    const int tx = (w + HALO_T - 1) / HALO_T, wdx = walkers % tx, wdy = walkers / tx;
    HaloTile t = halo_tile(first, h, w);
    int k = 0;
    if (steps > 0) stage(0, 0, t);
    cp_commit();
    for (int s = 0; s < steps; ++s) {
        const bool last = k == chunks - 1;  // this tile's last chunk: its epilogue follows
        if (s + 1 < steps) stage(s + 1, last ? 0 : k + 1, last ? halo_advance(t, wdx, wdy, h, w) : t);
        cp_commit();
        cp_wait<1>();  // this step's group has landed, for this thread
        if constexpr (ID && !DX && (std::is_same_v<G, Halo3x3> || std::is_base_of_v<Halo3x3Wg, G>))  // halo_stage's copies
            if (id.norm.stats && k < chunks2) halo_norm_own(smem + (s & 1) * G::STAGE, id.norm, G::CH * k, t, h, w);
        if constexpr (G::WG) wg_proxy_fence();  // the wgmmas read the weights through the async proxy
        __syncthreads();  // and for every thread
        const uint16_t* Hs = smem + (s & 1) * G::STAGE + G::a_offset(t);
        const uint16_t* Ws = smem + (s & 1) * G::STAGE + G::IN;
        const bool centre = ID && k >= chunks2;  // an identity step: the centre tap alone
        if constexpr (G::WG) {
            // slice sl = (tap, 16 channels): one wgmma a warp per MMA row, from A in a[sl mod 2]
            const uint64_t d0 = wg_desc(smem_addr(Ws), WG_LBO, WG_SBO);
            uint32_t a[2][2][4];
            auto load = [&](int sl, uint32_t (&dst)[2][4]) {
#pragma unroll
                for (int i = 0; i < 2; ++i)
                    ldsm_x4(dst[i], Hs + arow[i] + G::template shift<DX>(sl / 2) + 16 * (sl % 2));
            };
            auto issue = [&](int sl) {
                wg_fence();
                const uint64_t d = d0 + (uint64_t)((sl / 2 * WG_TAP + 16 * (sl % 2) * HALO_N) * 2 / 16);
#pragma unroll
                for (int i = 0; i < 2; ++i) wgmma_m64n32k16<0>(&acc[i][0][0], a[sl % 2][i], d);
                wg_commit();
            };
            wg_pin(&acc[0][0][0]);
            wg_pin(&acc[1][0][0]);
            if constexpr (ID) {
                // identity steps run the centre tap's two slices alone: each slice's A loaded
                // once slice sl − 2's wgmmas (the last to read that buffer) have retired (a
                // prefetching loop for both kinds of step cost these kernels up to 14 registers
                // and the normalising tail 300 bytes of spills)
#pragma unroll
                for (int sl = 0; sl < 2 * G::TAPS; ++sl) {
                    if (centre && sl / 2 != 4) continue;  // (uniform: the whole warpgroup skips)
                    if (sl >= 2) wg_wait<1>();
                    load(sl, a[sl % 2]);
                    issue(sl);
                }
            } else {
                // the next slice's A loaded while this one's wgmmas run, once slice sl − 1's (the
                // last to read that buffer) have retired
                load(0, a[0]);
#pragma unroll
                for (int sl = 0; sl < 2 * G::TAPS; ++sl) {
                    issue(sl);
                    if (sl + 1 < 2 * G::TAPS) {
                        wg_wait<1>();
                        load(sl + 1, a[(sl + 1) % 2]);
                    }
                }
            }
            wg_wait<0>();
            wg_pin(&acc[0][0][0]);
            wg_pin(&acc[1][0][0]);
        } else {
#pragma unroll
            for (int tap = 0; tap < G::TAPS; ++tap) {
                if (centre && tap != 4) continue;
                const int shift = G::template shift<DX>(tap);
#pragma unroll
                for (int kk = 0; kk < G::CH; kk += 16) {
                    uint32_t a[2][4], b[4][2];
#pragma unroll
                    for (int i = 0; i < 2; ++i) ldsm_x4(a[i], Hs + arow[i] + shift + kk);
                    // B 16 × 16 ([k][n] rows, transposed): as the GEMM's mainloop, columns 16j ..
#pragma unroll
                    for (int j = 0; j < 2; ++j) ldsm_b2(b + 2 * j, Ws + bcol[j] + (tap * G::CH + kk) * HALO_N);
#pragma unroll
                    for (int i = 0; i < 2; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) conv::mma_f16(acc[i][j], a[i], b[j]);
                }
            }
        }
        __syncthreads();  // every warp is done with this slot before the step after next fills it
        float* cs = reinterpret_cast<float*>(smem + (s & 1) * G::STAGE);
        if (ID && !DX && k == chunks2 - 1) {
            // conv2 done: a2 = f16(LeakyReLU(Σ + b2)) in the sums, and out where kept
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int nn = n0 + 8 * j + 2 * tq + e;
                    const float b = id.b2 && nn < N ? id.b2[nn] : 0.0f;
#pragma unroll
                    for (int i = 0; i < 2; ++i)
#pragma unroll
                        for (int hh = 0; hh < 2; ++hh) {
                            const float v = acc[i][j][2 * hh + e] + b;
                            acc[i][j][2 * hh + e] = h2f(f2h(v > 0.0f ? v : conv::SLOPE * v));
                        }
                }
            if (id.a2) store_tile(FwdOut{nullptr, nullptr, id.a2, N, 0}, t, cs);
        }
        if (!last) {
            ++k;
            continue;
        }
        if (N % 8 == 0) {
            store_tile(out, t, cs);
        } else {
            // C fragments c0, c1 at (pixel g, columns 2t, 2t + 1), c2, c3 at pixel g + 8
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int y = t.y0 + 2 * warp + i;
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int xx = t.x0 + gq + 8 * hh;
                    if (y >= h || xx >= w) continue;
                    const int64_t m = G::pixel(t, y, xx, h, w);
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int nn = n0 + 8 * j + 2 * tq;
                        if (nn < N) out.store(m, nn, nn + 1 < N, acc[i][j][2 * hh], acc[i][j][2 * hh + 1]);
                    }
                }
            }
        }
        zero();  // for the next tile
        t = halo_advance(t, wdx, wdy, h, w);
        k = 0;
    }
    cp_wait<0>();
}
// The 3 × 3 stride-1 layers (input and output h × w)
template <bool DX, class Out, bool ID = false>
DEV void halo3(const uint16_t* x, const uint16_t* x2, int ca, int C, const uint16_t* wt, int np, int N, int n, int h,
               int w, const Out& out, const HaloIdentity& id = {}) {
    halo_conv<Halo3x3, DX, Out, ID>(x, x2, ca, C, wt, np, N, n, h, w, h, w, out, id);
}

// Stage columns n0 .. n0 + 31 of dY (N columns) at the 16 × 16 pixels of tile t of h × w, zero
// outside, rows swizzled as halo_weights' (the weight gradients' B). Thread t: chunk t mod 4 of
// tile pixels t / 4, + 64, .. (tile rows four apart).
DEV void tile_stage_dy(uint16_t* ds, const uint16_t* dy, const HaloTile& t, int h, int w, int N, int n0) {
    const int q = threadIdx.x % 4, px = threadIdx.x / 4, y = t.y0 + px / HALO_T, xx = t.x0 + px % HALO_T;
    const bool ok = xx < w && n0 + 8 * q < N;
    const uint16_t* g = dy + ((((int64_t)t.img * h + y) * w + xx) * N + n0 + 8 * q);
    const int64_t step = (int64_t)4 * w * N;
#pragma unroll
    for (int i = 0; i < 4; ++i, g += step) {
        const bool in = ok && y + 4 * i < h;
        cp_async16(ds + swizzled<4>(px, q) + i * 64 * HALO_N, in ? g : dy, in);
    }
}

// The same for the weight gradient on wgmma (halo_dw<true>): dY as B (pixels × columns) in the
// tensor cores' MN-major no-swizzle layout, core matrices of 8 pixels × 8 columns (128 contiguous
// bytes, a pixel's 16 bytes a row), [columns / 8][pixel][column mod 8]. Thread t: chunk
// (t / 8) mod 4 of tile pixels t mod 8 + 8·(t / 32), + 64, .. (eight threads of a store phase
// fill one core matrix: no bank conflict).
constexpr uint32_t WG_DY_LBO = 8 * 16;                  // bytes between core matrices along the pixels
constexpr uint32_t WG_DY_SBO = HALO_T * HALO_T * 16;    // ... and along the columns
DEV void tile_stage_dy_mn(uint16_t* ds, const uint16_t* dy, const HaloTile& t, int h, int w, int N, int n0) {
    const int q = threadIdx.x / 8 % 4, px = threadIdx.x % 8 + 8 * (threadIdx.x / 32);
    const int y = t.y0 + px / HALO_T, xx = t.x0 + px % HALO_T;
    const bool ok = xx < w && n0 + 8 * q < N;
    const uint16_t* g = dy + ((((int64_t)t.img * h + y) * w + xx) * N + n0 + 8 * q);
    const int64_t step = (int64_t)4 * w * N;
#pragma unroll
    for (int i = 0; i < 4; ++i, g += step) {
        const bool in = ok && y + 4 * i < h;
        cp_async16(ds + q * HALO_T * HALO_T * 8 + (px + 64 * i) * 8, in ? g : dy, in);
    }
}

// The weight gradients' walk over tiles blockIdx.x, + gridDim.x, .. of an h × w grid (`tiles`
// of them): stage(tile, slot) copies a tile into one of two slots (one cp.async group) while
// body(slot) reads the other; the next tile carried from tile to tile (halo_advance). WG: the
// body's wgmmas read a slot through the async proxy (and retire before body returns).
template <bool WG = false, class Stage, class Body>
DEV void walk_tiles(int tiles, int h, int w, Stage&& stage, Body&& body) {
    const int tx = (w + HALO_T - 1) / HALO_T, wdx = (int)gridDim.x % tx, wdy = (int)gridDim.x / tx;
    HaloTile next = halo_tile((int)blockIdx.x, h, w);
    if ((int)blockIdx.x < tiles) stage(next, 0);
    cp_commit();
    for (int b = blockIdx.x, k = 0; b < tiles; b += gridDim.x, ++k) {
        if (b + (int)gridDim.x < tiles) {
            next = halo_advance(next, wdx, wdy, h, w);
            stage(next, (k + 1) & 1);
        }
        cp_commit();
        cp_wait<1>();  // this tile's group has landed, for this thread
        if constexpr (WG) wg_proxy_fence();
        __syncthreads();  // and for every thread
        body(k & 1);
        __syncthreads();  // every warp is done with this slot before the tile after next fills it
    }
    cp_wait<0>();
}

// dW (f32 rows (tap, ci) × N, zeroed; atomics) += Σ over the output pixels of tiles blockIdx.x,
// + gridDim.x, .. of x(pixel + tap) · dY(pixel) for input channels c0 .. c0 + 31 and columns
// n0 .. n0 + 31 (blockIdx.y = (n0 / 32)·(C / 32) + c0 / 32), and where db is set (f32,
// zeroed) the blocks of c0 = 0 add dY's column sums. The block's result is 18 MMA rows (9 taps
// × 2 halves of 32 channels) × 4 MMA columns: warp w owns tap w's two rows and all four
// columns, and one (row, column) of tap 8 — half w / 4, column w % 4 — so the eight warps (two
// on each of an SM's four schedulers) do nine MMAs each per K slice. A K slice is one tile row
// of 16 pixels: A (channels × pixels) from the staged halo shifted by the tap, B (pixels ×
// columns) from the staged dY tile, both transposed out of their pixel rows. The column sums
// ride on the same B fragments as an MMA with an all-ones A (tile row r on warp r mod 8).
// N a multiple of 8.
// x2 (ca > 0): x is [x (ca channels) | x2], read in place as halo_stage reads it.
// WG (sm_90a: kernels/sm90a/conv_wg.cu): each warpgroup's four taps on wgmma m64n32k16, A (the
// warps' x fragments) from registers and B (the dY tile, staged MN-major: tile_stage_dy_mn)
// through a descriptor read transposed; tap 8 and the column sums stay on mma.sync.
template <bool WG = false>
DEV void halo_dw(const uint16_t* x, const uint16_t* dy, float* dw, float* db, int tiles, int h, int w, int C, int N,
                 const uint16_t* x2 = nullptr, int ca = 0) {
    HALO_DYNAMIC_SMEM(smem, 2 * HALO_DW_STAGE);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int chunks = C / HALO_C, c0 = HALO_C * ((int)blockIdx.y % chunks), n0 = HALO_N * ((int)blockIdx.y / chunks);
    const bool sums = db && c0 == 0;
    const int eh = warp / 4, ej = warp % 4;  // this warp's share of tap 8: channel half, MMA column
    // A from [pixel][channel] rows, transposed (as gemm_dw's): lane l addresses pixel
    // l % 8 + 8 (l / 16) of the K slice at channel chunk (l / 8) % 2 of a 16-channel half;
    // the tap (ky, kx) reads tile row r + ky, column + kx of the halo
    const int apx = lane % 8 + 8 * (lane / 16), achunk = (lane / 8) % 2;
    const int a_own = ((warp / 3) * HALO_S + apx + warp % 3) * HALO_ROW + 8 * achunk;
    const int a_ext = (2 * HALO_S + apx + 2) * HALO_ROW + 8 * (2 * eh + achunk);
    // B from the dY tile as halo3's from its weights: row 16 r + l mod 8 + 8·((l / 8) mod 2)
    // (WG: row 16 r + l mod 8 + 8·((l / 8) mod 2) of column chunk 2 j + l / 16 in the MN-major tile)
    int bcol[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int row = lane % 8 + 8 * ((lane / 8) & 1), chunk = 2 * j + lane / 16;
        bcol[j] = WG ? chunk * HALO_T * HALO_T * 8 + row * 8 : swizzled<4>(row, chunk);
    }
    const int brow = WG ? 8 : HALO_N;  // halves from a pixel row of B to the next
    const uint32_t ones[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};  // f16 1.0 pairs
    float acc[2][4][4], ext[4], bacc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[0][j][q] = acc[1][j][q] = bacc[j][q] = 0.0f;
#pragma unroll
    for (int q = 0; q < 4; ++q) ext[q] = 0.0f;
    // tile b's halo and dY into stage s (one cp.async group with whatever the caller adds)
    auto stage = [&](const HaloTile& t, int s) {
        uint16_t* hs = smem + s * HALO_DW_STAGE;
        uint16_t* ds = hs + HALO_PX * HALO_ROW;
        halo_stage(hs, x, x2, ca, C, c0, t, h, w);
        if constexpr (WG) tile_stage_dy_mn(ds, dy, t, h, w, N, n0);
        else tile_stage_dy(ds, dy, t, h, w, N, n0);
    };
    // tile row r's A of tap 8 (ae) and B fragments (bf), and what mma.sync does with them: this
    // warp's share of tap 8, and the column sums
    auto load_ext = [&](const uint16_t* Hs, const uint16_t* Ds, int r, uint32_t (&ae)[4], uint32_t (&bf)[4][2]) {
        ldsm_x4_t(ae, Hs + a_ext + r * HALO_S * HALO_ROW);
#pragma unroll
        for (int j = 0; j < 2; ++j) ldsm_b2(bf + 2 * j, Ds + bcol[j] + HALO_T * r * brow);
    };
    auto ext_sums = [&](const uint32_t (&ae)[4], const uint32_t (&bf)[4][2], int r) {
        // column ej of the fragments by selects (a runtime register index would go to memory)
        uint32_t be[2];
#pragma unroll
        for (int k = 0; k < 2; ++k) be[k] = ej & 2 ? (ej & 1 ? bf[3][k] : bf[2][k]) : (ej & 1 ? bf[1][k] : bf[0][k]);
        conv::mma_f16(ext, ae, be);
        if (sums && r % 8 == warp)
#pragma unroll
            for (int j = 0; j < 4; ++j) conv::mma_f16(bacc[j], ones, bf[j]);
    };
    if constexpr (WG) {
        // tile row r: A (this warp's tap, both channel halves) in a[r mod 2], loaded while row
        // r − 1's wgmmas run once row r − 2's (the last to read that buffer) have retired
        walk_tiles<true>(tiles, h, w, stage, [&](int slot) {
            const uint16_t* Hs = smem + slot * HALO_DW_STAGE;
            const uint16_t* Ds = Hs + HALO_PX * HALO_ROW;
            const uint64_t d0 = wg_desc(smem_addr(Ds), WG_DY_LBO, WG_DY_SBO);
            uint32_t a[2][2][4];
            auto load = [&](int r, uint32_t (&dst)[2][4]) {
#pragma unroll
                for (int i = 0; i < 2; ++i) ldsm_x4_t(dst[i], Hs + a_own + r * HALO_S * HALO_ROW + 16 * i);
            };
            wg_pin(&acc[0][0][0]);
            wg_pin(&acc[1][0][0]);
            load(0, a[0]);
#pragma unroll
            for (int r = 0; r < HALO_T; ++r) {
                wg_fence();
                const uint64_t d = d0 + (uint64_t)(HALO_T * r * 8 * 2 / 16);  // pixel 16 r of the tile
#pragma unroll
                for (int i = 0; i < 2; ++i) wgmma_m64n32k16<1>(&acc[i][0][0], a[r % 2][i], d);
                wg_commit();
                uint32_t ae[4], bf[4][2];
                load_ext(Hs, Ds, r, ae, bf);
                ext_sums(ae, bf, r);
                if (r + 1 < HALO_T) {
                    wg_wait<1>();
                    load(r + 1, a[(r + 1) % 2]);
                }
            }
            wg_wait<0>();  // before the slot is staged again
            wg_pin(&acc[0][0][0]);
            wg_pin(&acc[1][0][0]);
        });
    } else {
        // two stages: the next tile's copies fly while this one's MMAs run
        walk_tiles(tiles, h, w, stage, [&](int slot) {
            const uint16_t* Hs = smem + slot * HALO_DW_STAGE;
            const uint16_t* Ds = Hs + HALO_PX * HALO_ROW;
#pragma unroll 2
            for (int r = 0; r < HALO_T; ++r) {
                uint32_t a[2][4], ae[4], bf[4][2];
#pragma unroll
                for (int i = 0; i < 2; ++i) ldsm_x4_t(a[i], Hs + a_own + r * HALO_S * HALO_ROW + 16 * i);
                load_ext(Hs, Ds, r, ae, bf);
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) conv::mma_f16(acc[i][j], a[i], bf[j]);
                ext_sums(ae, bf, r);
            }
        });
    }
    // C fragments: c0, c1 at (channel g, columns 2t, 2t + 1), c2, c3 at channel g + 8
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int row = gq + (q >= 2 ? 8 : 0), col = 2 * tq + (q & 1);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = n0 + 8 * j + col;
                if (n < N) atomicAdd(&dw[((int64_t)warp * C + c0 + 16 * i + row) * N + n], acc[i][j][q]);
            }
        const int n = n0 + 8 * ej + col;
        if (n < N) atomicAdd(&dw[((int64_t)8 * C + c0 + 16 * eh + row) * N + n], ext[q]);
    }
    // every row of the ones-MMA holds the column sums: row 0 (lanes 0–3) adds them
    if (sums && gq == 0)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 2; ++q) {
                const int n = n0 + 8 * j + 2 * tq + q;
                if (n < N) atomicAdd(&db[n], bacc[j][q]);
            }
}

// The 4 × 4 stride-2 pad-1 layer's weight gradient: dW (f32 rows (tap, ci) × N, zeroed;
// atomics) += Σ over the output pixels of tiles blockIdx.x, + gridDim.x, .. of x(2y − 1 + ky,
// 2x − 1 + kx) · dY(y, x) for input channels c0 .. c0 + 15 and columns n0 .. n0 + 31
// (blockIdx.y = (n0 / 32)·(C / 16) + c0 / 16); N a multiple of 8, C of 16, x n × ih × iw, dY
// n × ih / 2 × iw / 2 (`tiles` of it). A slot holds a tile's input as the forward's planes
// (down_stage) and its dY (tile_stage_dy). The block's result is 16 taps × 16 channels × 32
// columns: warp w owns taps 2w and 2w + 1, an MMA row each, and the four MMA columns. A K
// slice is one output row of 16 pixels: A (channels × pixels) transposed out of the staged
// pixel rows of the tap's plane, eight consecutive pixels in eight bank groups as the
// forward's; B from the dY tile as halo_dw's.
constexpr int DOWN_DW_STAGE = DOWN_IN + HALO_T * HALO_T * HALO_N;  // halves
constexpr int DOWN_DW_SMEM = 2 * DOWN_DW_STAGE * 2;                // bytes
static_assert(DOWN_DW_SMEM == 143744, "the host's size (src/backend/cuda/half.rs DOWN_DW_SMEM)");
DEV void down_dw(const uint16_t* x, const uint16_t* dy, float* dw, int tiles, int ih, int iw, int C, int N) {
    HALO_DYNAMIC_SMEM(smem, 2 * DOWN_DW_STAGE);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, h = ih / 2, w = iw / 2;
    const int chunks = C / DOWN_C, c0 = DOWN_C * ((int)blockIdx.y % chunks), n0 = HALO_N * ((int)blockIdx.y / chunks);
    // A from [pixel][channel] rows, transposed: lane l addresses pixel l % 8 + 8 (l / 16) of the
    // slice at channel chunk (l / 8) % 2; tap (ky, kx) of output row r reads staged row 2r + ky,
    // plane kx mod 2, from pixel kx / 2
    const int apx = lane % 8 + 8 * (lane / 16), achunk = (lane / 8) % 2;
    int arow[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int tap = 2 * warp + i, ky = tap / 4, kx = tap % 4;
        arow[i] = ((ky * 2 + kx % 2) * DOWN_P + kx / 2 + apx) * DOWN_ROW + 8 * achunk;
    }
    int bcol[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) bcol[j] = swizzled<4>(lane % 8 + 8 * ((lane / 8) & 1), 2 * j + lane / 16);
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
    auto stage = [&](const HaloTile& t, int s) {
        uint16_t* hs = smem + s * DOWN_DW_STAGE;
        down_stage(hs, x, C, c0, t, ih, iw);
        tile_stage_dy(hs + DOWN_IN, dy, t, h, w, N, n0);
    };
    walk_tiles(tiles, h, w, stage, [&](int slot) {
        const uint16_t* Hs = smem + slot * DOWN_DW_STAGE;
        const uint16_t* Ds = Hs + DOWN_IN;
#pragma unroll 2
        for (int r = 0; r < HALO_T; ++r) {
            uint32_t a[2][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) ldsm_x4_t(a[i], Hs + arow[i] + r * 2 * 2 * DOWN_P * DOWN_ROW);
#pragma unroll
            for (int j = 0; j < 2; ++j) ldsm_b2(bf + 2 * j, Ds + bcol[j] + HALO_T * r * HALO_N);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) conv::mma_f16(acc[i][j], a[i], bf[j]);
        }
    });
    // C fragments: c0, c1 at (channel g, columns 2t, 2t + 1), c2, c3 at channel g + 8
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int row = gq + (q >= 2 ? 8 : 0), col = 2 * tq + (q & 1);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = n0 + 8 * j + col;
                if (n < N) atomicAdd(&dw[((int64_t)(2 * warp + i) * C + c0 + row) * N + n], acc[i][j][q]);
            }
    }
}

// y = leaky?(conv3(x) + bias) + res; x2 (ca > 0): the input is [x | x2]
DEV void halo_fwd(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res, uint16_t* y,
                  int leaky, int n, int h, int w, int cin, int cout, const uint16_t* x2, int ca) {
    halo3<false>(x, x2, ca, cin, wt, np, cout, n, h, w, FwdOut{bias, res, y, cout, leaky});
}
// The same from cin a multiple of 4 (Halo3x3Four), one tensor
DEV void halo_fwd4(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res, uint16_t* y,
                   int leaky, int n, int h, int w, int cin, int cout) {
    halo_conv<Halo3x3Four, false>(x, nullptr, 0, cin, wt, np, cout, n, h, w, h, w, FwdOut{bias, res, y, cout, leaky});
}
// y = leaky?(conv(x) + bias) + res of a 4 × 4 stride-2 pad-1 layer from x (n × ih × iw × cin,
// cin a multiple of 16) into y (n × ih / 2 × iw / 2 × cout)
DEV void down_fwd(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res, uint16_t* y,
                  int leaky, int n, int ih, int iw, int cin, int cout) {
    halo_conv<Down4x4, false>(x, nullptr, 0, cin, wt, np, cout, n, ih / 2, iw / 2, ih, iw,
                              FwdOut{bias, res, y, cout, leaky});
}
// dX (n × ih × iw × cin, sides even) = [dX +] leaky'(x) · the data gradient of a 4 × 4
// stride-2 pad-1 layer from dY (n × ih / 2 × iw / 2 × cout, cout a multiple of 32; weights
// packed [tap][co][ci])
DEV void down_dx(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx, int accumulate, int n,
                 int ih, int iw, int cin, int cout) {
    halo_conv<Down4x4Dx, true>(dy, nullptr, 0, cout, wt, np, cin, 4 * n, ih / 2, iw / 2, ih / 2, iw / 2,
                               DxOutH{x, dx, cin, accumulate});
}
// A residual block's tail (HaloIdentity): out = a2 + identity(x) + bid with a2 =
// LeakyReLU(conv3(a1) + id.b2) (kept where id.a2 is set); a1 c2 channels, cout a multiple of 8
// (G = Halo3x3Four: a1 a multiple of 4 channels, the low-rank head's 20, and cout any where a2
// is not kept)
template <class G = Halo3x3>
DEV void halo_block(const uint16_t* a1, const uint16_t* wt2, int np, const float* bid, uint16_t* out, int n, int h,
                    int w, int c2, int cout, const HaloIdentity& id) {
    halo_conv<G, false, FwdOut, true>(a1, nullptr, 0, c2, wt2, np, cout, n, h, w, h, w, FwdOut{bid, nullptr, out, cout, 0},
                                      id);
}
// A residual block's input gradient (HaloIdentity, DX): dX = conv1ᵀ(dc1) + identityᵀ(d_out)
// with conv1 3 × 3 (weights packed [tap][co][ci], cout = c1 channels of dc1) and the identity
// 1 × 1 ([co][ci], cid channels of d_out), both np apart; written split into [dx | dx2] at ca
// where dx2 is set (out.dx2, out.ca); cin a multiple of 8
// (G = Halo3x3Wg: both weights K-major for dX, the forward's packings [tap][ci][co], [ci][cid])
template <class G = Halo3x3>
DEV void halo_dx_block(const uint16_t* dc1, const uint16_t* wt1, int np, const uint16_t* d_out, const uint16_t* wid,
                       int cid, const DxOutH& out, int n, int h, int w, int cin, int c1) {
    const HaloIdentity id{d_out, nullptr, 0, cid, wid, nullptr, nullptr};
    halo_conv<G, true, DxOutH, true>(dc1, nullptr, 0, c1, wt1, np, cin, n, h, w, h, w, out, id);
}
// dX (cin channels) = [dX +] leaky'(x) · the data gradient from dY (cout channels)
DEV void halo_dx(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx, int accumulate, int n,
                 int h, int w, int cin, int cout) {
    halo3<true>(dy, nullptr, 0, cout, wt, np, cin, n, h, w, DxOutH{x, dx, cin, accumulate});
}

}  // namespace h16
