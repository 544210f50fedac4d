"""Packaging for equi-ext: a framework-free core plus one extra per framework.

``pip install equi-ext`` gives the torch core (defenses, attacks, scores). The extras add each framework's
pure-Python side; neither framework's compiled part comes from a plain ``pip install`` (see docs/get_started.md):
mmcv 2.1.0's ops are a wheel that ``tools/install.sh`` takes from ``EQUI_WHEELHOUSE`` or builds from mmcv's
PyPI sdist, and detectron2 is built by ``tools/install.sh`` from PyPI's ``pb1-detectron2==0.6`` sdist.
The exact tested set is ``constraints.txt``.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "equi_ext/__init__.py").read_text(), re.M).group(1)

# What the wheel carries beside the code, the OpenMMLab way (``equi_ext/.mim``; in a checkout these are links
# to the top-level folders): the configs, the tools (not the checkout's installers) and the small demo
# checkpoints. The demo Mask R-CNN (24 MB) stays out: a wheel user trains it with ``equi-ext train_net``.
PACKAGE_DATA = [".mim/model-index.yml", ".mim/configs/**/*.py", ".mim/configs/**/*.yaml", ".mim/tools/*.py",
                ".mim/checkpoints/deeplabv3_*.pth", ".mim/checkpoints/ssl/deeplabv3_*.pth"]
EXCLUDED_TOOLS = [".mim/tools/patch_detectron2_sdist.py"]

# What the synthetic data generator (equi_ext.data) needs beside the core: both adapters' demos use it.
DATA = ["pillow>=9", "pycocotools>=2.0.6"]

setup(
    name="equi-ext",
    version=VERSION,
    description="Test-time robustness for MMSegmentation and Detectron2 models by restoring feature equivariance",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
    packages=find_packages(include=["equi_ext", "equi_ext.*"]),
    package_data={"equi_ext": PACKAGE_DATA},
    exclude_package_data={"equi_ext": EXCLUDED_TOOLS},
    entry_points={"console_scripts": ["equi-ext = equi_ext.cli:main"]},
    install_requires=["torch>=2.0", "numpy>=1.24", "tqdm>=4.60"],
    extras_require={
        # mmcv with ops: the wheel from EQUI_WHEELHOUSE or the one tools/install.sh builds (mmseg 1.2 needs < 2.2).
        # mmengine imports pkg_resources, which setuptools 81 removed.
        "mmseg": ["mmsegmentation>=1.2,<2", "mmcv>=2.0.0rc4,<2.2.0", "mmengine>=0.10,<1",
                  "setuptools<81", "ftfy", "regex", *DATA],
        # detectron2 itself is built by tools/install.sh (pb1-detectron2 sdist); these are its run-time needs
        # (torchvision: ROIAlign, NMS; setuptools < 81: its model_zoo imports pkg_resources).
        "detectron2": ["torchvision", "setuptools<81", "fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10",
                       "yacs>=0.1.8", "omegaconf>=2.1", "termcolor>=1.1", "tabulate", "cloudpickle", "pyyaml",
                       "matplotlib", *DATA],
        "bench": ["scikit-learn>=1.3", "matplotlib>=3.7", "imagecorruptions>=1.1.2", "scikit-image>=0.21"],
        "dev": ["pytest>=8", "hypothesis>=6.100", "ruff", "build>=1", "twine>=5"],
    },
)
