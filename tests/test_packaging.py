"""Packaging by parts: the core needs no framework, each adapter needs only its own, and each extra lists
what its part imports.

Each check runs in a fresh interpreter in which the other parts' packages are made unimportable, as on a
machine that installed only ``equi-ext`` or only one extra.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MMSEG = ["mmseg", "mmcv", "mmengine"]
DETECTRON2 = ["detectron2", "fvcore", "iopath", "yacs", "omegaconf"]
REPO = Path(__file__).resolve().parents[1]
BENCH = ["sklearn", "matplotlib", "imagecorruptions", "skimage"]

BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed in this test)", name=name)
sys.meta_path.insert(0, Blocker())
"""


def run_without(blocked, body):
    script = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_core_defends_and_attacks_with_no_framework_and_no_bench_library():
    out = run_without(MMSEG + DETECTRON2 + BENCH + ["PIL", "pycocotools"], """
        import sys, torch
        import equi_ext
        from equi_ext.attacks import build_attack
        from equi_ext.attacks.base import pixel_cross_entropy
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
        images = torch.rand(2, 3, 32, 32) * 255
        labels = torch.randint(0, 3, (2, 32, 32))
        adv = build_attack(dict(type="pgd", eps=4, steps=2), loss_fn=lambda x, y: pixel_cross_entropy(net(x), y))(
            images, labels)
        out = equi_ext.defend(net, adv, method="equi", steps=2, eps_v=6, transforms="flip_resize")
        score = equi_ext.equivariance_score(net, images)
        assert (adv - images).abs().max() <= 4 + 1e-4 and (out.images - adv).abs().max() <= 6 + 1e-4
        assert score.shape == (2,)
        loaded = sorted({m.split(".")[0] for m in sys.modules} & {"mmseg", "mmcv", "mmengine", "detectron2"})
        print(loaded)
    """)
    assert out.strip() == "[]"


def test_mmseg_adapter_works_without_detectron2():
    run_without(DETECTRON2, """
        import equi_ext.mmseg
        from mmseg.registry import MODELS
        assert "SyntheticShapesDataset" in __import__("mmseg.registry").registry.DATASETS
    """)


def test_detectron2_adapter_works_without_mmseg():
    run_without(MMSEG, """
        import equi_ext.detectron2
        from detectron2.modeling import META_ARCH_REGISTRY
        assert "EquiGeneralizedRCNN" in META_ARCH_REGISTRY
    """)


@pytest.mark.parametrize("part, blocked, names", [
    ("mmseg", ["mmseg"], ["'mmseg'", "tools/install.sh", "equi-ext[mmseg]"]),
    ("mmseg", ["mmcv"], ["'mmcv.ops'", "equi-ext[mmseg]"]),
    ("detectron2", ["detectron2"], ["'detectron2.modeling'", "pb1-detectron2==0.6", "equi-ext[detectron2]"]),
])
def test_an_adapter_without_its_framework_says_what_to_install(part, blocked, names):
    out = run_without(blocked, f"""
        try:
            import equi_ext.{part}
        except ImportError as error:
            print(error)
        else:
            raise SystemExit("imported without its framework")
    """)
    for name in names:
        assert name in out, out


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_closure(requirements):
    """Distribution names reachable from ``requirements`` through installed metadata, plus what setuptools
    vendors (pkg_resources falls back to its own copies in ``setuptools/_vendor``)."""
    seen, todo = set(), list(requirements)
    while todo:
        key = _normalise(re.split(r"[\s<>=!~;\[(]", todo.pop(), maxsplit=1)[0])
        if not key or key in seen:
            continue
        seen.add(key)
        try:
            todo += [r for r in importlib.metadata.requires(key) or [] if "extra ==" not in r]
        except importlib.metadata.PackageNotFoundError:
            pass
    if "setuptools" in seen:
        vendor = importlib.metadata.distribution("setuptools").locate_file("setuptools/_vendor")
        seen |= {_normalise(p.name.split("-")[0]) for p in Path(vendor).glob("*.dist-info")}
    return seen


def _imported_top_levels(module, blocked=()):
    """Top-level names (the standard library excluded) that ``import module`` loads, or None if it fails."""
    out = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(f"""
        import json, sys
        import {module}
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
    """)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return None
    return set(json.loads(out.stdout.strip().splitlines()[-1])) - set(sys.stdlib_module_names)


@pytest.mark.parametrize("module, extras, built_by_install_sh", [
    ("equi_ext.defenses", [], []),
    ("equi_ext.mmseg", ["mmseg"], []),
    ("equi_ext.detectron2", ["detectron2"], ["pb1-detectron2"]),
])
def test_each_extra_declares_what_its_part_imports(module, extras, built_by_install_sh):
    declared = [r for r in importlib.metadata.requires("equi-ext")
                if "extra ==" not in r or any(f'extra == "{e}"' in r for e in extras)]
    allowed = _requirement_closure([r.split(";")[0] for r in declared] + built_by_install_sh) | {"equi-ext"}
    owners = importlib.metadata.packages_distributions()
    loaded = _imported_top_levels(module)
    assert loaded is not None
    undeclared = {}
    for name in loaded:
        # A namespace package (``jaraco``) spans several distributions: one declared owner provides it.
        dists = {_normalise(dist) for dist in owners.get(name, [])}
        if dists and not dists & allowed:
            for dist in dists:
                undeclared.setdefault(dist, set()).add(name)
    # A package imported only when present (``try: import tifffile``) is optional: the import must still work
    # with it blocked.
    needed = sorted(dist for dist, names in undeclared.items() if _imported_top_levels(module, names) is None)
    assert not needed, f"import {module} needs {needed}, which equi-ext{extras} does not declare"


