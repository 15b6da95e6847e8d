"""Backbones (4-channel stem surgery, large variant, BatchNorm settings) and the classifier head."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from hpa_tf.models.backbones import (
    BackboneError,
    adapt,
    application_names,
    backbone,
    check_backbone,
    source_model,
)
from hpa_tf.models.classifier import REFERENCE_MEAN, REFERENCE_STD, build_classifier, load_stats

MINI = "densenet_1_1_1_1"


def _rgb_and_rgb0(size: int, n: int = 2, seed: int = 0):
    rgb = np.random.default_rng(seed).random((n, size, size, 3)).astype("float32")
    return rgb, np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)


# Each family's own preprocessing, as Keras exports it: what the adapter must reproduce from torch input.
FAMILY_PREPROCESS = {MINI: keras.applications.densenet, "densenet121": keras.applications.densenet,
                     "vgg16": keras.applications.vgg16, "inceptionv3": keras.applications.inception_v3}
STEM_CONV = {MINI: "conv1_conv", "densenet121": "conv1_conv", "vgg16": "block1_conv1"}


def _stem_conv(name: str, source: keras.Model) -> str:
    """The stem convolution's name. InceptionV3's convolutions have Keras' automatic names, numbered on
    from any unnamed Conv2D built earlier in the process ("conv2d" only when it is the first): its first
    Conv2D."""
    if name in STEM_CONV:
        return STEM_CONV[name]
    return next(layer.name for layer in source.layers if isinstance(layer, keras.layers.Conv2D))


@pytest.fixture(params=list(FAMILY_PREPROCESS))
def adapted(request, adapted_backbone):
    """(name, 3-channel source with random weights, its 4-channel adaptation)."""
    return request.param, *adapted_backbone(request.param)


def test_adapter_on_torch_input_equals_the_source_on_its_own_preprocessing(adapted):
    """On [z_R, z_G, z_B, 0] (RGB z-scored with ImageNet's mean and std) the 4-channel model equals the
    source on keras.applications.<family>.preprocess_input(255 RGB): caffe BGR for VGG, [-1, 1] for
    Inception, torch for DenseNet."""
    name, source, model = adapted
    rgb = np.random.default_rng(0).random((2, 80, 80, 3)).astype("float32")
    z = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    torch_input = np.concatenate([z, np.zeros_like(z[..., :1])], axis=-1).astype("float32")
    expected = source(FAMILY_PREPROCESS[name].preprocess_input(255.0 * rgb), training=False).numpy()
    got = model(torch_input, training=False).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-3
    # DenseNet's weights take torch input as it is: no conversion layer at all
    has_layer = any(layer.name == "input_convention" for layer in model.layers)
    assert has_layer == (name not in (MINI, "densenet121"))


@pytest.mark.parametrize("name", ["efficientnetb0", "efficientnetv2b0", "convnexttiny", "mobilenetv3small"])
def test_families_that_normalise_inside_are_refused_with_the_reason(name):
    """Their in-model per-channel normalisation would shift a Y input of 0: refused before any build."""
    with pytest.raises(BackboneError, match=f"{name} normalises its input inside the model"):
        check_backbone(name)


def test_yellow_kernel_copies_the_slice_that_reads_red(adapted):
    """VGG's caffe weights read BGR, so red is input slice 2 there; 0 for DenseNet and Inception."""
    name, source, model = adapted
    stem = _stem_conv(name, source)
    kernel3 = source.get_layer(stem).get_weights()[0]
    kernel4 = model.get_layer(stem).get_weights()[0]
    assert kernel3.shape[2] == 3 and kernel4.shape[2] == 4
    red = 2 if name == "vgg16" else 0
    np.testing.assert_array_equal(kernel4[:, :, :3], kernel3)
    np.testing.assert_array_equal(kernel4[:, :, 3], kernel3[:, :, red])
    # and Y is scaled as red is: Y = z equals adding the red-kernel response of R = z with no offset
    if name == "vgg16":
        kernel, bias = (np.asarray(w) for w in model.get_layer("input_convention").get_weights())
        assert kernel[0, 2] == pytest.approx(255 * 0.229) and kernel[3, 3] == kernel[0, 2]
        assert bias[3] == 0 and bias[2] == pytest.approx(255 * 0.485 - 123.68, abs=1e-4)


def test_stem_kernel_keeps_rgb_and_copies_red_to_yellow():
    keras.utils.set_random_seed(0)
    source = source_model(MINI, weights=None)
    model = adapt(source, name=MINI)
    kernel3 = source.get_layer("conv1_conv").get_weights()[0]
    kernel4 = model.get_layer("conv1_conv").get_weights()[0]
    assert kernel3.shape == (7, 7, 3, 64) and kernel4.shape == (7, 7, 4, 64)
    np.testing.assert_array_equal(kernel4[:, :, :3], kernel3)
    np.testing.assert_array_equal(kernel4[:, :, 3], kernel3[:, :, 0])
    # The Y input matters: the same image with a non-zero Y plane gives other features.
    _, rgb0 = _rgb_and_rgb0(32)
    rgby = rgb0.copy()
    rgby[..., 3] = 0.5
    assert np.abs(model(rgby).numpy() - model(rgb0).numpy()).max() > 1e-3


def test_every_weight_is_copied():
    keras.utils.set_random_seed(0)
    source = source_model(MINI, weights=None)
    model = adapt(source, name=MINI)
    for layer in source.layers:
        for w3, w4 in zip(layer.get_weights(), model.get_layer(layer.name).get_weights(), strict=True):
            if w3.shape == w4.shape:
                np.testing.assert_array_equal(w3, w4)


def test_large_variant_halves_the_final_map_and_adds_one_pool():
    source = source_model(MINI, weights=None)
    normal, large = adapt(source, name=MINI), adapt(source, large=True, name=MINI)
    _, rgb0 = _rgb_and_rgb0(128, n=1)
    assert normal(rgb0).shape[1:3] == (4, 4)
    assert large(rgb0).shape[1:3] == (2, 2)
    assert len(large.layers) == len(normal.layers) + 1
    pool = large.get_layer("pool1_large")
    assert pool.pool_size == (2, 2) and pool.strides == (2, 2)
    # The extra pool sits right after the stem's max-pool (spec 6.2).
    assert pool._inbound_nodes[0].parent_nodes[0].operation.name == "pool1"


def test_large_variant_is_refused_where_undefined():
    with pytest.raises(BackboneError, match="large variant"):
        backbone("mobilenetv2", weights=None, large=True)


def test_unknown_backbone_and_pretrained_mini_are_refused():
    with pytest.raises(BackboneError, match="densenet121"):
        source_model("densenet12")
    with pytest.raises(BackboneError, match="no pretrained weights"):
        source_model(MINI, weights="imagenet")
    assert {"densenet121", "resnet50", "inceptionv3"} <= set(application_names())


def test_batchnorm_is_pytorch_like_and_optionally_synchronised():
    net = backbone(MINI, weights=None, sync_bn=True)
    norms = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 and layer.synchronized for layer in norms)


