"""The release: one version, license and citation, and a wheel that works without the repository.

The wheel test builds the sdist and wheel from the checkout's files (as ``python -m build`` on a clean clone),
checks them with ``twine check``, installs the wheel alone into a fresh virtual environment whose only other
packages are the frameworks already installed here (a path file; the checkout's editable install is not
seen), and from an empty directory runs an installed tool on a config that inherits a shipped one
(``equi_ext::``), loads a shipped Detectron2 yaml with its bases, and runs the README's Python API example.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

import equi_ext

REPO = Path(__file__).resolve().parents[1]


def test_the_version_is_defined_once_and_the_release_files_name_it():
    setup = (REPO / "setup.py").read_text()
    assert "__version__" in setup and not re.search(r'version="\d', setup), "setup.py must read equi_ext.__version__"
    citation = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", citation, re.M).group(1) == equi_ext.__version__
    assert re.search(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(), re.M).group(1) == equi_ext.__version__
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert "license: Apache-2.0" in citation and "Robust Perception through Equivariance" in citation
    readme = (REPO / "README.md").read_text()
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md", "SECURITY.md"):
        assert f"]({name})" in readme and (REPO / name).is_file(), f"README does not link {name}"


def test_shipped_configs_are_named_with_the_package_scope(tmp_path):
    from equi_ext.assets import ASSETS, config_path

    assert config_path("equi_ext::demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml") == str(
        ASSETS / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml")
    assert config_path(tmp_path / "mine.py") == str(tmp_path / "mine.py")  # a path is left alone
    with pytest.raises(FileNotFoundError, match=r"'equi_ext::deeplabv3_voc_equ.py' names no config shipped with "
                                                r"equi-ext \(did you mean 'deeplabv3_voc_equi.py'\?\)"):
        config_path("equi_ext::deeplabv3_voc_equ.py")


def test_the_command_runs_tools_by_name_and_refuses_unknown_ones(capsys, tmp_path):
    from equi_ext.cli import main

    main(["--help"])
    listing = capsys.readouterr().out
    assert re.search(r"^  test +Evaluate a config clean / attacked / defended", listing, re.M)
    assert "patch_detectron2_sdist" not in listing and "install" not in re.findall(r"^  (\w+)", listing, re.M)
    with pytest.raises(SystemExit, match="unknown tool 'tset' \\(did you mean 'test'\\?\\)"):
        main(["tset"])
    with pytest.raises(SystemExit) as exit_info:
        main(["generate_data", "--size", "8", "--out", str(tmp_path / "unused")])  # the tool's own argument check ran
    assert exit_info.value.code == 2 and "image_size must be an int >= 32; got 8" in capsys.readouterr().err


def _python_api_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    return section[section.index("```python\n") + 10:section.index("\n```", section.index("```python\n"))]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """sdist and wheel built from the checkout's tracked and unignored files (what a clean clone holds)."""
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    with open(source / "files.tar", "wb") as archive:
        subprocess.run(["tar", "cf", "-", "-C", str(REPO), "--", *[f for f in files if f and (REPO / f).exists()]],
                       check=True, stdout=archive)
    subprocess.run(["tar", "xf", "files.tar"], cwd=source, check=True)
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), "."], cwd=source,
                   check=True, capture_output=True, timeout=600)
    return dist


def test_sdist_and_wheel_build_and_pass_twine_check(built):
    version = equi_ext.__version__
    (wheel,) = built.glob("*.whl")
    assert wheel.name == f"equi_ext-{version}-py3-none-any.whl" and (built / f"equi_ext-{version}.tar.gz").is_file()
    out = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, built.iterdir())],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("equi_ext/.mim/model-index.yml", "equi_ext/.mim/configs/deeplabv3_voc_equi.py",
                    "equi_ext/.mim/configs/_base_/synthetic_shapes.py",
                    "equi_ext/.mim/configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml",
                    "equi_ext/.mim/tools/test.py", "equi_ext/.mim/tools/run_demo.py",
                    "equi_ext/.mim/checkpoints/deeplabv3_r18c16-d8_synthetic-128x128.pth",
                    "equi_ext/.mim/checkpoints/deeplabv3_r18c16-d8_synthetic-128x128_adv-pgd2-eps4.pth",
                    f"equi_ext-{version}.dist-info/licenses/LICENSE"):
        assert shipped in names, f"the wheel lacks {shipped}"
    assert not [n for n in names if "patch_detectron2_sdist" in n or "mask_rcnn" in n and n.endswith(".pth")]
    entry_points = zipfile.ZipFile(wheel).read(f"equi_ext-{version}.dist-info/entry_points.txt").decode()
    assert "equi-ext = equi_ext.cli:main" in entry_points


def test_the_wheel_alone_runs_a_shipped_config_the_yaml_bases_and_the_python_example(built, tmp_path):
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    python, command = env / "bin/python", env / "bin/equi-ext"
    (wheel,) = built.glob("*.whl")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "frameworks.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "workspace"
    work.mkdir()

    def run(*args, **kwargs):
        out = subprocess.run([str(a) for a in args], cwd=work, capture_output=True, text=True, timeout=900, **kwargs)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    where = run(python, "-c", "import equi_ext; print(equi_ext.__file__, equi_ext.__version__)")
    assert where.startswith(site) and where.split()[1] == equi_ext.__version__
    run(command, "generate_data", "--num-train", "0", "--num-val", "2", "--no-progress")
    (work / "my_config.py").write_text(textwrap.dedent("""\
        _base_ = ['equi_ext::demo/deeplabv3_r18c16-d8_1xb8-3k_synthetic-128x128.py']
        model = dict(test_cfg=dict(defense=dict(type='equi', preset='fast'), attack=dict(type='pgd', eps=4, steps=3)))
    """))
    checkpoint = Path(site, "equi_ext/.mim/checkpoints/deeplabv3_r18c16-d8_synthetic-128x128.pth")
    run(command, "test", "my_config.py", checkpoint, "--work-dir", "out")
    rows = {r["scenario"]: r for r in json.loads((work / "out/equi_results.json").read_text())["results"]}
    assert list(rows) == ["clean", "clean_defended", "attacked", "defended"]
    assert all(r["images"] == 2 for r in rows.values()) and rows["attacked"]["mIoU"] < rows["clean"]["mIoU"]

    yaml = run(python, "-c", textwrap.dedent("""\
        from equi_ext.detectron2 import load_config
        cfg = load_config('equi_ext::demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml')
        print(cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.EQUI.DEFENSE)
    """))
    assert yaml.split() == ["EquiGeneralizedRCNN", "18", "3", "equi"]
    printed = run(python, "-c", _python_api_example()).splitlines()
    assert len(printed) == 1 and re.fullmatch(r"torch\.Size\(\[2, 3, 64, 64\]\) tensor\(\[\S+, \S+\]\) "
                                               r"tensor\(\[\S+, \S+\]\)", printed[0]), printed