def test_tools_test_runs_a_detectron2_config_without_mmseg():
    """``tools/test.py CONFIG.yaml`` imports only the Detectron2 adapter: a bad yaml setting is reported
    on a machine without MMSeg (it stops before any model is built)."""
    out = run_without(MMSEG, f"""
        import runpy, sys
        sys.argv = ["tools/test.py", {str(REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml")!r},
                    "--opts", "EQUI.THRESHOLD", "0.9"]
        try:
            runpy.run_path({str(REPO / "tools/test.py")!r}, run_name="__main__")
        except SystemExit as err:
            print(err)
    """)
    assert "EQUI.THRESHOLD = 0.9 does not apply to EQUI.DEFENSE 'equi'" in out


def test_tools_import_the_package_not_each_other_and_never_edit_sys_path():
    """A tool's logic lives in the package: it runs from any working directory of an installed checkout."""
    import ast

    tools = {p.stem: p for p in (REPO / "tools").glob("*.py")}
    for name, path in tools.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                raise AssertionError(f"tools/{name}.py edits or reads sys.path (line {node.lineno})")
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            imported = {m.split(".")[0] for m in modules} & set(tools)
            assert not imported, f"tools/{name}.py imports the tool(s) {sorted(imported)} (line {node.lineno})"


def test_tools_hide_only_the_frameworks_known_warnings_and_only_when_run():
    """Run as programs, the tools hide the frameworks' unactionable warnings; a warning about anything else
    still shows."""
    import warnings

    from equi_ext.tooling import KNOWN_WARNINGS, quiet_known_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_warnings()
        for message, category in KNOWN_WARNINGS:
            warnings.warn(message + " (as the framework words it)", category, stacklevel=1)
        warnings.warn("pkg_resources is fine but this is a user's own warning", UserWarning, stacklevel=1)
        warnings.warn("Default ``avg_non_ignore`` is False", DeprecationWarning, stacklevel=1)  # right text, other category
    assert [str(w.message) for w in seen] == ["pkg_resources is fine but this is a user's own warning",
                                              "Default ``avg_non_ignore`` is False"]
    for path in (REPO / "tools").glob("*.py"):
        if path.name != "patch_detectron2_sdist.py":
            main_block = path.read_text().split('if __name__ == "__main__":\n', 1)[1]
            assert main_block.startswith("    start_tool()\n"), f"tools/{path.name} does not hide them first"


def test_a_tool_logs_what_it_does_at_info_on_stderr_without_touching_other_loggers(capsys):
    import logging

    from equi_ext.tooling import start_tool

    root = logging.getLogger()
    root_before = list(root.handlers), root.level
    start_tool()
    start_tool()  # idempotent: one handler, each line once
    logging.getLogger("equi_ext.evaluation.robustness").info("robustness benchmark: 3 cells")
    logging.getLogger("equi_ext.core").debug("not at INFO")
    logging.getLogger("mmengine").info("a framework's own INFO line")
    err = capsys.readouterr().err
    assert err.count("equi-ext: robustness benchmark: 3 cells\n") == 1
    assert "not at INFO" not in err and "framework's own" not in err
    assert (root.handlers, root.level) == root_before  # conftest restores the equi_ext logger afterwards


def test_importing_the_adapters_asks_git_nothing_until_a_tool_starts():
    """The source commit goes into a result's provenance only; reading it spawns git, so a library import must
    not, and a tool reads it once when it starts (the code that measured, not a later edit)."""
    out = run_without([], """
        import equi_ext.mmseg.metrics, equi_ext.detectron2.evaluation, equi_ext.reporting as reporting
        from equi_ext.tooling import start_tool
        print(reporting.source_commit.cache_info().misses)
        start_tool()
        first = reporting.provenance("x")["commit"]
        print(reporting.source_commit.cache_info().misses, first == reporting.provenance("y")["commit"])
    """)
    assert out.split() == ["0", "1", "True"]


def test_a_bad_setting_ends_a_tool_with_its_message_and_render_measures_nothing(tmp_path):
    from equi_ext.core.validation import SettingsError
    from equi_ext.reporting import Report
    from equi_ext.tooling import measure_or_render

    def bad_setting():
        raise SettingsError("num_images must be >= 1; got 0")

    with pytest.raises(SystemExit, match="^error: num_images must be >= 1; got 0$"):
        measure_or_render(bad_setting)
    report = Report(lambda data: f"# {data['title']}\n", {"plot_{data[name]}.txt": lambda data: b"plot"})
    (tmp_path / "result.json").write_text(json.dumps({"title": "T", "name": "n"}))
    assert measure_or_render(bad_setting, report, str(tmp_path / "result.json")) == {"title": "T", "name": "n"}
    assert (tmp_path / "result.md").read_text() == "# T\n" and (tmp_path / "plot_n.txt").read_bytes() == b"plot"
    (tmp_path / "foreign.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(SystemExit, match="foreign.json is not a result of this tool"):
        measure_or_render(bad_setting, report, str(tmp_path / "foreign.json"))


def test_tools_are_argument_parsing_plus_one_call():
    """A tool over 100 lines holds logic a user cannot import. ``patch_detectron2_sdist.py`` is exempt: it runs
    before equi-ext is installed (it patches the sdist the install builds), so it cannot import the package."""
    for path in (REPO / "tools").glob("*.py"):
        if path.name != "patch_detectron2_sdist.py":
            lines = len(path.read_text().splitlines())
            assert lines <= 100, f"tools/{path.name} has {lines} lines; move its logic into equi_ext"
