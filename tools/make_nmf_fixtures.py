#!/usr/bin/env python3
"""Golden values for NMF (SPEC §5): scikit-learn's NMF as the package calls it
(init='nndsvd', max_iter=2000, solver 'cd', tol 1e-4) on the preprocessed fixture section
(tests/fixtures/preprocess/normalized.npy). Writes tests/fixtures/nmf/reference.json with the
reconstruction error per rank, and the package's transfer solution (non-negative least
squares against given metagenes) as .npy. Needs numpy, scikit-learn."""
import json, os, time
import numpy as np
import sklearn
from sklearn.decomposition import NMF
from sklearn.linear_model import LinearRegression

X = np.load("tests/fixtures/preprocess/normalized.npy")
out = "tests/fixtures/nmf"
os.makedirs(out, exist_ok=True)
res = {"sklearn": sklearn.__version__, "shape": list(X.shape), "ranks": {}}
for rank in (4, 10):
    m = NMF(n_components=rank, init="nndsvd", max_iter=2000)
    t = time.perf_counter()
    W = m.fit_transform(X)
    res["ranks"][str(rank)] = {"reconstruction_err": float(m.reconstruction_err_), "n_iter": int(m.n_iter_),
                               "seconds": time.perf_counter() - t}
    if rank == 4:
        np.save(f"{out}/metagene_rank4.npy", m.components_.T.astype(np.float64))  # genes × rank
        reg = LinearRegression(fit_intercept=False, positive=True).fit(m.components_.T, X.T)
        np.save(f"{out}/transfer_scores_rank4.npy", reg.coef_.astype(np.float64))  # spots × rank
json.dump(res, open(f"{out}/reference.json", "w"), indent=1)
print(json.dumps(res))
