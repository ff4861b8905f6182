#!/usr/bin/env python3
"""Times the package's Voronoi-score smoothing (`Mapper._smooth`, OpenCV box filter) on a
nearest-spot fill, and writes the inputs for `spahdmap bench vd`.
    python tools/bench_vd_reference.py --height H --width W --spots N --rank R --radius r --out DIR"""
import argparse, json, os, sys, time
import numpy as np
from scipy.spatial import KDTree
sys.path.insert(0, os.path.dirname(__file__))
import refpkg, cv2

ap = argparse.ArgumentParser()
for a in ("height", "width", "spots", "rank", "radius"):
    ap.add_argument(f"--{a}", type=int, required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
smooth = refpkg.method(refpkg.find_wheel(), "SpaHDmap/train.py", "Mapper", "_smooth", {"np": np, "cv2": cv2})
rng = np.random.default_rng(0)
spots = np.column_stack([rng.random(a.spots) * a.height, rng.random(a.spots) * a.width])
scores = rng.random((a.spots, a.rank)).astype(np.float16)
yy, xx = np.meshgrid(np.arange(a.height), np.arange(a.width), indexing="ij")
_, nearest = KDTree(spots).query(np.column_stack([yy.ravel(), xx.ravel()]), workers=2)
nearest = nearest.reshape(a.height, a.width).astype(np.int32)
mask = np.ones((a.height, a.width), np.uint8)
np.save(f"{a.out}/scores.npy", scores.astype(np.float32)); np.save(f"{a.out}/nearest.npy", nearest); np.save(f"{a.out}/mask.npy", mask)
k = a.radius // 2 * 2 + 1
t = time.perf_counter()
ext = np.transpose(scores[nearest.ravel()].reshape(a.height, a.width, -1), (2, 0, 1))
vd = smooth(None, ext, k, threshold=0.01) * mask[None]
print(json.dumps({"bench": "vd_reference", "seconds": time.perf_counter() - t, "detail": {"pixels": a.height * a.width, "components": a.rank, "kernel": k, "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads()}}))
