"""Patch an unpacked ``pb1-detectron2==0.6`` sdist so that it builds and imports on current torch/NumPy/Pillow.

PyPI's only detectron2 source is that sdist: detectron2 0.6 (Nov 2021) without ``detectron2/layers/csrc``.
``tools/install.sh`` unpacks it, runs this script on the folder, then builds a pure-Python wheel. Each patch
below fixes one documented failure of the unmodified sdist; the script stops if a patch no longer
finds its target, so a changed sdist is noticed instead of half-patched. No detectron2 code is copied into
equi-ext: the patches edit the downloaded files in a scratch folder.

Usage: python tools/patch_detectron2_sdist.py SDIST_DIR
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# Packages detectron2 imports at run time. The sdist also requires black==21.4b2, hydra-core, tensorboard,
# future and pydot, which only its developer tools and optional writers use.
RUNTIME_REQUIREMENTS = [
    "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8", "tabulate",
    "cloudpickle", "tqdm>4.29.0", "fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10", "omegaconf>=2.1",
]

# Stand-in for the C++ extension ``detectron2._C`` that the sdist cannot build (its sources are missing).
# Four modules import it at load time; Mask R-CNN needs none of its ops (torchvision provides ROIAlign and NMS).
STAND_IN = '''"""Stand-in for detectron2's C++ ops, which the pb1-detectron2 sdist cannot build (no layers/csrc).

Written by equi-ext's tools/patch_detectron2_sdist.py. Importing works; calling an op raises an error naming it.
"""

_WHY = ("detectron2 was built by equi-ext from the pb1-detectron2 0.6 sdist, which has no C++ sources, so "
        "the op {name!r} (rotated boxes, deformable convolution or the fast COCO evaluator) is not available; "
        "use COCOEvaluator(..., use_fast_impl=False) for evaluation, and models without rotated boxes or "
        "deformable convolutions")


def get_compiler_version():
    return "none (detectron2 built without C++ ops)"


def get_cuda_version():
    return "none (detectron2 built without C++ ops)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def missing_op(*args, **kwargs):
        raise NotImplementedError(_WHY.format(name=name))

    missing_op.__name__ = name
    return missing_op
'''


def replace(path: Path, pattern: str, new: str, *, count: int | None = None) -> None:
    """Substitute the regex ``pattern`` in ``path``; fail loudly if it is absent (or found a wrong number of times)."""
    text = path.read_text(encoding="utf-8")
    patched, found = re.subn(pattern, new, text)
    if found == 0 or (count is not None and found != count):
        sys.exit(f"error: patch target {pattern!r} found {found} times in {path} (expected {count or '>= 1'}); "
                 "the sdist is not pb1-detectron2 0.6 as this script knows it")
    path.write_text(patched, encoding="utf-8")


def patch(root: Path) -> None:
    setup_py = root / "setup.py"
    if not setup_py.is_file() or not (root / "detectron2" / "__init__.py").is_file():
        sys.exit(f"error: {root} is not an unpacked pb1-detectron2 sdist (no setup.py / detectron2 package)")

    # 1. No C++ extension: layers/csrc is missing, so get_extensions() compiles nothing but fails on vision.cpp.
    replace(setup_py, r"ext_modules=get_extensions\(\),", "ext_modules=[],", count=1)
    replace(setup_py, r'cmdclass=\{"build_ext": torch\.utils\.cpp_extension\.BuildExtension\},', "", count=1)
    # 2. Ship the model-zoo configs: the sdist keeps them in detectron2/model_zoo/configs, but setup.py globs a
    #    top-level configs/ folder that only a git checkout has, so Base-RCNN-FPN.yaml etc. were left out.
    replace(setup_py, r'package_data=\{"detectron2\.model_zoo": get_model_zoo_configs\(\)\},',
            'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},', count=1)
    # 3. Run-time requirements only (see RUNTIME_REQUIREMENTS).
    replace(setup_py, r"(?s)install_requires=\[.*?\n    \],",
            "install_requires=" + repr(RUNTIME_REQUIREMENTS) + ",", count=1)
    # 4. Pillow >= 10 removed Image.LINEAR (it was an alias of BILINEAR).
    replace(root / "detectron2/data/transforms/transform.py", r"Image\.LINEAR\b", "Image.BILINEAR")
    # 5. NumPy >= 1.24 removed the aliases np.bool / np.float / np.int / np.str.
    aliases = {r"np\.bool\b": "bool", r"np\.float\b": "np.float64", r"np\.int\b": "np.int64", r"np\.str\b": "str"}
    touched = 0
    for path in sorted((root / "detectron2").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        new = text
        for pattern, repl in aliases.items():
            new = re.sub(pattern, repl, new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            touched += 1
    if touched == 0:
        sys.exit("error: no NumPy alias found to patch; the sdist is not pb1-detectron2 0.6 as this script knows it")
    # 6. The stand-in for detectron2._C.
    stand_in = root / "detectron2" / "_C.py"
    if stand_in.exists():
        sys.exit(f"error: {stand_in} exists already; is this sdist patched twice?")
    stand_in.write_text(STAND_IN, encoding="utf-8")
    print(f"patched {root}: no C++ extension, model-zoo configs shipped, run-time requirements, Pillow 10 and "
          f"NumPy 2 fixes ({touched} files), detectron2._C stand-in")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist_dir", type=Path, help="the unpacked pb1-detectron2-0.6 folder")
    patch(parser.parse_args().sdist_dir)


if __name__ == "__main__":
    main()
