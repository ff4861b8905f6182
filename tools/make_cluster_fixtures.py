#!/usr/bin/env python3
"""Golden values for the downstream clustering (SPEC §11) from the published package's own
`cluster_score` (SpaHDmap/utils/clustering.py: scikit-learn's kneighbors_graph, scikit-network's
Louvain, OpenCV resizes, scikit-learn's KMeans), run on a stand-in section object.

Inputs are generated here (7 overlapping groups of 1,500 spots in 6 components, and a 6 × 90 × 110 half-precision
score map of 4 regions with a tissue mask); outputs: the Louvain labels before and after the
reference's neighbour-majority step, the 4×-shrunk score map and mask, and the pixel labels.
Writes tests/fixtures/cluster/. Needs numpy, scipy, scikit-learn, scikit-network, opencv:
    python tools/make_cluster_fixtures.py
"""
import importlib.util, os, sys, types
import numpy as np
import cv2
from sklearn.neighbors import kneighbors_graph
from sknetwork.clustering import Louvain

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

root = refpkg.unpack(refpkg.find_wheel())
for name, path in [("SpaHDmap", "SpaHDmap"), ("SpaHDmap.data", "SpaHDmap/data"), ("SpaHDmap.utils", "SpaHDmap/utils")]:
    m = types.ModuleType(name)
    m.__path__ = [os.path.join(root, path)]
    sys.modules[name] = m
sys.modules["SpaHDmap.data"].STData = type("STData", (), {})
spec = importlib.util.spec_from_file_location("SpaHDmap.utils.clustering", os.path.join(root, "SpaHDmap/utils/clustering.py"))
clustering = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = clustering
spec.loader.exec_module(clustering)

out = "tests/fixtures/cluster"
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
R, n = 6, 1500
centres = rng.uniform(0, 1, (7, R))
group = rng.integers(0, 7, n)
spot = np.clip(centres[group] + rng.normal(0, 0.2, (n, R)), 0, 1)

H, W = 90, 110
yy, xx = np.mgrid[0:H, 0:W]
region = (yy > 40).astype(int) * 2 + (xx > 60 + 10 * np.sin(yy / 9)).astype(int)
score = np.clip(centres[region].transpose(2, 0, 1) + rng.normal(0, 0.1, (R, H, W)), 0, 1).astype(np.float16)
mask = ((yy - 45) ** 2 / 44 ** 2 + (xx - 55) ** 2 / 54 ** 2) < 1


class Section(clustering.STData):
    section_name = "fixture"

    def __init__(self):
        self.scores = {"SpaHDmap": score, "SpaHDmap_spot": spot}
        self.mask = mask
        self.clusters = {}


sec = Section()
clustering.cluster_score(section=sec, use_score="SpaHDmap", resolution=0.8, n_neighbors=50, joint=True)
res = sec.clusters["SpaHDmap"]
graph = kneighbors_graph(spot, 50)
louvain = Louvain(resolution=0.8).fit(graph).labels_
scale = 4.0
shrunk = np.stack([cv2.resize(score[i].astype(np.float32), (int(W / scale), int(H / scale))) for i in range(R)])
mask_small = cv2.resize(mask.astype(np.uint8), (int(W / scale), int(H / scale)), cv2.INTER_NEAREST).astype(bool)

np.save(f"{out}/spot_scores.npy", spot)
np.save(f"{out}/score_f32.npy", score.astype(np.float32))  # exact: the map is half precision
np.save(f"{out}/mask.npy", mask)
np.save(f"{out}/louvain_labels.npy", louvain.astype(np.int64))
np.save(f"{out}/spot_labels.npy", np.asarray(res["spot"]).astype(np.int64))
np.save(f"{out}/shrunk.npy", shrunk.astype(np.float32))
np.save(f"{out}/mask_small.npy", mask_small)
np.save(f"{out}/pixel_labels.npy", res["pixel"].astype(np.int64))
print("louvain clusters", len(set(louvain)), "spot clusters", len(set(res["spot"])),
      "pixels", int(mask_small.sum()), "pixel clusters", len(set(res["pixel"][mask_small])))
