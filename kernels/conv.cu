// Convolutions of the backend seam as implicit GEMMs, f32 storage and f32 accumulation: the
// CPU backend's conv.rs is their reference. Layouts as there: activations NHWC, conv weights
// [ky][kx][ci][co], transposed-conv weights [ci][ky][kx][co].
//
// Three GEMM bodies take the operand policies of conv_ops.cuh (gathers and epilogues: bias,
// LeakyReLU, residual; the transposed conv's scatter; atomic adds of split-K weight
// gradients): f32 SIMT (the CPU's arithmetic up to summation order), TF32 tensor cores
// (mma.sync m16n8k8, f32 accumulation), and the same with each K step's loads issued before
// the previous step's MMAs (double-buffered shared memory). Each block first decomposes its 64
// rows and 64 columns, and each K step its K indices, into shared memory.

#include <cstdint>

#include "conv_ops.cuh"
#include "mma.cuh"

namespace conv {

constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

// The rows' and columns' decompositions of this block, in shared memory.
template <int TBM = BM, int TBN = BN, class Op>
__device__ __forceinline__ void tile_infos(const Op& op, int64_t M, int N, typename Op::MI* mi, typename Op::NI* ni) {
    static_assert(TBM + TBN <= THREADS, "one thread per row and column");
    const int tid = threadIdx.x;
    if (tid < TBM) mi[tid] = op.mi((int64_t)blockIdx.x * TBM + tid, M);
    else if (tid < TBM + TBN) ni[tid - TBM] = op.ni((int64_t)blockIdx.y * TBN + tid - TBM, N);
    __syncthreads();
}

// One K step (KS wide) of A (BM × KS) and B (KS × BN) in one thread's registers. With 256
// threads and KS, BM, BN dividing 256, each thread's index along the contiguous dimension is the
// same in every load of the step: its decomposition is read once from shared memory, and the
// varying one is the same across a warp (a broadcast read).
template <int KS, int TBM = BM, int TBN = BN>
struct Staged {
    static constexpr int NA = TBM * KS / THREADS, NB = TBN * KS / THREADS;
    float a[NA], b[NB];
};

// Load a step's elements into registers (the loads are issued here and waited for only where
// the values are used: by store_step).
template <int KS, int TBM = BM, int TBN = BN, class Op>
__device__ __forceinline__ void load_step(const Op& op, const typename Op::MI* mi, const typename Op::KI* ki,
                                          const typename Op::NI* ni, Staged<KS, TBM, TBN>& st) {
    const int tid = threadIdx.x;
    constexpr int NA = Staged<KS, TBM, TBN>::NA, NB = Staged<KS, TBM, TBN>::NB;
    if constexpr (Op::A_K_FAST) {
        const int kk = tid % KS;
        const typename Op::KI k = ki[kk];
#pragma unroll
        for (int i = 0; i < NA; ++i) st.a[i] = op.a(mi[(tid + THREADS * i) / KS], k);
    } else {
        const typename Op::MI m = mi[tid % TBM];
#pragma unroll
        for (int i = 0; i < NA; ++i) st.a[i] = op.a(m, ki[(tid + THREADS * i) / TBM]);
    }
    if constexpr (Op::B_N_FAST) {
        const typename Op::NI n = ni[tid % TBN];
#pragma unroll
        for (int i = 0; i < NB; ++i) st.b[i] = op.b(ki[(tid + THREADS * i) / TBN], n);
    } else {
        const typename Op::KI k = ki[tid % KS];
#pragma unroll
        for (int i = 0; i < NB; ++i) st.b[i] = op.b(k, ni[(tid + THREADS * i) / KS]);
    }
}

// Hand a step's registers to put_a(m, k, v) and put_b(n, k, v): load_step's element mapping.
template <int KS, class Op, int TBM = BM, int TBN = BN, class PutA, class PutB>
__device__ __forceinline__ void store_step(const Staged<KS, TBM, TBN>& st, PutA put_a, PutB put_b) {
    const int tid = threadIdx.x;
    constexpr int NA = Staged<KS, TBM, TBN>::NA, NB = Staged<KS, TBM, TBN>::NB;
#pragma unroll
    for (int i = 0; i < NA; ++i) {
        if constexpr (Op::A_K_FAST) put_a((tid + THREADS * i) / KS, tid % KS, st.a[i]);
        else put_a(tid % TBM, (tid + THREADS * i) / TBM, st.a[i]);
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
        if constexpr (Op::B_N_FAST) put_b(tid % TBN, (tid + THREADS * i) / TBN, st.b[i]);
        else put_b((tid + THREADS * i) / KS, tid % KS, st.b[i]);
    }
}

// load_step with four-wide loads for the operands whose layout allows them (va, vb: the
// policy's vec_a / vec_b), placed by vec_slot; the others as load_step.
template <int KS, int TBM = BM, int TBN = BN, class Op>
__device__ __forceinline__ void load_step_vec(const Op& op, bool va, bool vb, const typename Op::MI* mi,
                                              const typename Op::KI* ki, const typename Op::NI* ni,
                                              Staged<KS, TBM, TBN>& st) {
    const int tid = threadIdx.x;
    constexpr int NA = Staged<KS, TBM, TBN>::NA, NB = Staged<KS, TBM, TBN>::NB;
    if (va && vb) {
#pragma unroll
        for (int i = 0; i < NA / 4; ++i) {
            const Slot q = vec_slot<TBM, KS, THREADS>(Op::A_K_FAST, tid, i);
            const F4 v = op.a4(mi[q.r], ki[q.c]);
            st.a[4 * i] = v.x, st.a[4 * i + 1] = v.y, st.a[4 * i + 2] = v.z, st.a[4 * i + 3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < NB / 4; ++i) {
            const Slot q = vec_slot<TBN, KS, THREADS>(!Op::B_N_FAST, tid, i);
            const F4 v = op.b4(ki[q.c], ni[q.r]);
            st.b[4 * i] = v.x, st.b[4 * i + 1] = v.y, st.b[4 * i + 2] = v.z, st.b[4 * i + 3] = v.w;
        }
    } else {
        load_step<KS, TBM, TBN>(op, mi, ki, ni, st);
    }
}

// store_step for load_step_vec's placement.
template <int KS, class Op, int TBM = BM, int TBN = BN, class PutA, class PutB>
__device__ __forceinline__ void store_step_vec(bool vec, const Staged<KS, TBM, TBN>& st, PutA put_a, PutB put_b) {
    const int tid = threadIdx.x;
    constexpr int NA = Staged<KS, TBM, TBN>::NA, NB = Staged<KS, TBM, TBN>::NB;
    if (!vec) {
        store_step<KS, Op, TBM, TBN>(st, put_a, put_b);
        return;
    }
#pragma unroll
    for (int i = 0; i < NA / 4; ++i) {
        const Slot q = vec_slot<TBM, KS, THREADS>(Op::A_K_FAST, tid, i);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if constexpr (Op::A_K_FAST) put_a(q.r, q.c + j, st.a[4 * i + j]);
            else put_a(q.r + j, q.c, st.a[4 * i + j]);
        }
    }
#pragma unroll
    for (int i = 0; i < NB / 4; ++i) {
        const Slot q = vec_slot<TBN, KS, THREADS>(!Op::B_N_FAST, tid, i);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if constexpr (Op::B_N_FAST) put_b(q.r + j, q.c, st.b[4 * i + j]);
            else put_b(q.r, q.c + j, st.b[4 * i + j]);
        }
    }
}

