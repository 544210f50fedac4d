"""The 15 common corruptions through imagecorruptions, with the NumPy 2 / scikit-image shim."""

from __future__ import annotations

import numpy as np
import pytest

from equi_ext.data.corruptions import CORRUPTIONS, corrupt


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = np.full((64, 80, 3), 90, np.uint8)
    img[16:48, 20:60] = rng.integers(0, 255, size=(32, 40, 3), dtype=np.uint8)
    return img


def test_the_listed_names_are_the_packages_common_corruptions_in_its_order():
    import imagecorruptions

    assert CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("common"))


def test_all_fifteen_corruptions_run_change_the_image_and_keep_its_shape(image):
    assert len(CORRUPTIONS) == 15 and {"glass_blur", "fog"} <= set(CORRUPTIONS)
    for name in CORRUPTIONS:
        out = corrupt(image, name, severity=3, seed=1)
        assert out.shape == image.shape and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - image).mean() > 0.5, name


def test_shimmed_corruptions_match_their_definitions(image):
    """glass_blur = gaussian blur + local pixel shuffles, fog = added plasma haze: check the
    effects the package intends, so a shim that silently skipped work would fail."""
    from skimage.filters import gaussian

    blurred = corrupt(image, "glass_blur", severity=1, seed=0).astype(float)
    reference = gaussian(image / 255.0, sigma=0.7, channel_axis=-1) * 255
    assert np.abs(blurred - reference).mean() < np.abs(image - reference).mean() + 8
    assert blurred[20:44, 24:56].std() < image[20:44, 24:56].astype(float).std()  # smoother
    fogged = corrupt(image, "fog", severity=3, seed=0).astype(float)
    assert fogged[:8].mean() > image[:8].astype(float).mean()  # haze brightens the flat border


def test_seeded_and_global_rng_left_alone(image):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = corrupt(image, "gaussian_noise", seed=5)
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(a, corrupt(image, "gaussian_noise", seed=5))
    assert not np.array_equal(a, corrupt(image, "gaussian_noise", seed=6))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_depends_only_on_the_image_and_the_seed(image, name):
    """A benchmark seeds each image's corruption by its file name; a corruption drawing from elsewhere (as
    impulse_noise did through scikit-image's fresh-entropy random_noise) makes runs and resumes disagree."""
    first = corrupt(image, name, severity=4, seed=11)
    assert np.array_equal(first, corrupt(image, name, severity=4, seed=11)), name
    assert np.array_equal(first[..., ::-1], corrupt(np.ascontiguousarray(image[..., ::-1]), name, severity=4,
                                                    seed=11, bgr=True)), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="rain"), r"unknown corruption\(s\) \['rain'\]; valid names: gaussian_noise"),
    (dict(name="fog", severity=6), r"severities must be among 1, 2, 3, 4, 5; got \[6\]"),
])
def test_bad_names_and_severities(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        corrupt(image, **kwargs)


def test_bad_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        corrupt(np.zeros((8, 8), np.float32), "fog")
