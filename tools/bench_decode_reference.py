#!/usr/bin/env python3
"""Times the Python readers the reference relies on (tifffile for TIFF, PIL — as
skimage.io.imread uses — for JPEG) on the same files as `spahdmap bench decode`.
Prints one JSON line per file: median seconds over --repeat runs and MB/s of pixels.
    python tools/bench_decode_reference.py FILE... [--repeat 3]
Optionally writes a JPEG-tiled TIFF from an image first: --make-jpeg-tiff SRC DST
"""
import argparse, json, statistics, time
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("files", nargs="*")
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--make-jpeg-tiff", nargs=2, metavar=("SRC", "DST"))
a = ap.parse_args()

if a.make_jpeg_tiff:
    import tifffile
    src, dst = a.make_jpeg_tiff
    img = tifffile.memmap(src) if src.endswith((".tif", ".tiff")) else np.asarray(__import__("PIL.Image").Image.open(src))
    tifffile.imwrite(dst, img, tile=(512, 512), compression="jpeg", compressionargs={"level": 90}, photometric="rgb", bigtiff=img.nbytes > 3 << 30)

def read(path):
    if path.lower().endswith((".jpg", ".jpeg", ".png")):
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = None
        return np.asarray(Image.open(path))
    import tifffile
    return tifffile.imread(path, key=0)

for f in a.files:
    times, nbytes = [], 0
    for _ in range(a.repeat):
        t = time.perf_counter()
        arr = read(f)
        times.append(time.perf_counter() - t)
        nbytes = arr.nbytes
        del arr
    m = statistics.median(times)
    print(json.dumps({"file": f, "bytes": nbytes, "median_s": m, "mb_per_s": nbytes / 1e6 / m, "repeat": a.repeat}))
