#!/usr/bin/env python3
"""Measured ceilings of the lent card (METHOD.md: measure them once, use them as the roofline):
device-to-device copy bandwidth (bytes read + written) and the dense matrix rate in fp16 with
fp32 accumulation (tensor cores) and in strict fp32. Prints one JSON line each; needs torch."""
import json, statistics
import torch


def median_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def main():
    dev = torch.device("cuda")
    print(json.dumps({"card": torch.cuda.get_device_name(0), "torch": torch.__version__}))
    n = 1 << 28  # 1 GiB of f32
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    print(json.dumps({"ceiling": "copy_GBps", "value": 2 * 4 * n / ms / 1e6, "ms": ms}))
    del src, dst
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype, name in ((torch.float16, "fp16_TFLOPs"), (torch.float32, "fp32_TFLOPs")):
        m = 8192
        a = torch.rand(m, m, device=dev, dtype=dtype) - 0.5
        b = torch.rand(m, m, device=dev, dtype=dtype) - 0.5
        ms = median_ms(lambda: a @ b)
        print(json.dumps({"ceiling": name, "value": 2 * m**3 / ms / 1e9, "ms": ms}))


if __name__ == "__main__":
    main()
