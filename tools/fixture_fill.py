"""Deterministic tensors shared by the U-Net fixture scripts and the Rust tests: splitmix64
uniforms, a fill of every parameter scaled like the reference's initialisation, and the
fingerprint (sum of squares + up to 512 evenly spaced elements) stored instead of whole tensors."""
import numpy as np


def splitmix_uniform(seed, n):
    """n uniforms in [0, 1) from splitmix64 seeded with `seed` (the Rust tests' formula)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def fill(name, shape, t):
    n = int(np.prod(shape))
    u = 2.0 * splitmix_uniform(1000 + t, n) - 1.0
    if name.endswith("norm.weight"):
        v = 1.0 + 0.1 * u
    elif name.endswith("weight") and len(shape) == 4 and ".up." not in name:
        co, _, k, _ = shape
        v = u * np.sqrt(3.0) * np.sqrt(2.0 / 1.04) / np.sqrt(co * k * k)
    elif ".up.weight" in name:
        v = u / np.sqrt(shape[1] * 4)
    elif name == "nmf_decoder":
        v = 0.5 + 0.5 * u
    else:
        v = 0.05 * u
    return v.astype(np.float32).reshape(shape)


def fingerprint(a):
    f = a.reshape(-1).astype(np.float64)
    idx = np.unique(np.linspace(0, f.size - 1, min(512, f.size)).astype(np.int64))
    return [float((f * f).sum())] + f[idx].tolist()