// Gather one K step straight into shared memory through put_a and put_b.
template <int KS, class Op, class PutA, class PutB>
__device__ __forceinline__ void gather_step(const Op& op, const typename Op::MI* mi, const typename Op::KI* ki,
                                            const typename Op::NI* ni, PutA put_a, PutB put_b) {
    Staged<KS> st;
    load_step<KS>(op, mi, ki, ni, st);
    store_step<KS, Op>(st, put_a, put_b);
}

// C[m][n] = Σ_k A(m, k) B(k, n) over k in [k0, k1) for the block's 64 × 64 tile, f32 FMAs.
// A_K_FAST / B_N_FAST say which index runs along contiguous memory, so loads coalesce.
template <class Op>
__device__ __forceinline__ void gemm_tile(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    __shared__ typename Op::MI mi[BM];
    __shared__ typename Op::NI ni[BN];
    __shared__ typename Op::KI ki[BK];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    tile_infos(op, M, N, mi, ni);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int64_t kt = k0; kt < k1; kt += BK) {
        if (tid < BK) ki[tid] = op.ki(kt + tid, k1);
        __syncthreads();
        gather_step<BK>(
            op, mi, ki, ni, [&](int m, int k, float v) { As[k][m] = v; }, [&](int n, int k, float v) { Bs[k][n] = v; });
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
            const int r = ty + 16 * i, c = tx + 16 * j;
            if (mi[r].ok && ni[c].ok) op.store(mi[r], ni[c], acc[i][j]);
        }
}

// The same GEMM on tensor cores: TF32 operands (f32 with a 10-bit mantissa, rounded to
// nearest on the way into shared memory), f32 accumulation, mma.sync m16n8k8 (sm_80+).
// Block tile 64 × 64 × 32, 8 warps as 2 (m) × 4 (n), each warp 32 × 16 = 2 × 2 MMA tiles.
// Shared rows are 36 words apart so the fragment reads (rows g, columns t) hit 32 banks.
constexpr int TK = 32, TS = TK + 4;

// to_tf32, mma_tf32, pack_f16, mma_f16: mma.cuh

// A shared tile of ROWS rows × KW words along k (TK TF32 words, or TK/2 words of two f16 —
// k pairs): [row][k], rows KW + 4 words apart, where the four-wide loads run along k (K_MAJOR
// false), or [k][row], k rows ROWS + 8 words apart, where they run along the rows — so that
// each thread's four values land in one 16-byte store and a quarter-warp's stores in 32
// consecutive words, and the fragment reads (rows g, k t) still hit 32 banks (8t + g: ROWS + 8
// ≡ 8 mod 32; 4·odd·g + t the other way). Stored the other way, a thread's four values along
// the rows were four stores TS words apart and neighbouring threads 4·TS apart: 16 threads of a
// warp on the same bank.
template <int ROWS, bool K_MAJOR, int KW = TK>
struct Smem {
    static constexpr int LD = K_MAJOR ? ROWS + 8 : KW + 4;
    static constexpr int SIZE = K_MAJOR ? KW * LD : ROWS * LD;
    static constexpr int WORDS = KW;
    static_assert(K_MAJOR ? LD % 32 == 8 : LD % 8 == 4, "conflict-free fragment reads");
    __device__ __forceinline__ static int at(int r, int k) { return K_MAJOR ? k * LD + r : r * LD + k; }
};

