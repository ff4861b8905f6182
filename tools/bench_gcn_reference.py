#!/usr/bin/env python3
"""Time the published package's spot graph and GCN training at the medulloblastoma scale
(3,000 sequenced spots on a Visium lattice, 15,000 pseudo spots, 128-d embeddings, rank 20)
and write the inputs so `spahdmap bench gcn --dir DIR` runs ours on the same data:

    python tools/bench_gcn_reference.py --out DIR [--iterations 5000] [--threads 2]

Graph: SpaHDmap/utils/utils.py `construct_adjacency_matrix` (exact). GCN: train.py
`_prepare_GCN` + `_train_GCN` on a stand-in self (PyTorch on the CPU). Needs numpy, scipy,
scikit-learn, torch."""
import argparse, json, os, resource, sys, time, types
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.optim import Adam
from torch.optim.lr_scheduler import CosineAnnealingLR

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--spots", type=int, default=3000)
ap.add_argument("--pseudo", type=int, default=15000)
ap.add_argument("--rank", type=int, default=20)
ap.add_argument("--iterations", type=int, default=5000)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--skip-gcn", action="store_true")
ap.add_argument("--device", default="cpu", help="cpu or cuda (the package's GCN on a GPU)")
ap.add_argument("--reuse", action="store_true",
                help="read the inputs and adjacency an earlier run wrote to --out (no graph build)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
os.makedirs(a.out, exist_ok=True)
wheel = refpkg.find_wheel()
models = refpkg.load_file(wheel, "SpaHDmap/model/models.py", "spahdmap_ref_models")
res = {"spots": a.spots, "pseudo": a.pseudo, "rank": a.rank, "threads": a.threads, "torch": torch.__version__,
       "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(0)}
if a.reuse:
    score = np.load(f"{a.out}/score.npy")
    A = sp.csr_matrix((np.load(f"{a.out}/adj_data.npy"), np.load(f"{a.out}/adj_indices.npy"),
                       np.load(f"{a.out}/adj_indptr.npy")))
    a.spots, a.rank = score.shape
else:
    utils = refpkg.load_file(wheel, "SpaHDmap/utils/utils.py", "spahdmap_ref_utils")
    rng = np.random.default_rng(0)
    # Visium lattice: 100 µm centre spacing at ~ 90 px, rows offset by half a spacing
    cols = int(np.ceil(np.sqrt(a.spots * 2 / np.sqrt(3))))
    pts = [((i * np.sqrt(3) / 2) * 90, (j + 0.5 * (i % 2)) * 90) for i in range(a.spots // cols + 1) for j in range(cols)]
    seq = np.array(pts[: a.spots], dtype=np.float64)
    lo, hi = seq.min(0), seq.max(0)
    pseudo = lo + rng.random((a.pseudo, 2)) * (hi - lo)
    coords = np.vstack([seq, pseudo])
    d = 128
    freq = rng.normal(size=(2, d)) / (hi - lo).mean() * 8
    emb = (np.sin(coords @ freq + rng.random(d) * 6) + 0.3 * rng.normal(size=(len(coords), d))).astype(np.float32)
    fr = rng.normal(size=(2, a.rank)) / (hi - lo).mean() * 5
    score = (0.5 + 0.5 * np.sin(seq @ fr + rng.random(a.rank) * 6)).astype(np.float32)
    np.save(f"{a.out}/coords.npy", coords)
    np.save(f"{a.out}/embeddings.npy", emb)
    np.save(f"{a.out}/score.npy", score)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    A = utils.construct_adjacency_matrix(coords, emb.astype(np.float64), a.spots, num_neighbors=50, use_ann=False)
    res["graph_seconds"] = time.perf_counter() - t
    res["graph_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["graph_peak_rss_mib_before"] = rss0 / 1024
    A = A.tocsr()
    A.sort_indices()
    np.save(f"{a.out}/adj_indptr.npy", A.indptr.astype(np.int64))
    np.save(f"{a.out}/adj_indices.npy", A.indices.astype(np.int64))
    np.save(f"{a.out}/adj_data.npy", A.data.astype(np.float32))
    print(f"graph: {res['graph_seconds']:.2f} s, {A.nnz} edges", flush=True)

if not a.skip_gcn:
    ns = {"GraphAutoEncoder": models.GraphAutoEncoder, "Adam": Adam, "CosineAnnealingLR": CosineAnnealingLR,
          "nn": nn, "torch": torch, "np": np, "sp": sp}
    prepare = refpkg.method(wheel, "SpaHDmap/train.py", "Mapper", "_prepare_GCN", ns)
    train = refpkg.method(wheel, "SpaHDmap/train.py", "Mapper", "_train_GCN", ns)
    me = types.SimpleNamespace(device=torch.device(a.device), rank=a.rank, verbose=False,
                               args=types.SimpleNamespace(lr=0.005, weight_decay=1e-5, total_iter_gcn=a.iterations,
                                                          rec_iter=100))
    me._prepare_GCN = lambda adj, k: prepare(me, adj, k)
    torch.manual_seed(0)
    if a.device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = train(me, A.tocoo(), score)
    res["gcn_seconds"] = time.perf_counter() - t
    res["gcn_iterations"] = a.iterations
    pred = out[: a.spots]
    res["gcn_final_mse"] = float(((pred - score) ** 2).mean())
    print(f"gcn: {res['gcn_seconds']:.2f} s for {a.iterations} iterations, final MSE {res['gcn_final_mse']:.6f}")
if not a.reuse:
    json.dump(res, open(f"{a.out}/reference.json", "w"), indent=1)
print(json.dumps(res))
