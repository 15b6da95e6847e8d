"""The reference profiles' feature maps, checked symbolically (no convolution runs at real size): the
final maps that the crop and image sizes of i768, i1536 and metric i768 give their backbones (spec 6.2,
6.4); the profiles' other values are in test_numerics_checks.py. benchmarks/real_profiles.py runs the same
profiles for real."""

from __future__ import annotations

import pytest

from hpa_tf.config import classifier_config, embedder_config


@pytest.fixture
def backbones(adapted_backbone):
    """The three backbones of the real profiles, random weights (shared with test_models)."""
    return {"densenet121": adapted_backbone("densenet121")[1],
            "densenet121_large": adapted_backbone("densenet121", large=True)[1],
            "resnet50": adapted_backbone("resnet50")[1]}


@pytest.mark.parametrize("profile, key, side, expected", [
    ("i768", "densenet121", 512, (16, 16, 1024)),            # spec 6.2: 512 -> 16x16x1024
    ("i1536", "densenet121_large", 1024, (16, 16, 1024)),    # the extra 2x2 pool: 1024 -> 16x16 too
    ("metric", "resnet50", 768, (24, 24, 2048)),              # spec 6.4: layer4 at 768
])
def test_feature_maps(backbones, profile, key, side, expected):
    config = embedder_config("i768") if profile == "metric" else classifier_config(profile)
    assert (config.img_size if profile == "metric" else config.crop_size) == side
    assert tuple(backbones[key].compute_output_shape((2, side, side, 4))) == (2, *expected)


def test_large_pool_halves_the_map(backbones):
    """Without the large variant's pool a 1024 input gives 32x32; with it a 512 input gives 8x8."""
    assert tuple(backbones["densenet121"].compute_output_shape((1, 1024, 1024, 4))) == (1, 32, 32, 1024)
    assert tuple(backbones["densenet121_large"].compute_output_shape((1, 512, 512, 4))) == (1, 8, 8, 1024)
