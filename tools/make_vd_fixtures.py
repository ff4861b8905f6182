#!/usr/bin/env python3
"""Golden values for the Voronoi score (SPEC §8): the package's own `Mapper._smooth` (pulled
out of train.py with ast, no torch) applied to a nearest-spot fill of random spot scores on
the preprocessing fixture's crop. Writes tests/fixtures/vd/. Needs numpy, scipy, opencv."""
import json, os, sys, types
import numpy as np
from scipy.spatial import KDTree

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

wheel = refpkg.find_wheel()
import cv2
ns = {"np": np, "cv2": cv2}
smooth = refpkg.method(wheel, "SpaHDmap/train.py", "Mapper", "_smooth", ns)

pre = "tests/fixtures/preprocess"
ref = json.load(open(f"{pre}/reference.json"))
mask = np.load(f"{pre}/mask.npy").astype(bool)
spots = np.load(f"{pre}/spot_coord.npy")
(r0, r1), (c0, c1) = ref["row_range"], ref["col_range"]
rng = np.random.default_rng(5)
scores = rng.random((spots.shape[0], 3)).astype(np.float16)
grid = np.stack(np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij"), -1).reshape(-1, 2)
_, nearest = KDTree(spots).query(grid)
ext = np.transpose(scores[nearest].reshape(r1 - r0, c1 - c0, -1), (2, 0, 1))
kernel = ref["radius"] // 2 * 2 + 1
vd = smooth(None, ext.copy(), kernel, threshold=0.01) * mask[None]
out = "tests/fixtures/vd"
os.makedirs(out, exist_ok=True)
np.save(f"{out}/scores.npy", scores.astype(np.float32))
np.save(f"{out}/nearest.npy", nearest.astype(np.int32).reshape(r1 - r0, c1 - c0))
np.save(f"{out}/vd_f16_bits.npy", vd.astype(np.float16).view(np.uint16))  # the package stores float16
json.dump({"kernel_size": kernel, "threshold": 0.01, "opencv": cv2.__version__}, open(f"{out}/reference.json", "w"))
print("vd", vd.shape, float(vd.mean()))
