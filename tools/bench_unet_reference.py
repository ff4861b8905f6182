#!/usr/bin/env python3
"""Time one pre-training iteration (forward, MSE, backward; no optimiser step) of the published
package's SpaHDmapUnet in PyTorch on the CPU, the counterpart of `spahdmap bench unet`:

    python tools/bench_unet_reference.py [--batch 32] [--size 256] [--threads 2] [--repeat 3]
Needs torch."""
import argparse, json, os, resource, sys, time
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--embed-spots", type=int, default=0,
                help="time the package's embedding pass (eval, whole network, skip feature mean) instead")
ap.add_argument("--infer", action="store_true",
                help="time high-definition inference instead: encode_only with a VD prior, no grad, as "
                     "Mapper._extract_embedding runs it (fp32 on the CPU), megapixels of tiles per second")
a = ap.parse_args()
torch.set_num_threads(a.threads)
models = refpkg.load_file(refpkg.find_wheel(), "SpaHDmap/model/models.py", "spahdmap_ref_models")
torch.manual_seed(0)
m = models.SpaHDmapUnet(rank=20, num_genes=2000, num_channels=3)
m.train()
x = torch.rand(a.batch, 3, a.size, a.size)
if a.infer:
    m.eval()
    m.training_mode = True
    vd = torch.rand(a.batch, 20, a.size, a.size) * 0.9 + 0.05
    ts = []
    for _ in range(a.repeat + 1):
        t = time.perf_counter()
        with torch.no_grad():
            m(image=x, vd_score=vd, encode_only=True)
        ts.append(time.perf_counter() - t)
    ts = ts[1:]
    med = sorted(ts)[len(ts) // 2]
    mpx = a.batch * a.size * a.size / 1e6
    print(json.dumps({"bench": "unet_hd_inference_torch", "median_s": med, "repeat": a.repeat, "threads": a.threads,
                      "detail": {"batch": a.batch, "size": a.size, "megapixel_per_s": mpx / med}}))
    sys.exit(0)
if a.embed_spots:
    m.eval()
    ts = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        with torch.no_grad():
            for b in range(0, a.embed_spots, a.batch):
                _, enc = m(x[: min(a.batch, a.embed_spots - b)])
                enc.mean(dim=(2, 3))
        ts.append(time.perf_counter() - t)
    med = sorted(ts)[len(ts) // 2]
    print(json.dumps({"bench": "unet_spot_embedding_torch", "median_s": med, "repeat": a.repeat, "threads": a.threads,
                      "detail": {"spots": a.embed_spots, "batch": a.batch, "size": a.size, "s_per_spot": med / a.embed_spots}}))
    sys.exit(0)
tf, tb = [], []
for _ in range(a.repeat):
    m.zero_grad()
    t = time.perf_counter()
    y = m(x)
    loss = nn.MSELoss()(y, x)
    tf.append(time.perf_counter() - t)
    t = time.perf_counter()
    loss.backward()
    tb.append(time.perf_counter() - t)
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"bench": "unet_pretrain_iteration_torch", "median_s": med(tf) + med(tb), "repeat": a.repeat,
                  "threads": a.threads, "detail": {"batch": a.batch, "size": a.size, "forward_s": med(tf),
                  "backward_s": med(tb), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": torch.__version__}}))
