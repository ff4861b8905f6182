"""Load parts of the published SpaHDmap package (0.1.7) without torch.

`load_data_util(wheel_dir)` imports SpaHDmap.data.data_util from an unpacked wheel with the
package __init__ files bypassed (they import torch). `method_source(path, cls, name)` pulls one
method out of a source file with ast so it can be run on a stand-in `self` — used for the
tiling rule that lives in train.py. Nothing from the package is copied into this repository.
"""
import ast, importlib.util, os, sys, types, zipfile, glob


def unpack(wheel_or_dir):
    if os.path.isdir(wheel_or_dir):
        return wheel_or_dir
    out = os.path.join(os.path.dirname(wheel_or_dir), "spahdmap_unpacked")
    if not os.path.isdir(out):
        zipfile.ZipFile(wheel_or_dir).extractall(out)
    return out


def load_data_util(wheel_or_dir):
    root = unpack(wheel_or_dir)
    for name, path in [("SpaHDmap", "SpaHDmap"), ("SpaHDmap.data", "SpaHDmap/data")]:
        m = types.ModuleType(name)
        m.__path__ = [os.path.join(root, path)]
        sys.modules[name] = m
    spec = importlib.util.spec_from_file_location("SpaHDmap.data.data_util", os.path.join(root, "SpaHDmap/data/data_util.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def method(wheel_or_dir, rel, cls, name, namespace):
    """Compile method `cls.name` of file `rel` into a plain function in `namespace`."""
    root = unpack(wheel_or_dir)
    src = open(os.path.join(root, rel)).read()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == name:
                    mod = ast.Module(body=[f], type_ignores=[])
                    exec(compile(mod, rel, "exec"), namespace)
                    return namespace[name]
    raise KeyError(f"{cls}.{name} not in {rel}")


def find_wheel():
    env = os.environ.get("SPAHDMAP_REF_WHEEL")
    w = ([env] if env else []) + glob.glob(".whl/spahdmap-0.1.7-py3-none-any.whl") + glob.glob(
        "/opt/ref/spahdmap-0.1.7-py3-none-any.whl")
    if not w:
        sys.exit("pip download --no-deps spahdmap==0.1.7 -d .whl   (first)")
    return w[0]


def load_file(wheel_or_dir, rel, name):
    """Import one self-contained module file of the package (e.g. SpaHDmap/utils/utils.py)."""
    root = unpack(wheel_or_dir)
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, rel))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # picklable by name in forked workers
    spec.loader.exec_module(mod)
    return mod
