"""Per-image seeds: from the file name, never from the folder the data lives in."""

from __future__ import annotations

import pytest
import torch

from equi_ext.core.seeding import file_seed, image_seed


def test_an_images_seed_depends_on_its_name_not_its_folder():
    assert file_seed("/data/shapes/img_dir/val/00001.png") == file_seed("other/place/00001.png")
    assert file_seed("00001.png") != file_seed("00002.png")


def test_an_image_seed_comes_from_its_file_name_else_its_id_else_its_index():
    assert image_seed("/data/a/img_001.png", 7, 3) == image_seed("img_001.png", None, 0) == file_seed("img_001.png")
    assert image_seed(None, 7, 3) == 7 and image_seed("", 7, 3) == 7
    assert image_seed(None, "coco-7", 3) == 3 and image_seed(None, True, 3) == 3  # not an integer id


def test_image_streams_follow_the_image_seeds_and_noise_follows_the_images():
    """One stream per image *seed* (the same image gets the same noise in any batch), shaped, typed and
    ranged like the images it perturbs."""
    from equi_ext.core.seeding import image_generators, normal_like, uniform_like

    images = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    same = normal_like(images, image_generators(0, [7, 7], 2))
    assert torch.equal(same[0], same[1]) and same.shape == images.shape and same.dtype == torch.float64
    assert torch.equal(normal_like(images, image_generators(0, None, 2)),
                       normal_like(images, image_generators(0, [0, 1], 2)))  # default seeds: 0..n-1
    assert not torch.equal(normal_like(images, image_generators(0, [7, 8], 2))[1], same[1])
    big = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    noise = uniform_like(big, image_generators(3, [1], 1), -4.0, 4.0)
    assert noise.dtype == torch.float64 and -4.0 <= noise.min() < -3.9 and 3.9 < noise.max() < 4.0
    with pytest.raises(ValueError, match=r"image_seeds must have one entry per image \(2\); got 1"):
        image_generators(0, [1], 2)


def test_an_images_draws_do_not_depend_on_its_place_in_the_batch():
    """The same image defended or attacked first or second gets the same random draws: from its ``image_seeds``,
    or without them from its pixel values (the seed was its position: results differed by 6 levels). Two
    images with equal pixels share draws unless seeds tell them apart."""
    import equi_ext
    from equi_ext.attacks import PGD

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 1)  # per-pixel: a row's numbers cannot depend on the other row
    a, b = torch.rand(2, 1, 3, 32, 32) * 255
    ab, ba = torch.cat([a, b]), torch.cat([b, a])

    def features(x):
        return net(x / 255)

    def defended(x, seeds=None, method="equi"):
        return equi_ext.defend(features, x, method, preset="fast", model=net, image_seeds=seeds).images

    torch.testing.assert_close(defended(ab)[0], defended(ba)[1], rtol=0, atol=0)
    torch.testing.assert_close(defended(ab, [7, 9])[0], defended(ba, [9, 7])[1], rtol=0, atol=0)
    assert not torch.equal(defended(ab)[0], defended(ab, [7, 9])[0])  # the pixels' seed is not seed 7
    attack = PGD(logits_fn=features, eps=4, steps=2)
    labels = features(ab).argmax(1)
    torch.testing.assert_close(attack(ab, labels)[0], attack(ba, labels.flip(0))[1], rtol=0, atol=0)
    torch.testing.assert_close(attack(ab, labels, image_seeds=[7, 9])[0],
                               attack(ba, labels.flip(0), image_seeds=[9, 7])[1], rtol=0, atol=0)
    noise = equi_ext.defend(features, torch.cat([a, a]), "random", eps_v=8).images
    torch.testing.assert_close(noise[0], noise[1], rtol=0, atol=0)
    noise = equi_ext.defend(features, torch.cat([a, a]), "random", eps_v=8, image_seeds=[1, 2]).images
    assert not torch.equal(noise[0], noise[1])
