#!/usr/bin/env python3
"""Golden values for the pre-training U-Net (SPEC §6) from the published package's own
SpaHDmapUnet (SpaHDmap/model/models.py) in PyTorch, at 64 × 64, batch 2, 3 channels.

The network has 2.5 M parameters, too many to store three times, so every tensor is filled
from a formula both sides compute (splitmix64 → uniform, scaled like the reference's
initialisation) and only fingerprints are stored: for each tensor its sum of squares and up to
512 elements at evenly spaced flat indices (PyTorch layout). Stored: the prediction (whole),
the MSE loss, fingerprints of every parameter gradient, and of every parameter after 3 Adam
steps (lr 4e-4, weight decay 1e-5, the pre-training optimiser). Writes tests/fixtures/unet/.
Needs numpy and torch:   python tools/make_unet_fixtures.py
"""
import json, os, sys
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

from fixture_fill import fill, fingerprint, splitmix_uniform

wheel = refpkg.find_wheel()
models = refpkg.load_file(wheel, "SpaHDmap/model/models.py", "spahdmap_ref_models")
out = "tests/fixtures/unet"
os.makedirs(out, exist_ok=True)
torch.set_num_threads(2)
torch.manual_seed(0)
model = models.SpaHDmapUnet(rank=4, num_genes=50, num_channels=3)
model.train()
names = []
with torch.no_grad():
    for t, (name, p) in enumerate(model.named_parameters()):
        p.copy_(torch.from_numpy(fill(name, tuple(p.shape), t)))
        names.append(name)
image = torch.from_numpy(splitmix_uniform(7, 2 * 3 * 64 * 64).astype(np.float32).reshape(2, 3, 64, 64))
pred = model(image)
loss = nn.MSELoss()(pred, image)
loss.backward()
used = [n for n, p in model.named_parameters() if p.grad is not None]
grads = {n: fingerprint(p.grad.numpy()) for n, p in model.named_parameters() if p.grad is not None}
np.save(f"{out}/pred_nhwc.npy", pred.detach().permute(0, 2, 3, 1).contiguous().numpy())

# the spot-embedding pass: eval mode returns the third down block's skip feature
model.eval()
with torch.no_grad():
    _, enc = model(image)
    np.save(f"{out}/embedding.npy", enc.mean(dim=(2, 3)).numpy())
    window = image[:, :, 3:24, 5:26]  # a 21 × 21 window, upsampled as the package does
    np.save(f"{out}/upsampled_nhwc.npy", nn.UpsamplingBilinear2d(size=64)(window).permute(0, 2, 3, 1).contiguous().numpy())
model.train()

opt = torch.optim.Adam([p for n, p in model.named_parameters() if n in used], lr=4e-4, weight_decay=1e-5)
model.zero_grad()
losses = []
for _ in range(3):
    opt.zero_grad()
    l = nn.MSELoss()(model(image), image)
    l.backward()
    opt.step()
    losses.append(l.item())
after = {n: fingerprint(p.detach().numpy()) for n, p in model.named_parameters() if n in used}
json.dump({"names": names, "used": used, "fill_seed_base": 1000, "image_seed": 7, "loss": loss.item(),
           "losses_3_steps": losses, "grads": grads, "after_3_steps": after,
           "torch": torch.__version__}, open(f"{out}/reference.json", "w"))
print(f"{len(names)} tensors ({len(used)} in the pre-training graph), loss {loss.item():.6f}, "
      f"3-step losses {losses}")
