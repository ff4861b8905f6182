#!/usr/bin/env python3
"""Golden values for the spot graph and the GCN stage (SPEC §7), from the published package's
own code: its exact adjacency builder (SpaHDmap/utils/utils.py), its GraphAutoEncoder
(SpaHDmap/model/models.py) trained by its `_prepare_GCN`/`_train_GCN` (train.py, run on a
stand-in `self`), its Gaussian-mixture filter and its metagene refinement.

Inputs: the preprocessing fixture's 294 spots and normalised expression, 600 pseudo spots
drawn at random, and 32-d embeddings that vary smoothly in space plus noise (the seam: the
stage takes embeddings as input). Writes tests/fixtures/gcn/*.npy.
Needs numpy, scipy, scikit-learn and torch (CPU is enough):
    python tools/make_gcn_fixtures.py
"""
import os, sys, types
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.optim import Adam
from torch.optim.lr_scheduler import CosineAnnealingLR
from sklearn.decomposition import NMF
from sklearn.linear_model import LinearRegression
from sklearn.mixture import GaussianMixture

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

wheel = refpkg.find_wheel()
utils = refpkg.load_file(wheel, "SpaHDmap/utils/utils.py", "spahdmap_ref_utils")
models = refpkg.load_file(wheel, "SpaHDmap/model/models.py", "spahdmap_ref_models")

out = "tests/fixtures/gcn"
os.makedirs(out, exist_ok=True)
torch.set_num_threads(1)
rng = np.random.default_rng(4)

# --- inputs
X = np.load("tests/fixtures/preprocess/normalized.npy").astype(np.float32)  # spots × genes
seq = np.load("tests/fixtures/preprocess/spot_coord.npy").astype(np.float64)
n, rank = seq.shape[0], 4
lo, hi = seq.min(0), seq.max(0)
pseudo = lo + rng.random((600, 2)) * (hi - lo)
coords = np.vstack([seq, pseudo])
d = 32
freq = rng.normal(size=(2, d)) / (hi - lo).mean() * 6
emb = (np.sin(coords @ freq + rng.random(d) * 6) + 0.3 * rng.normal(size=(coords.shape[0], d))).astype(np.float32)
m = NMF(n_components=rank, init="nndsvd", max_iter=2000)
W = m.fit_transform(X)
score = (W / W.max(0)).astype(np.float32)

# --- graph: the exact builder
A = utils.construct_adjacency_matrix(coords, emb.astype(np.float64), n, num_neighbors=50, use_ann=False).tocsr()
A.sort_indices()

# --- GCN: the package's own training loop on a stand-in self
ns = {"GraphAutoEncoder": models.GraphAutoEncoder, "Adam": Adam, "CosineAnnealingLR": CosineAnnealingLR,
      "nn": nn, "torch": torch, "np": np, "sp": sp}
prepare = refpkg.method(wheel, "SpaHDmap/train.py", "Mapper", "_prepare_GCN", ns)
train = refpkg.method(wheel, "SpaHDmap/train.py", "Mapper", "_train_GCN", ns)
iters = 40
me = types.SimpleNamespace(device=torch.device("cpu"), rank=rank, verbose=False,
                           args=types.SimpleNamespace(lr=0.005, weight_decay=1e-5, total_iter_gcn=iters, rec_iter=10))
me._prepare_GCN = lambda adj, k: prepare(me, adj, k)


def save(name, a):
    np.save(f"{out}/{name}.npy", np.ascontiguousarray(a))


def params(model, prefix):
    save(f"{prefix}_pseudo", model.pseudo_score.detach().numpy())
    for i in range(1, 5):
        lin = getattr(model, f"gc{i}").linear
        save(f"{prefix}_w{i}", lin.weight.detach().numpy())
        save(f"{prefix}_b{i}", lin.bias.detach().numpy())


adj = A.tocoo()
torch.manual_seed(7)
out_trained = train(me, adj, score)
trained = me.GCN
# the same initial weights again, for one forward/backward at initialisation
torch.manual_seed(7)
t_adj = torch.sparse_coo_tensor(np.vstack((adj.row, adj.col)), torch.FloatTensor(adj.data), adj.shape)
init = models.GraphAutoEncoder(adj_matrix=t_adj, num_spots=n, rank=rank)
params(init, "init")
y0 = init(torch.tensor(score))
loss0 = nn.MSELoss()(y0[:n], torch.tensor(score))
loss0.backward()
save("init_output", y0.detach().numpy())
save("init_loss", np.array([loss0.item()]))
save("grad_pseudo", init.pseudo_score.grad.numpy())
for i in range(1, 5):
    lin = getattr(init, f"gc{i}").linear
    save(f"grad_w{i}", lin.weight.grad.numpy())
    save(f"grad_b{i}", lin.bias.grad.numpy())
params(trained, "trained")
save("trained_output", out_trained)

# --- Gaussian-mixture filter and threshold, as get_GCN_score runs them
np.random.seed(3)
filtered = out_trained.copy()
for idx in range(rank):
    data_use = filtered[:, idx].reshape(-1, 1)
    gmm = GaussianMixture(2, covariance_type="full")
    gmm.fit(data_use)
    labels = gmm.predict(data_use)
    filtered[np.where(labels != np.argmax(gmm.means_))[0], idx] = 0
filtered[np.where(filtered < 0.1)] = 0
save("filtered", filtered)

# --- metagene refinement: non-negative least squares of expression on the GCN scores
LR = LinearRegression(fit_intercept=False, positive=True).fit(filtered[:n], X)
save("metagene", LR.coef_.astype(np.float64))  # genes × rank

save("coords", coords)
save("embeddings", emb)
save("score", score)
save("expression", X)
save("adj_indptr", A.indptr.astype(np.int64))
save("adj_indices", A.indices.astype(np.int64))
save("adj_data", A.data.astype(np.float32))
print(f"{n} spots + {len(pseudo)} pseudo, {A.nnz} edges, loss0 {loss0.item():.6f}, {iters} iterations")