struct alignas(16) U4 {
    uint32_t x, y, z, w;
};
struct alignas(8) U2 {
    uint32_t x, y;
};

// A warp's share of a tensor-core tile: JM × JN MMA tiles of 16 × 8 starting at row wm and
// column wn of the block tile, accumulated in f32.
template <int JM, int JN>
struct WarpTile {
    float acc[JM][JN][4];
    int wm, wn, g, t;  // g = lane / 4, t = lane % 4: the fragment coordinates of mma.m16n8k8

    __device__ __forceinline__ WarpTile(int wm_, int wn_) : wm(wm_), wn(wn_), g(threadIdx.x % 32 / 4), t(threadIdx.x % 4) {
#pragma unroll
        for (int i = 0; i < JM; ++i)
#pragma unroll
            for (int j = 0; j < JN; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
    }

    // The MMAs of one K step from [row][k] shared tiles of TF32 words (rows TS words apart, so
    // the fragment reads — rows g, columns t — hit 32 banks).
    __device__ __forceinline__ void step(const uint32_t (*As)[TS], const uint32_t (*Bs)[TS]) {
        step<Smem<0, false>, Smem<0, false>>(&As[0][0], &Bs[0][0]);
    }

    // The same from tiles laid out as LA and LB (Smem: [row][k] or [k][row]) of TF32 words or,
    // with F16, of f16 pairs (mma.m16n8k16: A's registers hold rows g, g + 8 at k pairs t,
    // t + 4 of 8, B's k pairs t, t + 4 at column g — the TF32 fragments' word pattern, so the
    // reads are the same and each covers twice the k).
    template <class LA, class LB, bool F16 = false>
    __device__ __forceinline__ void step(const uint32_t* As, const uint32_t* Bs) {
        static_assert(LA::WORDS == (F16 ? TK / 2 : TK) && LB::WORDS == LA::WORDS, "tile words per K step");
#pragma unroll
        for (int ks = 0; ks < LA::WORDS; ks += 8) {
            uint32_t a[JM][4], b[JN][2];
#pragma unroll
            for (int i = 0; i < JM; ++i) {
                const int r = wm + 16 * i + g;
                a[i][0] = As[LA::at(r, ks + t)];
                a[i][1] = As[LA::at(r + 8, ks + t)];
                a[i][2] = As[LA::at(r, ks + t + 4)];
                a[i][3] = As[LA::at(r + 8, ks + t + 4)];
            }
#pragma unroll
            for (int j = 0; j < JN; ++j) {
                const int c = wn + 8 * j + g;
                b[j][0] = Bs[LB::at(c, ks + t)];
                b[j][1] = Bs[LB::at(c, ks + t + 4)];
            }
#pragma unroll
            for (int i = 0; i < JM; ++i)
#pragma unroll
                for (int j = 0; j < JN; ++j) {
                    if constexpr (F16) mma_f16(acc[i][j], a[i], b[j]);
                    else mma_tf32(acc[i][j], a[i], b[j]);
                }
        }
    }

    // Hand each in-range result to the policy's epilogue, one element at a time.
    template <class Op>
    __device__ __forceinline__ void store(const Op& op, const typename Op::MI* mi, const typename Op::NI* ni) const {
#pragma unroll
        for (int i = 0; i < JM; ++i)
#pragma unroll
            for (int j = 0; j < JN; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int r = wm + 16 * i + g + (q >= 2 ? 8 : 0), c = wn + 8 * j + 2 * t + (q & 1);
                    if (mi[r].ok && ni[c].ok) op.store(mi[r], ni[c], acc[i][j][q]);
                }
    }

    // The same two adjacent columns at a time (`store2`), for layouts with even channel counts.
    template <class Op>
    __device__ __forceinline__ void store_pairs(const Op& op, const typename Op::MI* mi,
                                                const typename Op::NI* ni) const {
#pragma unroll
        for (int i = 0; i < JM; ++i)
#pragma unroll
            for (int j = 0; j < JN; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = wm + 16 * i + g + 8 * h, c = wn + 8 * j + 2 * t;
                    if (!mi[r].ok) continue;
                    if (ni[c + 1].ok) op.store2(mi[r], ni[c], ni[c + 1], acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                    else if (ni[c].ok) op.store(mi[r], ni[c], acc[i][j][2 * h]);
                }
    }
};

template <class Op>
__device__ __forceinline__ void gemm_tile_tc(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    __shared__ uint32_t As[BM][TS];  // [m][k]
    __shared__ uint32_t Bs[BN][TS];  // [n][k]
    __shared__ typename Op::MI mi[BM];
    __shared__ typename Op::NI ni[BN];
    __shared__ typename Op::KI ki[TK];
    const int tid = threadIdx.x, warp = tid / 32;
    tile_infos(op, M, N, mi, ni);
    WarpTile<2, 2> wt((warp / 4) * 32, (warp % 4) * 16);
    for (int64_t kt = k0; kt < k1; kt += TK) {
        if (tid < TK) ki[tid] = op.ki(kt + tid, k1);
        __syncthreads();
        gather_step<TK>(
            op, mi, ki, ni, [&](int m, int k, float v) { As[m][k] = to_tf32(v); },
            [&](int n, int k, float v) { Bs[n][k] = to_tf32(v); });
        __syncthreads();
        wt.step(As, Bs);
        __syncthreads();
    }
    wt.store(op, mi, ni);
}

// The tensor-core GEMM with its loads one K step ahead: step s + 1's elements are loaded into
// registers before step s's MMAs and stored into the other half of double-buffered shared
// memory after them, so global-memory latency hides behind the tensor cores and each step
// costs one barrier. Same tiles, fragments and epilogue as gemm_tile_tc.
template <class Op>
__device__ __forceinline__ void gemm_tile_tc_pipelined(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    __shared__ uint32_t As[2][BM][TS];  // [buffer][m][k]
    __shared__ uint32_t Bs[2][BN][TS];  // [buffer][n][k]
    __shared__ typename Op::MI mi[BM];
    __shared__ typename Op::NI ni[BN];
    __shared__ typename Op::KI ki[2][TK];
    const int tid = threadIdx.x, warp = tid / 32;
    tile_infos(op, M, N, mi, ni);
    WarpTile<2, 2> wt((warp / 4) * 32, (warp % 4) * 16);
    const int64_t steps = k1 > k0 ? (k1 - k0 + TK - 1) / TK : 0;
    // four-wide loads where both operands' layouts allow them (every layer but the first);
    // a K step starts at a multiple of 4, so runs never straddle a tile's edge
    const bool vec = op.vec_a() && op.vec_b();
    Staged<TK> st;
    auto put = [&](int buf) {
        store_step_vec<TK, Op>(
            vec, st, [&](int m, int k, float v) { As[buf][m][k] = to_tf32(v); },
            [&](int n, int k, float v) { Bs[buf][n][k] = to_tf32(v); });
    };
    if (steps > 0) {
        if (tid < TK) ki[0][tid] = op.ki(k0 + tid, k1);
        __syncthreads();
        load_step_vec<TK>(op, vec, vec, mi, ki[0], ni, st);
        put(0);
        if (steps > 1 && tid < TK) ki[1][tid] = op.ki(k0 + TK + tid, k1);
        __syncthreads();
    }
    for (int64_t s = 0; s < steps; ++s) {
        const int cur = (int)(s & 1), nxt = cur ^ 1;
        const bool more = s + 1 < steps;
        if (more) load_step_vec<TK>(op, vec, vec, mi, ki[nxt], ni, st);
        wt.step(As[cur], Bs[cur]);
        if (more) {
            // the other buffers were last read before the previous barrier
            put(nxt);
            if (s + 2 < steps && tid < TK) ki[cur][tid] = op.ki(k0 + (s + 2) * TK + tid, k1);
        }
        __syncthreads();
    }
    wt.store(op, mi, ni);
}

// store_step_vec's four-wide placement as one 16-byte store per four values, TF32-rounded,
// into tiles laid out along the loads (Smem).
template <class Op, int TBM, int TBN, class LA, class LB>
__device__ __forceinline__ void store_step_smem(const Staged<TK, TBM, TBN>& st, uint32_t* As, uint32_t* Bs) {
    const int tid = threadIdx.x;
    constexpr int NA = Staged<TK, TBM, TBN>::NA, NB = Staged<TK, TBM, TBN>::NB;
    static_assert(LA::SIZE > 0 && LB::SIZE > 0, "layouts");
#pragma unroll
    for (int i = 0; i < NA / 4; ++i) {
        const Slot q = vec_slot<TBM, TK, THREADS>(Op::A_K_FAST, tid, i);
        const float* v = &st.a[4 * i];
        *reinterpret_cast<U4*>(&As[LA::at(q.r, q.c)]) = U4{to_tf32(v[0]), to_tf32(v[1]), to_tf32(v[2]), to_tf32(v[3])};
    }
#pragma unroll
    for (int i = 0; i < NB / 4; ++i) {
        const Slot q = vec_slot<TBN, TK, THREADS>(!Op::B_N_FAST, tid, i);
        const float* v = &st.b[4 * i];
        *reinterpret_cast<U4*>(&Bs[LB::at(q.r, q.c)]) = U4{to_tf32(v[0]), to_tf32(v[1]), to_tf32(v[2]), to_tf32(v[3])};
    }
}

// The wide kernels' staging of a K step, TF32: load_step_vec's registers, stored by
// store_step_smem into [row][k] / [k][row] tiles of TF32 words.
template <class Op, int TBM, int TBN>
struct StageTf32 {
    using LA = Smem<TBM, !Op::A_K_FAST>;
    using LB = Smem<TBN, Op::B_N_FAST>;
    static constexpr bool F16 = false;
    Staged<TK, TBM, TBN> st;
    __device__ __forceinline__ void load(const Op& op, const typename Op::MI* mi, const typename Op::KI* ki,
                                         const typename Op::NI* ni) {
        load_step_vec<TK, TBM, TBN>(op, true, true, mi, ki, ni, st);
    }
    __device__ __forceinline__ void store(uint32_t* As, uint32_t* Bs) const {
        store_step_smem<Op, TBM, TBN, LA, LB>(st, As, Bs);
    }
    // B loaded along its rows (columns n): a thread's loads all cover the same four columns
    __device__ __forceinline__ void add_b(float* s) const {
        static_assert(Op::B_N_FAST, "column sums of B loaded along its columns");
#pragma unroll
        for (int i = 0; i < Staged<TK, TBM, TBN>::NB; ++i) s[i % 4] += st.b[i];
    }
};

// One operand's share of a half-precision K step in a thread's registers (ROWS rows of the
// tile): four-wide loads placed by vec_slot where they run along k (K_FAST), by pair_slot where
// they run along the rows, so that every store writes whole words of k pairs.
template <int ROWS, bool K_FAST>
struct HalfOperand {
    using L = Smem<ROWS, !K_FAST, TK / 2>;
    static constexpr int LOADS = K_FAST ? ROWS * TK / 4 / THREADS : pair_loads<ROWS, TK, THREADS>();
    F4 v[LOADS];
    __device__ __forceinline__ static Slot slot(int i) {
        return K_FAST ? vec_slot<ROWS, TK, THREADS>(true, threadIdx.x, i) : pair_slot<ROWS, TK, THREADS>(threadIdx.x, i);
    }
    __device__ __forceinline__ static bool active(int i) {
        return K_FAST || pair_active<ROWS, TK, THREADS>(threadIdx.x, i);
    }
    // Along k: four k of a row as two words (an 8-byte store). Along the rows: loads 2p and 2p + 1
    // (k even, odd) of the same four rows as four words (a 16-byte store).
    __device__ __forceinline__ void store(uint32_t* S) const {
#pragma unroll
        for (int i = 0; i < LOADS; i += K_FAST ? 1 : 2) {
            if (!active(i)) continue;
            const Slot q = slot(i);
            const F4& e = v[i];
            if constexpr (K_FAST) {
                *reinterpret_cast<U2*>(&S[L::at(q.r, q.c / 2)]) = U2{pack_f16(e.x, e.y), pack_f16(e.z, e.w)};
            } else {
                const F4& o = v[i + 1];
                *reinterpret_cast<U4*>(&S[L::at(q.r, q.c / 2)]) =
                    U4{pack_f16(e.x, o.x), pack_f16(e.y, o.y), pack_f16(e.z, o.z), pack_f16(e.w, o.w)};
            }
        }
    }
};

// The wide kernels' staging of a K step in half precision (A and B as HalfOperand).
template <class Op, int TBM, int TBN>
struct StageF16 {
    using SA = HalfOperand<TBM, Op::A_K_FAST>;
    using SB = HalfOperand<TBN, !Op::B_N_FAST>;
    using LA = typename SA::L;
    using LB = typename SB::L;
    static constexpr bool F16 = true;
    SA a;
    SB b;
    __device__ __forceinline__ void load(const Op& op, const typename Op::MI* mi, const typename Op::KI* ki,
                                         const typename Op::NI* ni) {
#pragma unroll
        for (int i = 0; i < SA::LOADS; ++i) {
            const Slot q = SA::slot(i);
            if (SA::active(i)) a.v[i] = op.a4(mi[q.r], ki[q.c]);
        }
#pragma unroll
        for (int i = 0; i < SB::LOADS; ++i) {
            const Slot q = SB::slot(i);
            if (SB::active(i)) b.v[i] = op.b4(ki[q.c], ni[q.r]);
        }
    }
    __device__ __forceinline__ void store(uint32_t* As, uint32_t* Bs) const {
        a.store(As);
        b.store(Bs);
    }
    // as StageTf32's: pair_slot keeps a thread's columns too (THREADS is a multiple of TBN / 4)
    __device__ __forceinline__ void add_b(float* s) const {
        static_assert(Op::B_N_FAST, "column sums of B loaded along its columns");
#pragma unroll
        for (int i = 0; i < SB::LOADS; ++i) {
            if (!SB::active(i)) continue;
            s[0] += b.v[i].x, s[1] += b.v[i].y, s[2] += b.v[i].z, s[3] += b.v[i].w;
        }
    }
};

// The wide tensor-core GEMM: block tile 128 × WBN × 32, 8 warps as 4 (m) × 2 (n), each warp
// 32 × WBN/2 = 2 × WBN/16 MMA tiles; at WBN = 64 every fragment read feeds twice the MMAs of
// the 64 × 64 kernels and every gathered element a quarter more. Loads run one step ahead in registers (four-wide
// only: see below); shared memory is single-buffered to stay within the 48 KB a kernel gets
// without opting in, so a step takes two barriers.
constexpr int WBM = 128;

// WBN = 64 (8 warps of 32 × 32), or 32 for layers of at most 32 columns (32 × 16 warp tiles),
// which half-empty 64-column tiles would waste
// Stage: StageTf32 (TF32 words, mma.m16n8k8) or StageF16 (f16 pairs, mma.m16n8k16: half the
// shared bytes and fragment reads, half the MMA instructions per K step)
template <int WBN, class Op, template <class, int, int> class Stage = StageTf32>
__device__ __forceinline__ void gemm_tile_tc_wide(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    using St = Stage<Op, WBM, WBN>;
    // each operand laid out along its four-wide loads (Smem)
    using LA = typename St::LA;
    using LB = typename St::LB;
    alignas(16) __shared__ uint32_t As[LA::SIZE];
    alignas(16) __shared__ uint32_t Bs[LB::SIZE];
    __shared__ typename Op::MI mi[WBM];
    __shared__ typename Op::NI ni[WBN];
    __shared__ typename Op::KI ki[TK];
    const int tid = threadIdx.x, warp = tid / 32;
    tile_infos<WBM, WBN>(op, M, N, mi, ni);
    WarpTile<2, WBN / 16> wt((warp / 2) * 32, (warp % 2) * (WBN / 2));
    const int64_t steps = k1 > k0 ? (k1 - k0 + TK - 1) / TK : 0;
    // four-wide loads only: the host launches these kernels where both operands allow them
    // (channel counts divisible by 4, 16-byte aligned; conv_kernel in device.rs) and the 64 × 64
    // pipelined ones elsewhere; without the scalar path's registers the tile fits in 128 per
    // thread
    if (!(op.vec_a() && op.vec_b())) __trap();
    St st;
    // B's column sums (SumsB: the bias gradient), by the first row of blocks, from the staged
    // values before they are rounded
    float bsum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    bool sum_b = false;
    if constexpr (SumsB<Op>::value) sum_b = op.db != nullptr && blockIdx.x == 0;
    if (steps > 0) {
        if (tid < TK) ki[tid] = op.ki(k0 + tid, k1);
        __syncthreads();
        st.load(op, mi, ki, ni);
        // the first step's decompositions are read before the loop writes the next ones
        __syncthreads();
    }
    for (int64_t s = 0; s < steps; ++s) {
        // every warp is past the previous step's MMAs and loads (the barrier closing it)
        if constexpr (SumsB<Op>::value) {
            if (sum_b) st.add_b(bsum);
        }
        st.store(As, Bs);
        const bool more = s + 1 < steps;
        if (more && tid < TK) ki[tid] = op.ki(k0 + (s + 1) * TK + tid, k1);
        __syncthreads();
        if (more) st.load(op, mi, ki, ni);
        wt.template step<LA, LB, St::F16>(As, Bs);
        __syncthreads();
    }
    // channel counts are multiples of 4 here: columns go out in pairs
    wt.store_pairs(op, mi, ni);
    if constexpr (SumsB<Op>::value) {
        if (sum_b) {  // the same for the whole block
            __shared__ float bs[WBN];
            if (tid < WBN) bs[tid] = 0.0f;
            __syncthreads();
            const int c0 = (tid % (WBN / 4)) * 4;  // the columns of the thread's B loads (add_b)
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (bsum[j] != 0.0f) atomicAdd(&bs[c0 + j], bsum[j]);
            __syncthreads();
            if (tid < WBN && ni[tid].ok) atomicAdd(&op.db[ni[tid].i], bs[tid]);
        }
    }
}

// The GEMM bodies by mode: 0 f32 SIMT (the exact path), 1 TF32 tensor cores, 2 TF32 tensor
// cores with loads one step ahead, 3 the same on 128 × 64 tiles, 4 on 128 × 32 tiles; 5 and 6
// the wide and narrow tiles with f16 operands (f32 storage and accumulation).
template <int MODE, class Op>
__device__ __forceinline__ void gemm(const Op& op, int64_t M, int N, int64_t k0, int64_t k1) {
    if constexpr (MODE == 6) gemm_tile_tc_wide<32, Op, StageF16>(op, M, N, k0, k1);
    else if constexpr (MODE == 5) gemm_tile_tc_wide<64, Op, StageF16>(op, M, N, k0, k1);
    else if constexpr (MODE == 4) gemm_tile_tc_wide<32>(op, M, N, k0, k1);
    else if constexpr (MODE == 3) gemm_tile_tc_wide<64>(op, M, N, k0, k1);
    else if constexpr (MODE == 2) gemm_tile_tc_pipelined(op, M, N, k0, k1);
    else if constexpr (MODE == 1) gemm_tile_tc(op, M, N, k0, k1);
    else gemm_tile(op, M, N, k0, k1);
}

// The K range of this block's split (blockIdx.z of gridDim.z), in whole BK steps.
__device__ __forceinline__ void split_range(int64_t K, int64_t* k0, int64_t* k1) {
    const int64_t per = ((K + gridDim.z - 1) / gridDim.z + TK - 1) / TK * TK;
    *k0 = (int64_t)blockIdx.z * per;
    *k1 = min(K, *k0 + per);
}

}  // namespace conv

#define CONV_GEOM_ARGS int n, int h, int w, int cin, int cout, int k, int stride, int pad
#define CONV_GEOM conv::geom(n, h, w, cin, cout, k, stride, pad)
#define UP_ARGS int n, int h, int w, int cin, int cout
#define UP_GEOM conv::geom(n, h, w, cin, cout, 2, 2, 0)

namespace conv {
// y = conv: grid (⌈N·OH·OW / 64⌉, ⌈Cout / 64⌉)
template <int MODE>
__device__ void fwd(const float* x, const float* wt, const float* bias, const float* res, float* y, int leaky,
                    CONV_GEOM_ARGS) {
    Fwd op{x, wt, bias, res, y, CONV_GEOM, leaky};
    gemm<MODE>(op, (int64_t)n * op.g.oh * op.g.ow, cout, 0, (int64_t)k * k * cin);
}
// dX: grid (⌈N·H·W / 64⌉, ⌈Cin / 64⌉); `out`: the epilogue (DxOut)
template <int MODE>
__device__ void bwd_data(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS, DxOut out = {}) {
    BwdData op{dy, wt, dx, CONV_GEOM, out};
    gemm<MODE>(op, (int64_t)n * h * w, cin, 0, (int64_t)k * k * cout);
}
// dX of a stride dividing the kernel, by phases: grid (⌈N·⌈H/s⌉·⌈W/s⌉ / 64⌉, ⌈Cin / 64⌉, s²)
template <int MODE>
__device__ void bwd_data_phased(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS, DxOut out = {}) {
    const Geom g = CONV_GEOM;
    const BwdDataPhased op{{dy, wt, dx, g, out}, phase(g, (int)blockIdx.z)};
    gemm<MODE>(op, (int64_t)n * op.ph.hy * op.ph.wx, cin, 0, (int64_t)op.ph.kk * op.ph.kk * cout);
}
// dW: grid (⌈k·k·Cin / 64⌉, ⌈Cout / 64⌉, splits); dw zeroed first; db (zeroed first, or
// null) summed by the wide bodies only (modes ≥ 3)
template <int MODE>
__device__ void bwd_weight(const float* x, const float* dy, float* dw, CONV_GEOM_ARGS, float* db = nullptr) {
    BwdWeight op{x, dy, dw, CONV_GEOM, MODE >= 3 ? db : nullptr};
    int64_t k0, k1;
    split_range((int64_t)n * op.g.oh * op.g.ow, &k0, &k1);
    gemm<MODE>(op, (int64_t)k * k * cin, cout, k0, k1);
}
// transposed conv: grid (⌈N·H·W / 64⌉, ⌈4·Cout / 64⌉)
template <int MODE>
__device__ void up_fwd(const float* x, const float* wt, const float* bias, float* y, UP_ARGS) {
    UpFwd op{x, wt, bias, y, UP_GEOM};
    gemm<MODE>(op, (int64_t)n * h * w, 4 * cout, 0, cin);
}
// its dX: grid (⌈N·H·W / 64⌉, ⌈Cin / 64⌉)
template <int MODE>
__device__ void up_bwd_data(const float* dy, const float* wt, float* dx, UP_ARGS) {
    UpBwdData op{dy, wt, dx, UP_GEOM};
    gemm<MODE>(op, (int64_t)n * h * w, cin, 0, 4 * cout);
}
// its dW: grid (⌈Cin / 64⌉, ⌈4·Cout / 64⌉, splits); dw zeroed first
template <int MODE>
__device__ void up_bwd_weight(const float* x, const float* dy, float* dw, UP_ARGS) {
    UpBwdWeight op{x, dy, dw, UP_GEOM};
    int64_t k0, k1;
    split_range((int64_t)n * h * w, &k0, &k1);
    gemm<MODE>(op, cin, 4 * cout, k0, k1);
}
}  // namespace conv

#include "conv_small.cuh"
#include "conv_few.cuh"

#ifdef __CUDACC__  // the entry points (tests/conv_kernels_emu.cpp calls conv::fwd<MODE> etc. on the host)
// Each convolution seven times: _f32 (SIMT, the CPU-exact path), _tf32 (tensor cores), _tf32p
// (tensor cores, loads one step ahead), _tf32w (the same on 128 × 64 tiles: grids of
// ⌈M / 128⌉ × ⌈N / 64⌉ blocks), _tf32n (128 × 32 tiles, for at most 32 columns), and _f16w,
// _f16n: the wide and narrow tiles with half-precision operands.
#define CONV_KERNELS(SUFFIX, MODE, MIN_BLOCKS)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                                     \
        conv2d_fwd_##SUFFIX(const float* x, const float* wt, const float* bias, const float* res, float* y,          \
                            int leaky, CONV_GEOM_ARGS) {                                                              \
        conv::fwd<MODE>(x, wt, bias, res, y, leaky, n, h, w, cin, cout, k, stride, pad);                                \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                                     \
        conv2d_bwd_data_##SUFFIX(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS, const float* xin,      \
                                 int accumulate) {                                                                    \
        conv::bwd_data<MODE>(dy, wt, dx, n, h, w, cin, cout, k, stride, pad, conv::DxOut{xin, accumulate});            \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                                     \
        conv2d_bwd_data_phased_##SUFFIX(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS,                 \
                                        const float* xin, int accumulate) {                                           \
        conv::bwd_data_phased<MODE>(dy, wt, dx, n, h, w, cin, cout, k, stride, pad, conv::DxOut{xin, accumulate});     \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                                     \
        conv2d_bwd_weight_##SUFFIX(const float* x, const float* dy, float* dw, CONV_GEOM_ARGS, float* db) {          \
        conv::bwd_weight<MODE>(x, dy, dw, n, h, w, cin, cout, k, stride, pad, db);                                      \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                                     \
        up2_fwd_##SUFFIX(const float* x, const float* wt, const float* bias, float* y, UP_ARGS) {                    \
        conv::up_fwd<MODE>(x, wt, bias, y, n, h, w, cin, cout);                                                         \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                                     \
        up2_bwd_data_##SUFFIX(const float* dy, const float* wt, float* dx, UP_ARGS) {                                \
        conv::up_bwd_data<MODE>(dy, wt, dx, n, h, w, cin, cout);                                                        \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                                     \
        up2_bwd_weight_##SUFFIX(const float* x, const float* dy, float* dw, UP_ARGS) {                               \
        conv::up_bwd_weight<MODE>(x, dy, dw, n, h, w, cin, cout);                                                       \
    }

