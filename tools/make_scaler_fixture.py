"""Print the loss-scale sequence of torch.amp.GradScaler for a pattern of overflowing steps:
the golden values of src/optim/scaler.rs's test. Runs on the CPU (torch >= 2.3)."""
import torch

pattern = [False, False, False, True, False, True, True, False, False, False, False, False, False, True]
p = torch.nn.Parameter(torch.ones(3))
opt = torch.optim.Adam([p], lr=1e-3)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
scales, steps = [], []
for inf in pattern:
    opt.zero_grad()
    loss = (p * p).sum() * (float("inf") if inf else 1.0)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    scales.append(scaler.get_scale())
    steps.append(int(opt.state[p]["step"]) if p in opt.state else 0)
print("scales", scales)
print("optimizer steps", steps)
