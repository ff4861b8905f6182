// CUDA on the CPU for the kernel emulators (conv_kernels_emu.cpp, memory_kernels_emu.cpp):
// f16 conversions as cvt does them (round to nearest even), and the thread model. A block's
// threads are std::threads sharing `static` shared arrays, __syncthreads is a barrier (counted:
// `emu_epoch`), warp
// shuffles trade through a buffer between two of the warp's barriers, and a grid runs one block
// at a time (each thread walks the blocks in order and meets the others at a barrier between
// them, so shared arrays pass to the next block).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define __device__
#define __global__
#define __forceinline__
#define __shared__ static

struct Dim3 {
    unsigned x, y, z;
};
thread_local Dim3 threadIdx, blockIdx;
Dim3 gridDim, blockDim;
static std::barrier<>* block_barrier;
constexpr int MAX_WARPS = 8;
static std::barrier<>* warp_barrier[MAX_WARPS];
// barriers this thread has passed in its launch (each block's end counts as one): accesses to
// shared memory by two threads in the same epoch have no barrier between them
thread_local long emu_epoch = 0;
// and the warp barriers (a block barrier is one too): comparable between lanes of one warp
thread_local long emu_wepoch = 0;
inline void __syncthreads() {
    block_barrier->arrive_and_wait();
    ++emu_epoch;
    ++emu_wepoch;
}
// an emulator's checks: at a launch's start (one thread), and on each thread as a block ends
static void (*emu_on_launch)() = nullptr;
static void (*emu_on_block_end)() = nullptr;
inline void __syncwarp() {
    warp_barrier[threadIdx.x / 32]->arrive_and_wait();
    ++emu_wepoch;
}
static float shfl_buf[MAX_WARPS][32];
inline float __shfl_xor_sync(unsigned, float v, int m) {
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    shfl_buf[w][lane] = v;
    warp_barrier[w]->arrive_and_wait();
    const float r = shfl_buf[w][lane ^ m];
    warp_barrier[w]->arrive_and_wait();
    return r;
}
inline void __trap() { std::abort(); }
using std::fmaf;
template <class T>
T min(T a, T b) {
    return a < b ? a : b;
}

// `body` on every thread of a grid of blocks of whole warps (at most MAX_WARPS)
static void launch(Dim3 grid, Dim3 block, const std::function<void()>& body) {
    const unsigned threads = block.x * block.y * block.z;
    if (threads % 32 != 0 || threads > 32 * MAX_WARPS) std::abort();
    gridDim = grid;
    blockDim = block;
    std::barrier<> all((std::ptrdiff_t)threads);
    block_barrier = &all;
    if (emu_on_launch) emu_on_launch();
    for (auto& w : warp_barrier) w = new std::barrier<>(32);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = {x, y, z};
                        body();
                        if (emu_on_block_end) emu_on_block_end();
                        all.arrive_and_wait();
                        ++emu_epoch;
                        ++emu_wepoch;
                    }
        });
    for (auto& t : pool) t.join();
    for (auto& w : warp_barrier) delete w;
}

namespace h16 {
inline float h2f(uint16_t h) {
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}
inline uint16_t f2h(float f) {
    const _Float16 v = (_Float16)f;
    uint16_t h;
    std::memcpy(&h, &v, 2);
    return h;
}
}  // namespace h16
