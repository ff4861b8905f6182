#!/usr/bin/env python3
"""Convert the published package's saved models (`pretrained_model.pth`, `trained_model.pth`:
`torch.save(model.state_dict(), path)`) to the safetensors files spahdmap reads
(`models/pretrained.safetensors`, `models/trained.safetensors`, SPEC §12).

    python3 tools/import_pth.py RESULTS/models/pretrained_model.pth OUT/models/pretrained.safetensors
    python3 tools/import_pth.py trained_model.pth trained.safetensors --stage train

Needs only the Python standard library (no torch): a .pth written by torch >= 1.6 is a zip
archive holding a pickle (`data.pkl`) whose tensors point at raw storages (`data/<key>`); this
reads the pickle with stand-ins for torch's rebuild functions and copies each tensor's bytes.
Names stay the reference's state-dict names and shapes stay PyTorch's, which is what
spahdmap's checkpoints hold (it converts layouts when it loads them). Every tensor is written
as float32 (float64, float16 and bfloat16 are converted); other dtypes are an error.
"""
import argparse
import collections
import json
import os
import pickle
import struct
import sys
import zipfile
from array import array

# storage class name -> (element size, struct code or converter name)
DTYPES = {
    "FloatStorage": (4, "f"),
    "DoubleStorage": (8, "d"),
    "HalfStorage": (2, "e"),
    "BFloat16Storage": (2, "bf16"),
}


class Storage:
    def __init__(self, kind):
        self.kind = kind


class TensorRef:
    """What `_rebuild_tensor_v2` would build: a view of a storage."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def rebuild_tensor(storage, offset, size, stride, *_):
    return TensorRef(storage, offset, size, stride)


def rebuild_parameter(data, *_):
    return data


class Unpickler(pickle.Unpickler):
    def __init__(self, f, root, archive):
        super().__init__(f)
        self.root, self.archive = root, archive
        self.loaded = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return Storage(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported object in the checkpoint: {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage class, key, location, numel)
        if not isinstance(pid, tuple) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        kind, key = pid[1], pid[2]
        name = kind.kind if isinstance(kind, Storage) else str(kind)
        if name not in DTYPES:
            raise pickle.UnpicklingError(f"tensor storage {name} is not a floating-point type spahdmap reads")
        if key not in self.loaded:
            self.loaded[key] = (name, self.archive.read(f"{self.root}/data/{key}"))
        return self.loaded[key]


def floats(storage, count_from, count):
    """`count` values of a storage from element `count_from`, as float32 array."""
    name, raw = storage
    size, code = DTYPES[name]
    chunk = raw[count_from * size:(count_from + count) * size]
    if code == "f":
        out = array("f")
        out.frombytes(chunk)
    elif code == "bf16":
        bits = array("I", (v << 16 for v in array("H", chunk)))
        out = array("f")
        out.frombytes(bits.tobytes())
    else:
        out = array("f", struct.unpack(f"<{count}{code}", chunk))
    if sys.byteorder != "little":
        out.byteswap()
    return out


def contiguous(t):
    """The tensor's values in row-major order."""
    n = 1
    for s in t.size:
        n *= s
    expect, acc = [], 1
    for s in reversed(t.size):
        expect.insert(0, acc)
        acc *= s
    if n == 0 or tuple(expect) == t.stride or len(t.size) == 0:
        return floats(t.storage, t.offset, n)
    # a strided view: gather element by element (state dicts rarely hold one)
    # (torch strides are never negative)
    hi = sum(st * (s - 1) for st, s in zip(t.stride, t.size))
    base = floats(t.storage, t.offset, hi + 1)
    out = array("f", bytes(4 * n))
    idx = [0] * len(t.size)
    for i in range(n):
        out[i] = base[sum(a * b for a, b in zip(idx, t.stride))]
        for d in reversed(range(len(idx))):
            idx[d] += 1
            if idx[d] < t.size[d]:
                break
            idx[d] = 0
    return out


def read_pth(path):
    if not zipfile.is_zipfile(path):
        sys.exit(f"{path}: not a zip-format torch checkpoint (saved by torch < 1.6?); "
                 "re-save it with a recent torch: torch.save(torch.load(p), p)")
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            sys.exit(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        root = pkl[0][: -len("/data.pkl")] if "/" in pkl[0] else ""
        with z.open(pkl[0]) as f:
            obj = Unpickler(f, root, z).load()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        sys.exit(f"{path}: expected a state dict, found {type(obj).__name__}")
    tensors = collections.OrderedDict()
    for name, t in obj.items():
        if not isinstance(t, TensorRef):
            sys.exit(f"{path}: entry {name!r} is not a tensor")
        tensors[name] = (list(t.size), contiguous(t))
    return tensors


def write_safetensors(path, tensors, meta):
    header, offset, blobs = {}, 0, []
    for name, (shape, values) in tensors.items():
        data = values.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pth")
    ap.add_argument("out")
    ap.add_argument("--stage", choices=["pretrain", "train"],
                    help="which model this is, kept in the file's metadata (default: pretrain when the "
                         "file name contains 'pretrain', train otherwise)")
    a = ap.parse_args()
    tensors = read_pth(a.pth)
    stage = a.stage or ("pretrain" if "pretrain" in os.path.basename(a.pth) else "train")
    meta = {"stage": stage, "source": os.path.basename(a.pth), "converted_by": "tools/import_pth.py"}
    write_safetensors(a.out, tensors, meta)
    n = sum(len(v) for _, v in tensors.values())
    print(f"{a.out}: {len(tensors)} tensors, {n} values ({stage})")


if __name__ == "__main__":
    main()
