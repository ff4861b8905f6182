#!/usr/bin/env python3
"""Golden fixtures for preprocessing (SPEC §2–4), made by the published package's own code.

Needs (torch is not needed): numpy scipy pandas scanpy squidpy opencv-python-headless
scikit-image tifffile, and the wheel: pip download --no-deps spahdmap==0.1.7 -d .whl
Run from the repo root:  python tools/make_preprocess_fixtures.py
Writes tests/fixtures/preprocess/: the simulated section it ran on (image as PNG) and the
reference's outputs as .npy / .json.
"""
import json, os, shutil, subprocess, sys, types
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import refpkg

out = "tests/fixtures/preprocess"
sec = os.path.join(out, "section")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
# the section: small, deterministic; at this size the hires PNG is the full-resolution image
# (scale factor 1), so it stands in for image.tif
subprocess.run(["cargo", "run", "--release", "-q", "--", "simulate", "--out", sec, "--height", "1000", "--width", "1200",
                "--radius", "14", "--genes", "150", "--seed", "3"], check=True)
import tifffile
from PIL import Image
IMAGE = f"{sec}/spatial/tissue_hires_image.png"
assert (np.asarray(Image.open(IMAGE)) == tifffile.imread(f"{sec}/image.tif")).all()
os.remove(f"{sec}/image.tif")
shutil.rmtree(f"{sec}/truth")

wheel = refpkg.find_wheel()
du = refpkg.load_data_util(wheel)
import scanpy as sc

SCALE = 2.5
st = du.prepare_stdata(section_name="S", visium_path=sec, image_path=IMAGE, scale_rate=SCALE,
                       select_hvgs=False, create_mask=True)
np.save(f"{out}/hires.npy", np.round(st.image * 65535).astype(np.uint16))  # C×H×W, max-normalised
np.save(f"{out}/mask.npy", st.mask.astype(np.uint8))
np.save(f"{out}/feasible_domain.npy", st.feasible_domain.astype(np.uint8))
np.save(f"{out}/spot_coord.npy", st.spot_coord)
X = st.adata.X.toarray() if hasattr(st.adata.X, "toarray") else st.adata.X
np.save(f"{out}/normalized.npy", X.astype(np.float32))

# tiles: the package's own splitting rule on a stand-in self
ns = {"np": np}
calc = refpkg.method(wheel, "SpaHDmap/train.py", "Mapper", "_calculate_splits", ns)
me = types.SimpleNamespace(args=types.SimpleNamespace(split_size=256, redundant_ratio=0.2))
rs, cs = calc(me, *st.row_range), calc(me, *st.col_range)
tiles = []
for r0, r1 in rs:
    for c0, c1 in cs:
        if st.mask[r0 - st.row_range[0]:r1 - st.row_range[0], c0 - st.col_range[0]:c1 - st.col_range[0]].sum() > 255:
            tiles.append([int(r0), int(r1), int(c0), int(c1)])

# 1/16 thumbnail for the type guess and the background estimate
import cv2, math
img = np.asarray(Image.open(IMAGE)).astype(np.float32)
img = img / img.max(axis=(0, 1), keepdims=True)
thumb = cv2.resize(img, (math.ceil(img.shape[1] / 16), math.ceil(img.shape[0] / 16)), interpolation=cv2.INTER_AREA)
np.save(f"{out}/thumb16.npy", thumb.astype(np.float32))
from skimage import filters
gray = cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY)

# highly variable genes (Seurat flavour) on the normalised data, and Moran's I (squidpy)
import squidpy as sq
a = st.adata.copy()
sc.pp.highly_variable_genes(a, flavor="seurat", n_top_genes=50)
sq.gr.spatial_neighbors(a)
sq.gr.spatial_autocorr(a, mode="moran", genes=list(a.var_names), n_perms=None, n_jobs=1)
moran = a.uns["moranI"]["I"].reindex(a.var_names).to_numpy()
np.save(f"{out}/moran_I.npy", moran.astype(np.float64))
# SPARK-X and BSP p-values with the package's own functions
spx = refpkg.load_file(wheel, "SpaHDmap/data/sparkx.py", "spahdmap_sparkx")
bspm = refpkg.load_file(wheel, "SpaHDmap/data/bsp.py", "spahdmap_bsp")
import scipy.sparse
if not hasattr(scipy.sparse.coo_matrix, "A"):  # the package's bsp.py predates scipy 1.14
    scipy.sparse.coo_matrix.A = property(lambda self: self.toarray())
loc = np.asarray(st.adata.obsm["spatial"], dtype=np.float64)
np.save(f"{out}/sparkx_p.npy", np.asarray(spx.sparkx(st.adata.X, loc, num_cores=2), dtype=np.float64))
# the package's Davies step integrates the tail of λ·χ²₂ numerically (accuracy 1e-4); the
# same pipeline with that tail in closed form, exp(−q/2λ), and float64 counts (the package
# sums float32 counts) isolates everything else
spx.davies = lambda q, lda, **kw: {"trace": None, "ifault": 0, "Qq": float(np.exp(-q / (2 * lda)))}
np.save(f"{out}/sparkx_p_exact_tail.npy", np.asarray(spx.sparkx(st.adata.X.astype(np.float64), loc, num_cores=2), dtype=np.float64))
np.save(f"{out}/bsp_p.npy", np.asarray(bspm.bsp(loc, st.adata.X), dtype=np.float64))
# the package computes variances from float32 counts; the same in float64 pins our exact values
np.save(f"{out}/bsp_p_f64.npy", np.asarray(bspm.bsp(loc, st.adata.X.astype(np.float64)), dtype=np.float64))

# Reinhard colour normalisation (C×H×W, max-normalised floats, stored ×65535)
st_cn = du.prepare_stdata(section_name="S", visium_path=sec, image_path=IMAGE, scale_rate=SCALE,
                          select_hvgs=False, create_mask=True, color_norm=True)
np.save(f"{out}/reinhard.npy", np.round(np.asarray(st_cn.image) * 65535).astype(np.uint16))

json.dump({
    "scale_rate": SCALE, "radius": int(st.radius), "image_type": st.image_type,
    "row_range": [int(v) for v in st.row_range], "col_range": [int(v) for v in st.col_range],
    "tiles": tiles, "otsu_gray16": float(filters.threshold_otsu(gray)),
    "genes": list(st.adata.var_names), "spots": list(st.adata.obs_names),
    "hvg": [g for g in a.var_names[a.var["highly_variable"]]],
    "spatial_neighbors": {"n_edges": int(a.obsp["spatial_connectivities"].nnz)},
    "versions": {"spahdmap": "0.1.7", "scanpy": sc.__version__, "squidpy": sq.__version__, "opencv": cv2.__version__},
}, open(f"{out}/reference.json", "w"), indent=1)
print("wrote", sorted(os.listdir(out)))
