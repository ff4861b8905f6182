#!/usr/bin/env python3
"""Golden values for the joint network (SPEC §9) from the published package's SpaHDmapUnet in
training mode, the loss exactly as its `_train_model` sums it over a batch (image MSE, Poisson
NLL of spot expression, the HR > 0.95 regulariser; weights 0.67 / 0.33 / 0.5), gradients of
every parameter (second phase: all trainable), and the parameters after 3 Adam steps with the
second phase's groups (lr 4e-4; nmf_decoder and gamma 4e-6; weight decay 1e-5).

Batch of 2 tiles 64 × 64, rank 4, 50 genes, one reference pair: tile 0 belongs to the query
section (gamma applies), tile 1 to its reference. Parameters, images, VD scores and spot
expression come from fixture_fill's formulas; spots are disks of radius 5 at fixed centres.
Writes tests/fixtures/joint/reference.json. Needs numpy and torch."""
import json, os, sys
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import refpkg
from fixture_fill import fill, fingerprint, splitmix_uniform

R, G, S = 4, 50, 64
CENTRES = [[(12, 14), (30, 40), (50, 20)], [(20, 50), (44, 44)]]


def disk(cy, cx, r=5):
    ys, xs = [], []
    for y in range(cy - r, cy + r + 1):
        for x in range(cx - r, cx + r + 1):
            if (y - cy) ** 2 + (x - cx) ** 2 <= r * r:
                ys.append(y); xs.append(x)
    return np.array(ys), np.array(xs)


models = refpkg.load_file(refpkg.find_wheel(), "SpaHDmap/model/models.py", "spahdmap_ref_models")
out = "tests/fixtures/joint"
os.makedirs(out, exist_ok=True)
torch.set_num_threads(2)
torch.manual_seed(0)
model = models.SpaHDmapUnet(rank=R, num_genes=G, num_channels=3, reference={"q": "r"})
model.training_mode = True
model.train()
names = []
with torch.no_grad():
    for t, (name, p) in enumerate(model.named_parameters()):
        p.copy_(torch.from_numpy(fill(name, tuple(p.shape), t)))
        names.append(name)
images = torch.from_numpy(splitmix_uniform(7, 2 * 3 * S * S).astype(np.float32).reshape(2, 3, S, S))
vds = torch.from_numpy(splitmix_uniform(8, 2 * R * S * S).astype(np.float32).reshape(2, R, S, S))
exps = [torch.from_numpy(np.floor(5 * splitmix_uniform(9 + k, len(CENTRES[k]) * G)).astype(np.float32).reshape(-1, G))
        for k in range(2)]
sections = ["q", "r"]
loss_img, loss_exp = nn.MSELoss(), nn.PoissonNLLLoss(log_input=False, reduction="mean")


def batch_loss():
    loss = 0.
    hrs = []
    for k in range(2):
        feasible = {i: disk(*c) for i, c in enumerate(CENTRES[k])}
        img, vd = images[k:k + 1], vds[k:k + 1]
        image_pred, exp_pred, hr = model(img, sections[k], feasible, vd)
        loss = loss + 0.67 * loss_img(image_pred, img) / 2 + 0.33 * loss_exp(exp_pred, exps[k]) / 2
        mask = torch.where(hr > 0.95)
        reg = F.mse_loss((1 - vd[mask]) ** 2 * hr[mask], (1 - vd[mask]) ** 2 * vd[mask]) if len(mask[0]) > 0 else 0
        loss = loss + 0.5 * reg / 2
        hrs.append(hr)
    return loss, hrs


loss, hrs = batch_loss()
loss.backward()
used = [n for n, p in model.named_parameters() if p.grad is not None]
grads = {n: fingerprint(p.grad.numpy()) for n, p in model.named_parameters() if p.grad is not None}
hr_nhwc = torch.cat(hrs).detach().permute(0, 2, 3, 1).contiguous().numpy()
others = [p for n, p in model.named_parameters() if n in used and n not in ("gamma", "nmf_decoder")]
opt = torch.optim.Adam([{"params": others, "lr": 4e-4},
                        {"params": [model.gamma, model.nmf_decoder], "lr": 4e-4 * 0.01}], weight_decay=1e-5)
losses = []
for _ in range(3):
    opt.zero_grad()
    l, _ = batch_loss()
    l.backward()
    opt.step()
    losses.append(l.item())
after = {n: fingerprint(p.detach().numpy()) for n, p in model.named_parameters() if n in used}
json.dump({"names": names, "used": used, "loss": loss.item(), "hr": fingerprint(hr_nhwc), "grads": grads,
           "after_3_steps": after, "losses_3_steps": losses, "centres": CENTRES, "torch": torch.__version__},
          open(f"{out}/reference.json", "w"))
print(f"{len(used)} tensors trained, loss {loss.item():.6f}, HR > 0.95: {(hr_nhwc > 0.95).mean():.3f}, 3-step losses {losses}")