// three blocks of 256 per SM (80 registers) for the 64 × 64 tiles; two (128) for the wide ones,
// whose 32 accumulators and 24 staged values per thread would spill at 80
CONV_KERNELS(f32, 0, 3)
CONV_KERNELS(tf32, 1, 3)
CONV_KERNELS(tf32p, 2, 3)
CONV_KERNELS(tf32w, 3, 2)
CONV_KERNELS(tf32n, 4, 3)
CONV_KERNELS(f16w, 5, 2)
CONV_KERNELS(f16n, 6, 3)

// The direct kernels for few channels (conv_small.cuh), by the small side's groups of four
// (G: Cout of the forward pass; the data gradient runs direct into at most 4 channels only);
// 1-D grids of 256-thread blocks.
#define SMALL_FWD_KERNEL(G)                                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        conv2d_fwd_small##G(const float* x, const float* wt, const float* bias, const float* res, float* y,     \
                            int leaky, CONV_GEOM_ARGS) {                                                         \
        conv::small_fwd<G>(x, wt, bias, res, y, leaky, CONV_GEOM);                                               \
    }
SMALL_FWD_KERNEL(1)
SMALL_FWD_KERNEL(2)
SMALL_FWD_KERNEL(4)
SMALL_FWD_KERNEL(8)
// the same writing f16 (inference's first layer: the f32 image into f16 activations)
#define SMALL_FWD_H16_KERNEL(G)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        conv2d_fwd_small##G##_h16(const float* x, const float* wt, const float* bias, const uint16_t* res,       \
                                  uint16_t* y, int leaky, CONV_GEOM_ARGS) {                                      \
        conv::small_fwd<G, uint16_t>(x, wt, bias, res, y, leaky, CONV_GEOM);                                     \
    }
