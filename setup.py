"""Packaging for equi-ext.

mmcv 2.1.0 (with its compiled ops) and detectron2 0.6 are not installable from PyPI
as wheels for torch 2.14: ``tools/install.sh`` takes them from the wheelhouse named
by ``EQUI_WHEELHOUSE`` (see README, "Installing elsewhere").
"""

from setuptools import find_packages, setup

setup(
    name="equi-ext",
    version="0.1.0",
    description="Test-time robustness for MMSegmentation and Detectron2 models by restoring feature equivariance",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["equi_ext", "equi_ext.*"]),
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "setuptools>=77.0.3,<81",
        "mmengine>=0.10,<0.11",
        "mmcv==2.1.0",
        "mmsegmentation==1.2.2",
        "detectron2==0.6",
        "pycocotools>=2.0.7",
        "ftfy",
        "regex",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm",
        "scikit-learn>=1.4",
        "imagecorruptions==1.1.2",
        "matplotlib>=3.8",
    ],
    extras_require={"dev": ["pytest>=8"]},
)
