"""equi_ext.evaluation.visual_report (tools/visual_report.py) on the demo model: grid geometry, a self-contained
HTML page, consistent numbers, and the tool's argument errors."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from equi_ext.data.synthetic import PALETTE
from equi_ext.evaluation import visual_report as vr
from equi_ext.evaluation.demo import build_demo_runner

from .conftest import load_tool

TRANSFORMS = ["hflip", "resize:0.5"]  # two of the fast preset's five: the same code path, a third of the cost
SEED, STEPS, EPS = 3, 2, 4.0
SETTINGS = dict(num_images=2, steps=STEPS, eps=EPS, preset="fast", seed=SEED, transforms=TRANSFORMS)
#: Every panel's caption, written out independently of the library: rows are images, these the columns.
PANELS = ["input image", "ground truth", "clean prediction",
          *(f"reversed prediction g⁻¹∘C∘F∘g(x), g = {t}" for t in TRANSFORMS),
          "attacked prediction (PGD-2, ε = 4)", "restored prediction (equivariance defense, preset 'fast')",
          "equivariance map, clean input", "equivariance map, attacked input", "equivariance map, restored input"]


@pytest.fixture(scope="module")
def report(synthetic_val_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("visual_report")
    result = vr.visual_report(**SETTINGS, data_root=synthetic_val_root, work_dir=work)
    return work, result


class Page(HTMLParser):
    """Collects image sources, links and the text of figcaptions and table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.images, self.links, self.captions, self.cells = [], [], [], []
        self._into: list | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if "href" in attrs or ("src" in attrs and tag != "img"):
            self.links.append(attrs.get("href") or attrs["src"])
        if tag in ("figcaption", "td"):
            self._into = self.captions if tag == "figcaption" else self.cells
            self._into.append("")

    def handle_endtag(self, tag):
        if tag in ("figcaption", "td"):
            self._into = None

    def handle_data(self, data):
        if self._into is not None:
            self._into[-1] += data


def test_png_is_one_row_per_image_and_one_column_per_panel(report, synthetic_val_root):
    work, result = report
    with Image.open(work / "visual_report.png") as png:
        assert png.format == "PNG"
        assert png.size == vr.grid_pixels(2, len(PANELS))
        pixels = np.asarray(png.convert("RGB"))
    assert result["columns"] == PANELS and result["grid"]["rows"] == 2
    # The ground-truth panels use the dataset palette: every class of image 0's label map is drawn in its colour.
    labels = np.asarray(Image.open(synthetic_val_root / "ann_dir/val/00000.png"))
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    for cls in np.unique(labels):
        assert tuple(PALETTE[cls]) in colours, cls


def test_html_is_self_contained_and_names_every_panel_of_every_image(report):
    work, _ = report
    page = Page()
    page.feed((work / "index.html").read_text())
    page.close()
    assert len(page.images) == 2 and page.links == []  # one embedded row per image, nothing fetched
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as row:
            assert row.size == vr.grid_pixels(1, len(PANELS))
    assert len(page.captions) == 2
    for caption in page.captions:
        positions = [caption.index(name) for name in PANELS]
        assert positions == sorted(positions)  # left to right
    for name in PANELS:
        assert page.cells.count(name) == 2


def test_json_numbers_are_in_range_and_consistent(report):
    work, result = report
    saved = json.loads((work / "visual_report.json").read_text())
    assert saved["images"] == json.loads(json.dumps(result["images"]))
    assert saved["settings"]["transforms"] == TRANSFORMS
    low, high = saved["map_limits"]
    for image in saved["images"]:
        assert set(image["miou"]) == {"clean", *TRANSFORMS, "attacked", "restored"}
        assert all(0.0 <= v <= 100.0 for v in image["miou"].values())
        for key in ("clean", "attacked", "restored"):
            stats = image["map"][key]
            assert -1.0 <= stats["min"] <= stats["mean"] <= stats["max"] <= 1.0
            assert low <= stats["min"] and stats["max"] <= high
            # Flips and resizes keep the whole map in the overlap: the map's mean is the score.
            assert stats["mean"] == pytest.approx(image["score"][key], abs=1e-5)
        assert image["linf_attack"] <= EPS + 1e-4
        assert image["linf_restore"] <= 4.0 + 1e-4  # the fast preset's eps_v


def test_clean_map_mean_is_the_defense_score_and_a_rerun_gives_the_same_numbers(report, synthetic_val_root, tmp_path):
    from equi_ext.defenses import EquivarianceDefense
    from equi_ext.mmseg import runtime

    _, result = report
    runner = build_demo_runner(synthetic_val_root, 1, tmp_path)
    model = runner.model.eval()
    pixels, _, _ = vr.image_tensors(runner, 0)
    score = EquivarianceDefense(preset="fast", transforms=TRANSFORMS, seed=SEED).score(pixels, runtime(model).features)
    assert result["images"][0]["map"]["clean"]["mean"] == pytest.approx(float(score), abs=1e-5)
    pipeline = vr.build_pipeline("fast", EPS, STEPS, SEED, TRANSFORMS)
    _, numbers = vr.analyse_image(runner, pipeline, 0, vr.panel_names(pipeline, "fast"))
    assert json.loads(json.dumps(numbers)) == json.loads(json.dumps(result["images"][0]))


@pytest.mark.parametrize("args, message", [
    (["--num-images", "0"], "num_images must be >= 1; got 0"),
    (["--checkpoint", "nope.pth"], "checkpoint 'nope.pth' does not exist"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--eps", "0.0157"], r"eps=0.0157 is in \(0, 1\)"),
    (["--transforms", "warp"], "unknown transform 'warp'"),
    (["--transforms", "hflip", "hflip"], "must be distinct"),
    (["--data-root", "no/such/dir"], "has no img_dir/val"),
])
def test_bad_arguments_fail_before_any_model_is_built(args, message):
    with pytest.raises(SystemExit, match=message):
        load_tool("visual_report").main(args)
