#!/usr/bin/env python3
"""Writes tests/fixtures/readers/: small inputs in the layouts the readers must accept,
with the values a Python reader (h5py/anndata/tifffile) sees, so the Rust tests compare
without Python. Run from the repo root:
    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install numpy pandas scipy anndata h5py tifffile imagecodecs pyarrow
    /tmp/fx/bin/python tools/make_reader_fixtures.py
"""
import gzip, json, os, shutil
import numpy as np, pandas as pd, scipy.sparse as sp, anndata, tifffile

out = "tests/fixtures/readers"
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
rng = np.random.default_rng(7)
n, g = 12, 8
X = rng.poisson(3.0, size=(n, g)).astype(np.float32)
X[X < 2] = 0
obs = [f"SPOT{i:02d}-1" for i in range(n)]
var = [f"Gene{j}" for j in range(g)]
xy = np.stack([100 + 30 * np.arange(n), 400 - 20 * np.arange(n)], 1).astype(np.float64)
expected = {"n": n, "g": g, "row_sums": X.sum(1).tolist(), "col_sums": X.sum(0).tolist(),
            "obs": obs, "var": var, "spatial": xy.tolist()}

for kind, mat in [("dense", X), ("csr", sp.csr_matrix(X)), ("csc", sp.csc_matrix(X))]:
    a = anndata.AnnData(mat, obs=pd.DataFrame(index=obs), var=pd.DataFrame(index=var))
    a.obsm["spatial"] = xy
    a.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": 89.5}}}
    a.write_h5ad(f"{out}/x_{kind}.h5ad")

# Space Ranger folder with the Matrix Market layout (gzipped) and parquet positions
positions = pd.DataFrame({
    "barcode": obs + ["OFFTISSUE-1"],
    "in_tissue": [1] * n + [0],
    "array_row": list(range(n + 1)), "array_col": list(range(n + 1)),
    "pxl_row_in_fullres": list(xy[:, 1].astype(int)) + [5],
    "pxl_col_in_fullres": list(xy[:, 0].astype(int)) + [5],
})
def mtx_folder(d, gz):
    os.makedirs(f"{d}/filtered_feature_bc_matrix")
    os.makedirs(f"{d}/spatial")
    m = sp.coo_matrix(X.T)  # genes × barcodes
    lines = ["%%MatrixMarket matrix coordinate integer general", "%metadata_json: {}", f"{g} {n} {m.nnz}"]
    lines += [f"{r + 1} {c + 1} {int(v)}" for r, c, v in zip(m.row, m.col, m.data)]
    files = {"matrix.mtx": "\n".join(lines) + "\n",
             "barcodes.tsv": "\n".join(obs) + "\n",
             "features.tsv": "\n".join(f"ENSG{j:05d}\t{v}\tGene Expression" for j, v in enumerate(var)) + "\n"}
    for name, text in files.items():
        p = f"{d}/filtered_feature_bc_matrix/{name}"
        if gz:
            with gzip.open(p + ".gz", "wt") as f:
                f.write(text)
        else:
            open(p, "w").write(text)
    json.dump({"spot_diameter_fullres": 89.5, "tissue_hires_scalef": 0.2, "tissue_lowres_scalef": 0.05},
              open(f"{d}/spatial/scalefactors_json.json", "w"))
mtx_folder(f"{out}/visium_mtx_gz", True)
positions.to_parquet(f"{out}/visium_mtx_gz/spatial/tissue_positions.parquet", index=False)
mtx_folder(f"{out}/visium_mtx_plain", False)
positions.to_csv(f"{out}/visium_mtx_plain/spatial/tissue_positions.csv", index=False)

# tables: CSV expression, gzipped TSV coordinates with extra columns
pd.DataFrame(X, index=obs, columns=var).to_csv(f"{out}/expression.csv")
coords = pd.DataFrame({"note": ["a"] * n, "x": xy[:, 0], "y": xy[:, 1]}, index=obs)
with gzip.open(f"{out}/coords.tsv.gz", "wt") as f:
    coords.to_csv(f, sep="\t")

# images: layouts and compressions beyond what the Rust tests write themselves
img = (rng.random((70, 90, 3)) * 40 + np.linspace(60, 200, 90)[None, :, None]).astype(np.uint8)
np.save(f"{out}/rgb.npy", img)
tifffile.imwrite(f"{out}/tiled_jpeg.tif", img, tile=(32, 32), compression="jpeg", photometric="rgb")
tifffile.imwrite(f"{out}/tiled_jpeg_ycbcr.tif", img, tile=(32, 32), compression="jpeg")
tifffile.imwrite(f"{out}/tiled_lzw.tif", img, tile=(32, 48), compression="lzw", photometric="rgb")
tifffile.imwrite(f"{out}/planar_deflate.tif", np.moveaxis(img, 2, 0), compression="zlib", photometric="rgb", planarconfig="separate", rowsperstrip=16)
tifffile.imwrite(f"{out}/big_packbits.tif", img, bigtiff=True, compression="packbits", photometric="rgb", rowsperstrip=8)
np.save(f"{out}/tiled_jpeg.npy", tifffile.imread(f"{out}/tiled_jpeg.tif"))
np.save(f"{out}/tiled_jpeg_ycbcr.npy", tifffile.imread(f"{out}/tiled_jpeg_ycbcr.tif"))
fluo = (rng.random((3, 40, 50)) ** 4 * 4000).astype(np.uint16)
np.save(f"{out}/fluo.npy", np.moveaxis(fluo, 0, 2).copy())
with tifffile.TiffWriter(f"{out}/if_pages_u16.tif") as t:
    for c in range(3):
        t.write(fluo[c], photometric="minisblack", compression="zlib")
tifffile.imwrite(f"{out}/jp2k.tif", img, compression="jpeg2000", photometric="rgb")
# Aperio SVS: RGB-tagged JPEG tiles whose components are RGB (no JFIF marker); tifffile's
# decode of a corner is the reference
svs = "../shared/data/wsi/cmu_small_region.svs"
if os.path.exists(svs):
    np.save(f"{out}/svs_corner.npy", tifffile.imread(svs, key=0)[:32, :480].copy())
jpg = "../shared/data/visium_mouse_brain_crop/test_img.jpg"
if os.path.exists(jpg):  # Pillow's decode, as skimage.io.imread reads JPEG
    from PIL import Image
    np.save(f"{out}/jpg_corner.npy", np.asarray(Image.open(jpg))[:32, :480].copy())
json.dump(expected, open(f"{out}/expected.json", "w"), indent=1)
print("wrote", sorted(os.listdir(out)))