def test_classifier_head_sequence_and_shapes():
    """The head of spec 6.2 on the small DenseNet (DenseNet121's 16 x 16 x 1024 map at 512, hence its
    2048-wide pool, is checked in test_real_profiles on the shared backbone)."""
    model = build_classifier(MINI, weights=None)
    names = [type(layer).__name__ for layer in model.layers]
    assert names == ["InputLayer", "Normalization", "Functional", "GlobalAveragePooling2D",
                     "GlobalMaxPooling2D", "Concatenate", "BatchNormalization", "Dropout", "Dense", "ReLU",
                     "BatchNormalization", "Dropout", "Dense"]
    concat = model.get_layer("pool_concat")
    assert model.get_layer("pool_avg").output is concat.input[0]  # avg first (spec 6.2)
    width = concat.output.shape[-1]
    assert width == 2 * model.get_layer(MINI).output.shape[-1]
    # half the pooled width: 1024 for DenseNet121's 2048, as the reference
    assert model.get_layer("head_fc1").units == width // 2 and model.get_layer("logits").units == 28
    for name in ("head_bn1", "head_bn2"):
        layer = model.get_layer(name)
        assert layer.epsilon == 1e-5 and layer.momentum == 0.9
    assert model.get_layer("head_dropout1").rate == 0.5 and model.get_layer("head_dropout2").rate == 0.5
    _, rgb0 = _rgb_and_rgb0(64)
    logits = model(rgb0, training=False)
    assert logits.shape == (2, 28) and logits.dtype == "float32"


def test_dense_layers_use_pytorch_linear_init():
    model = build_classifier(MINI, weights=None, hidden=256)
    pooled = model.get_layer("pool_concat").output.shape[-1]
    for name, fan_in in (("head_fc1", pooled), ("logits", 256)):
        kernel, bias = model.get_layer(name).get_weights()
        limit = 1 / np.sqrt(fan_in)
        assert kernel.shape[0] == fan_in
        assert np.abs(kernel).max() <= limit and np.abs(bias).max() <= limit
        assert np.abs(kernel).max() > 0.9 * limit  # uniform over the whole range, not a narrower init


def test_normalisation_layer_uses_the_given_statistics():
    mean, std = (0.1, 0.2, 0.3, 0.4), (0.5, 0.25, 0.125, 1.0)
    model = build_classifier(MINI, weights=None, mean=mean, std=std)
    images = np.random.default_rng(1).random((2, 32, 32, 4)).astype("float32")
    normalised = model.get_layer("rgby_norm")(images).numpy()
    np.testing.assert_allclose(normalised, (images - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-6)


def test_load_stats_reads_prepare_output_and_defaults_to_the_spec(tmp_path):
    assert load_stats(None) == (REFERENCE_MEAN, REFERENCE_STD)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"mean": [0.1, 0.2, 0.3, 0.4], "std": [1, 2, 3, 4]}))
    assert load_stats(path) == ((0.1, 0.2, 0.3, 0.4), (1.0, 2.0, 3.0, 4.0))
    path.write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]}))
    with pytest.raises(ValueError, match="stats.json"):
        load_stats(path)


def test_mixed_precision_still_gives_float32_logits():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_classifier(MINI, weights=None)
        _, rgb0 = _rgb_and_rgb0(32)
        assert model.get_layer("head_fc1").compute_dtype == "bfloat16"
        assert model(rgb0).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)
