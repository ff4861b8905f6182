// Warpgroup MMA (wgmma, sm_90a only; kernels/sm90a/conv_wg.cu builds the kernels that use it),
// in namespace h16 after conv_h16.cu's cp.async and ldmatrix. On the host,
// tests/conv_kernels_emu.cpp defines the instructions (emulated, results landing at the wait
// that retires their group) before including the kernels; `wg_desc` is the kernels' own.
//
// What the halo kernels take from it: A (a warp's 16 × 16 mma.m16n8k16 fragment, as ldmatrix
// already gives it) from registers, B (16 × 32: weights, or the weight gradient's dY read
// transposed) by the tensor cores from shared memory through a descriptor, so no ldmatrix and no
// registers carry B, and one instruction of the warpgroup replaces a warp's four mma.sync.
#pragma once
#include <cstdint>

namespace h16 {

// Descriptor of an operand in shared memory without swizzle (PTX ISA, "matrix descriptor"):
// K-major, core matrices of 8 rows (n) × 16 bytes (8 values of k); MN-major, of 8 rows (k) × 16
// bytes (8 values of n); either way `lbo` bytes from one to the next along k and `sbo` along n.
// Addresses, lbo and sbo in 16-byte units, 14 bits each (bits 0–13, 16–29, 32–45), layout type
// 0 (no swizzle) in bits 62–63, no base offset.
HD uint64_t wg_desc(uint32_t smem_byte_addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((smem_byte_addr & 0x3FFFF) >> 4) | (uint64_t)((lbo & 0x3FFFF) >> 4) << 16 |
           (uint64_t)((sbo & 0x3FFFF) >> 4) << 32;
}

#ifdef __CUDACC__
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// orders this thread's register writes (new A fragments, zeroed sums) before the wgmmas after it
DEV void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
DEV void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// until at most N of the warpgroup's committed groups are in flight (their A registers and
// sums are the hardware's until then)
template <int N>
DEV void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// shared memory written through the generic proxy (cp.async, st.shared) made visible to the
// async proxy the wgmma reads B through; before the barrier that publishes it
DEV void wg_proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// keeps the compiler from moving accesses of the sums across the asynchronous instructions
DEV void wg_pin(float* d) {
#pragma unroll
    for (int i = 0; i < 16; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// d (a warp's 16 rows × 32 columns as mma's C fragments of four 8-column tiles: d[4j + q] is
// tile j's c_q) += A (this warp's 16 × 16 fragment, mma.m16n8k16's a0..a3) · B (16 × 32 at desc:
// K-major, or MN-major where TRANS_B — imm-trans-b — is 1)
template <int TRANS_B>
DEV void wgmma_m64n32k16(float* d, const uint32_t* a, uint64_t desc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, %22;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1), "n"(TRANS_B)
        : "memory");
}
#else
// other targets: never instantiated by their kernels (conv_halo.cuh's WG geometries are built
// for sm_90a alone); a call traps rather than computing something else
DEV void wg_fence() { __trap(); }
DEV void wg_commit() { __trap(); }
template <int N>
DEV void wg_wait() {
    __trap();
}
DEV void wg_proxy_fence() { __trap(); }
DEV void wg_pin(float*) {}
template <int TRANS_B>
DEV void wgmma_m64n32k16(float*, const uint32_t*, uint64_t) {
    __trap();
}
#endif
#endif  // on the host, tests/conv_kernels_emu.cpp defines these before including this file

}  // namespace h16
