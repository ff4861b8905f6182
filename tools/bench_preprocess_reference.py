#!/usr/bin/env python3
"""Times the published package's preprocessing on one section, piece by piece, as
`spahdmap bench preprocess` does: Moran's I (squidpy graph + spatial_autocorr), image
scaling + tissue mask (STData._preprocess), pseudo spots, nearest-spot maps.
Prints JSON lines with median seconds. Environment as tools/make_preprocess_fixtures.py.
    python tools/bench_preprocess_reference.py --visium DIR [--image IMG] [--scale-rate S] [--repeat 3]
    python tools/bench_preprocess_reference.py --coords F --expression F --image IMG --radius R
"""
import argparse, json, math, os, statistics, sys, time, glob
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

ap = argparse.ArgumentParser()
ap.add_argument("--visium"); ap.add_argument("--coords"); ap.add_argument("--expression")
ap.add_argument("--image"); ap.add_argument("--scale-rate", type=float, default=1.0)
ap.add_argument("--radius", type=float); ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--skip", default="", help="comma list of benches to skip")
a = ap.parse_args()

wheel = refpkg.find_wheel()
du = refpkg.load_data_util(wheel)
ut = refpkg.load_file(wheel, "SpaHDmap/utils/utils.py", "spahdmap_utils")
import scanpy as sc, squidpy as sq, pandas as pd
from skimage import io

def timed(f, repeat):
    ts, out = [], None
    for _ in range(repeat):
        t = time.perf_counter(); out = f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts), out

def report(name, s, **detail):
    print(json.dumps({"bench": name, "median_s": s, "repeat": a.repeat, "detail": detail}), flush=True)

skip = set(a.skip.split(","))
if a.visium:
    h5 = [f for f in os.listdir(a.visium) if f.endswith(".h5")][0]
    adata = sc.read_visium(a.visium, count_file=h5)
    image_path = a.image or max(glob.glob(os.path.join(a.visium, "*.tif")), key=os.path.getsize)
    radius = a.radius or round(list(adata.uns["spatial"].values())[0]["scalefactors"]["spot_diameter_fullres"] / 2)
else:
    adata = sc.read_csv(a.expression, delimiter="\t" if ".tsv" in a.expression else ",")
    coords = pd.read_csv(a.coords, sep="\t" if ".tsv" in a.coords else ",")
    if "pixel_x" in coords.columns:
        coords = coords[coords["selected"] == 1]
        coords.index = [f"{int(x)}x{int(y)}" for x, y in zip(coords["x"], coords["y"])]
        coords = coords[["pixel_x", "pixel_y"]]
    common = adata.obs_names.intersection(coords.index)
    adata = adata[common].copy()
    adata.obsm["spatial"] = coords.loc[common].values
    adata.uns["spatial"] = {"s": {}}
    image_path, radius = a.image, int(a.radius)  # the package slices with it: must be an int
adata = du.preprocess_adata(adata, select_hvgs=False, swap_coord=True)

if "morans_i" not in skip:
    def moran():
        b = adata.copy()
        sq.gr.spatial_neighbors(b)
        sq.gr.spatial_autocorr(b, mode="moran", genes=list(b.var_names), n_perms=None)
        return b
    t, b = timed(moran, a.repeat)
    report("morans_i", t, spots=adata.n_obs, genes=adata.n_vars)

t, image = timed(lambda: io.imread(image_path), 1)
report("decode", t, shape=list(image.shape))

def prep():
    st = du.STData.__new__(du.STData)
    st.scale_rate, st.original_radius = a.scale_rate, radius
    st.radius = round(radius / a.scale_rate)
    st._preprocess(adata.obsm["spatial"], image, True, None, False)
    return st
t, st = timed(prep, a.repeat)
report("scale_and_mask", t, scaled=list(st.image.shape[1:]), scale_rate=a.scale_rate)

n_pseudo = int(min(max(0.5, round(st.spot_coord.shape[0] / 1000)) * 1000 * 5, 40000))
np.random.seed(1)
t, pseudo = timed(lambda: ut.create_pseudo_spots(st.feasible_domain, st.radius, n_pseudo), a.repeat)
report("pseudo_spots", t, pseudo_spots=len(pseudo))
every = np.vstack((st.spot_coord, pseudo))
for name, sc_ in [("nearest_map_sequenced", st.spot_coord), ("nearest_map_all", every)]:
    t, m = timed(lambda: ut.find_nearby_spots(sc_, st.row_range, st.col_range), a.repeat)
    report(name, t, spots=len(sc_), pixels=int(m.size))