SMALL_FWD_H16_KERNEL(1)
SMALL_FWD_H16_KERNEL(2)
SMALL_FWD_H16_KERNEL(4)
SMALL_FWD_H16_KERNEL(8)
extern "C" __global__ void __launch_bounds__(256)
    conv2d_bwd_data_small1(const float* dy, const float* wt, float* dx, CONV_GEOM_ARGS, const float* xin,
                           int accumulate) {
    conv::small_bwd_data<1>(dy, wt, dx, CONV_GEOM, conv::DxOut{xin, accumulate});
}

// The few-channel layers' gradients reading f16 (conv_few.cuh): dW of layers with at most
// 320 (tap, ci) rows and 32 output channels (x f16 or the f32 image; dy f16; f32 for the f32
// storage), dw zeroed first, 1-D grids; dX of a stride-1 layer from at most 4 channels.
#define FEW_DW_KERNEL(NAME, X, D)                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME(const X* x, const D* dy, float* dw, CONV_GEOM_ARGS) { \
        conv::few_dw(x, dy, dw, CONV_GEOM);                                                                       \
    }
FEW_DW_KERNEL(conv2d_bwd_weight_few_h16, uint16_t, uint16_t)
FEW_DW_KERNEL(conv2d_bwd_weight_few_img_h16, float, uint16_t)
FEW_DW_KERNEL(conv2d_bwd_weight_few_f32, float, float)
// dW (f32, zeroed) and db (f32, zeroed, or null) of the U-Net's few-channel layers from f16 dY
// and f16 x or the f32 image, without staging (conv_few.cuh few_direct_dw); grid (blocks, k)
extern "C" __global__ void __launch_bounds__(256, 4)
    conv2d_bwd_weight_direct_h16(const uint16_t* x, const uint16_t* dy, float* dw, float* db, CONV_GEOM_ARGS) {
    conv::few_direct_entry(x, dy, dw, db, CONV_GEOM);
}
extern "C" __global__ void __launch_bounds__(256, 4)
    conv2d_bwd_weight_direct_img_h16(const float* x, const uint16_t* dy, float* dw, float* db, CONV_GEOM_ARGS) {
    conv::few_direct_entry(x, dy, dw, db, CONV_GEOM);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_bwd_data_fewout_h16(const uint16_t* dy, const float* wt, uint16_t* dx, CONV_GEOM_ARGS,
                               const uint16_t* xin, int accumulate) {
    conv::few_out_dx(dy, wt, dx, CONV_GEOM, xin, accumulate);
}

// grid (⌈M / 64⌉, ⌈N / 64⌉, splits); f32 SIMT (the GCN's layers are small and launch-bound)
extern "C" __global__ void __launch_bounds__(256)
    dense_f32(const float* A, int64_t sam, int64_t sak, const float* B, int64_t sbk, int64_t sbn, const float* bias,
              float* C, int ldc, int64_t M, int N, int64_t K, int atomic) {
    conv::Dense op{A, B, bias, C, sam, sak, sbk, sbn, ldc, atomic};
    int64_t k0, k1;
    conv::split_range(K, &k0, &k1);
    conv::gemm_tile(op, M, N, k0, k1);
}

#endif  // __CUDACC__
