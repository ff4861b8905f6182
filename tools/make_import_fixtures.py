#!/usr/bin/env python3
"""Fixtures for tools/import_pth.py (tests/import_pth.rs), written by torch itself:

- tests/fixtures/import/small.pth: a state dict as `torch.save(model.state_dict())` writes
  it, with a conv, an affine instance norm, a float64, a float16, a bfloat16 and a transposed
  (non-contiguous) tensor, and two tensors sharing one storage;
- tests/fixtures/import/small.json: each tensor's shape and its values as float32.

With --full DIR, also DIR/pretrained_model.pth: the published package's SpaHDmapUnet (rank 4,
50 genes) with the weights of tools/make_unet_fixtures.py, saved as the package saves it; its
import must reproduce tests/fixtures/unet/pred_nhwc.npy (SPAHDMAP_FULL_PTH=... cargo test
--test import_pth).
Needs numpy and torch:   python tools/make_import_fixtures.py [--full DIR]
"""
import argparse, json, os, sys
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

ap = argparse.ArgumentParser()
ap.add_argument("--full")
a = ap.parse_args()
out = "tests/fixtures/import"
os.makedirs(out, exist_ok=True)
torch.manual_seed(3)
m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(2, affine=True))
with torch.no_grad():
    m[1].weight.copy_(torch.tensor([1.5, -0.25]))
sd = m.state_dict()
base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7.0
sd["double"] = torch.linspace(-1, 1, 5, dtype=torch.float64)
sd["half"] = torch.tensor([0.5, -2.0, 3.25], dtype=torch.float16)
sd["bfloat"] = torch.tensor([1.0, -0.75, 256.0], dtype=torch.bfloat16)
sd["transposed"] = base.t()
sd["row_view"] = base[1]  # shares base's storage at an offset
torch.save(sd, f"{out}/small.pth")
expect = {k: {"shape": list(v.shape), "values": v.float().contiguous().reshape(-1).tolist()} for k, v in sd.items()}
with open(f"{out}/small.json", "w") as f:
    json.dump(expect, f)
print(f"{out}/small.pth: {len(sd)} tensors")

if a.full:
    import refpkg
    from fixture_fill import fill
    models = refpkg.load_file(refpkg.find_wheel(), "SpaHDmap/model/models.py", "spahdmap_ref_models")
    model = models.SpaHDmapUnet(rank=4, num_genes=50, num_channels=3)
    with torch.no_grad():
        for t, (name, p) in enumerate(model.named_parameters()):
            p.copy_(torch.from_numpy(fill(name, tuple(p.shape), t)))
    os.makedirs(a.full, exist_ok=True)
    torch.save(model.state_dict(), f"{a.full}/pretrained_model.pth")
    print(f"{a.full}/pretrained_model.pth")
