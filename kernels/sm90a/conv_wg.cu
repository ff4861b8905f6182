// The halo kernels on wgmma (conv_halo.cuh Halo3x3Wg), for sm_90a alone: build.rs compiles this
// file into a second image (-gencode arch=compute_90a,code=sm_90a) that the CUDA backend loads
// beside the main one on a compute-capability 9.0 card and asks only for these entry points. The
// signatures and epilogues are the mma.sync kernels' (conv_h16.cu); the forward-type kernels take
// their weights packed K-major, [tap][N][np] with a column's np ≥ C channels contiguous (np: that
// row length), and the weight gradient takes x and dY as its twin does.
#include "../conv_h16.cu"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// conv3_halo_fwd_h16's (cin a multiple of 32, x2 / ca a concatenation); wt [tap][cout][np]
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_fwd_wg_h16(const uint16_t* x, const uint16_t* wt, int np, const float* bias, const uint16_t* res,
                          uint16_t* y, int leaky, int n, int h, int w, int cin, int cout, int, int, int,
                          const uint16_t* x2, int ca) {
    h16::halo_conv<h16::Halo3x3Wg, false>(x, x2, ca, cin, wt, np, cout, n, h, w, h, w,
                                          h16::FwdOut{bias, res, y, cout, leaky});
}
// conv3_halo_fwd_stats_h16's; wt [tap][cout][np]
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_fwd_stats_wg_h16(const uint16_t* x, const uint16_t* wt, int np, const float* bias, uint16_t* y, int n,
                                int h, int w, int cin, int cout, double* s0, double* s1, int cn) {
    if (cout % 8 != 0) __trap();
    const h16::FwdStatsOut out{{bias, nullptr, y, cout, 0}, s0, s1, cn};
    h16::halo_conv<h16::Halo3x3Wg, false>(x, nullptr, 0, cin, wt, np, cout, n, h, w, h, w, out);
}
// conv3_halo_dx_h16's (cout a multiple of 32); wt [tap][cin][np], the forward's [tap][ci][co]
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_dx_wg_h16(const uint16_t* dy, const uint16_t* wt, int np, const uint16_t* x, uint16_t* dx,
                         int accumulate, int n, int h, int w, int cin, int cout, int, int, int) {
    h16::halo_conv<h16::Halo3x3Wg, true>(dy, nullptr, 0, cout, wt, np, cin, n, h, w, h, w,
                                         h16::DxOutH{x, dx, cin, accumulate});
}
// conv3_halo_block_h16's, weights K-major: conv2's [tap][cout][np] and the identity's
// [cout][cid] (cid a multiple of 32: rows cid apart)
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_block_wg_h16(const uint16_t* a1, const uint16_t* wt2, int np, const float* b2, uint16_t* a2,
                            const uint16_t* x, const uint16_t* x2, int ca, int cid, const uint16_t* wid,
                            const float* bid, uint16_t* out, int n, int h, int w, int c2, int cout) {
    if (cout % 8 != 0) __trap();
    h16::halo_block<h16::Halo3x3Wg>(a1, wt2, np, bid, out, n, h, w, c2, cout,
                                    h16::HaloIdentity{x, x2, ca, cid, wid, b2, a2});
}
// conv3_halo_block_norm_h16's, weights as conv3_halo_block_wg_h16's
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_block_norm_wg_h16(const uint16_t* c1, const uint16_t* wt2, int np, const float* b2,
                                 const uint16_t* x, const uint16_t* x2, int ca, int cid, const uint16_t* wid,
                                 const float* bid, uint16_t* out, int n, int h, int w, int c2, int cout,
                                 const float* stats, const float* gamma, const float* beta, int half) {
    if (cout % 8 != 0 || half % 8 != 0) __trap();
    h16::HaloIdentity id{x, x2, ca, cid, wid, b2, nullptr};
    id.norm = h16::HaloNorm{stats, gamma, beta, n, half};
    h16::halo_block<h16::Halo3x3Wg>(c1, wt2, np, bid, out, n, h, w, c2, cout, id);
}
// conv3_halo_dx_block_h16's, weights K-major for dX: conv1's the forward's [tap][ci][np] and the
// identity's [ci][cid] (cid, d_out's channels, a multiple of 32)
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_dx_block_wg_h16(const uint16_t* dc1, const uint16_t* wt1, int np, const uint16_t* d_out,
                               const uint16_t* wid, int cid, uint16_t* dx, uint16_t* dx2, int ca, int n, int h, int w,
                               int cin, int c1) {
    if (cin % 8 != 0) __trap();
    h16::DxOutH out{nullptr, dx, cin, 0};
    out.dx2 = dx2;
    out.ca = dx2 ? ca : 0;
    h16::halo_dx_block<h16::Halo3x3Wg>(dc1, wt1, np, d_out, wid, cid, out, n, h, w, cin, c1);
}
// conv3_halo_dw_h16's (dW and db f32, zeroed; the same grid and shared memory)
extern "C" __global__ void __launch_bounds__(256, 2)
    conv3_halo_dw_wg_h16(const uint16_t* x, const uint16_t* dy, float* dw, float* db, int tiles, int h, int w, int cin,
                         int cout, const uint16_t* x2, int ca) {
    h16::halo_dw<true>(x, dy, dw, db, tiles, h, w, cin, cout, x2, x2 ? ca : 0);
}
#endif
