#!/usr/bin/env python3
"""Times scikit-learn's NMF as the package calls it (init='nndsvd', max_iter=2000) on a
dense matrix dumped by `spahdmap bench nmf --dump X.npy`. Prints median seconds, iterations
and reconstruction error.  python tools/bench_nmf_reference.py X.npy [--rank 20] [--repeat 3]"""
import argparse, json, statistics, time
import numpy as np
from sklearn.decomposition import NMF

ap = argparse.ArgumentParser()
ap.add_argument("matrix"); ap.add_argument("--rank", type=int, default=20); ap.add_argument("--repeat", type=int, default=3)
a = ap.parse_args()
X = np.load(a.matrix)
ts = []
for _ in range(a.repeat):
    m = NMF(n_components=a.rank, init="nndsvd", max_iter=2000)
    t = time.perf_counter(); m.fit_transform(X); ts.append(time.perf_counter() - t)
print(json.dumps({"bench": "nmf_sklearn", "median_s": statistics.median(ts), "repeat": a.repeat,
                  "detail": {"shape": list(X.shape), "rank": a.rank, "iterations": int(m.n_iter_),
                             "reconstruction_err": float(m.reconstruction_err_), "dtype": str(X.dtype)}}))
