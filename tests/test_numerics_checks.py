"""Numerical checks where a plausible mistake would otherwise pass: the trainer's step under fp16 loss
scaling and under XLA against a plain fp32 step, synchronised BatchNorm statistics on 2 replicas, the
content of the training crop, the reference profiles against the spec, and stats.json reaching the
classifier's normalisation in training and inference."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from hpa_tf.config import (
    CLASSIFIER_PROFILES,
    EMBEDDER_PROFILES,
    FOLD_FAMILIES,
    classifier_config,
    embedder_config,
)
from hpa_tf.data.pipeline import crop_and_resize
from hpa_tf.layout import DataLayout
from hpa_tf.losses import classifier_loss
from hpa_tf.models.classifier import REFERENCE_MEAN, REFERENCE_STD, build_classifier
from hpa_tf.models.loading import load_classifier
from hpa_tf.schedules import learning_rate
from hpa_tf.training import trainer as trainer_module
from hpa_tf.training.classifier import build_trainer
from hpa_tf.training.loop import adam
from hpa_tf.training.trainer import GlobalBatchTrainer

HERE = Path(__file__).parent
ROOT = HERE.parent

# ------------------------------------------------------------ one trainer step: fp16 and XLA vs fp32

RNG = np.random.default_rng(11)
IMAGES = RNG.random((8, 16, 16, 4)).astype("float32")
LABELS = (RNG.random((8, 28)) < 0.3).astype("float32")
LR = 0.5


def _tiny_net() -> keras.Model:
    """Conv -> GAP -> float32 Dense logits; built under whatever dtype policy is set."""
    inputs = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(28, dtype="float32", name="logits")(x))


@pytest.fixture(scope="module")
def initial_weights():
    keras.utils.set_random_seed(4)
    return [w.copy() for w in _tiny_net().get_weights()]


@pytest.fixture
def restore_policy():
    """The test may set a mixed dtype policy; float32 is back afterwards whatever happens."""
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


def _hand_sgd_delta(weights, clip):
    """The SGD(LR) update of one step in plain fp32: gradients of classifier_loss on the whole batch,
    clipped by their global norm (numpy), and the unclipped gradient norm."""
    net = _tiny_net()
    net.set_weights(weights)
    with tf.GradientTape() as tape:
        loss = classifier_loss(LABELS, net(IMAGES, training=True))
    grads = [g.numpy().astype(np.float64) for g in tape.gradient(loss, net.trainable_variables)]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    factor = min(1.0, clip / norm) if clip else 1.0
    return np.concatenate([(-LR * factor * g).ravel() for g in grads]), norm


def _trainer_step(weights, optimizer, clip, jit_compile=False):
    """(trainer, flat weight change) of one GlobalBatchTrainer.fit step on the batch."""
    net = _tiny_net()
    net.set_weights(weights)
    trainer = GlobalBatchTrainer(net, classifier_loss, clipnorm=clip)
    trainer.compile(optimizer, jit_compile=jit_compile)
    before = [w.numpy().copy() for w in net.trainable_variables]
    trainer.fit(IMAGES, LABELS, batch_size=8, epochs=1, verbose=0, shuffle=False)
    delta = np.concatenate([(w.numpy() - b).ravel() for w, b in zip(net.trainable_variables, before,
                                                                    strict=True)])
    return trainer, delta


def _relative_error(got, want) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _unclipped_norm(weights) -> float:
    return _hand_sgd_delta(weights, None)[1]


@pytest.mark.parametrize("clip_active", [True, False])
def test_fp16_loss_scaled_step_equals_the_fp32_step(initial_weights, restore_policy, clip_active):
    """Under mixed_float16 compile wraps the optimizer in a dynamic LossScaleOptimizer (scale 2**15); the
    update must still be the fp32 one: the clip threshold is scaled with the loss, then unscaled."""
    norm = _unclipped_norm(initial_weights)
    clip = norm / 4 if clip_active else norm * 100
    want, _ = _hand_sgd_delta(initial_weights, clip)  # the plain fp32 step
    keras.config.set_dtype_policy("mixed_float16")
    trainer, delta = _trainer_step(initial_weights, keras.optimizers.SGD(LR), clip)
    assert trainer.net.get_layer("conv").compute_dtype == "float16"  # really computed in fp16
    optimizer = trainer.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.dynamic_scale) == 2.0 ** 15  # finite gradients: no halving, no skipped step
    assert int(optimizer.iterations) == 1
    assert _relative_error(delta, want) < 1e-2
    np.testing.assert_allclose(delta, want, atol=1e-2 * np.abs(want).max())
    if clip_active:  # the update norm is lr x the clip exactly, not lr x clip / scale
        assert np.linalg.norm(delta) == pytest.approx(LR * clip, rel=1e-2)


def test_clipping_scaled_gradients_at_the_unscaled_norm_would_be_caught(initial_weights, restore_policy,
                                                                       monkeypatch):
    """The mistake the test above guards against (clip threshold not multiplied by the loss scale)
    shrinks the update by the loss scale: far outside its tolerance."""
    clip = _unclipped_norm(initial_weights) / 4
    want, _ = _hand_sgd_delta(initial_weights, clip)
    keras.config.set_dtype_policy("mixed_float16")
    monkeypatch.setattr(trainer_module, "_loss_scale", lambda optimizer: tf.constant(1.0))
    _, delta = _trainer_step(initial_weights, keras.optimizers.SGD(LR), clip)
    assert np.linalg.norm(delta) < 1e-3 * np.linalg.norm(want)
    assert _relative_error(delta, want) > 0.99


def test_xla_step_equals_the_plain_step(initial_weights):
    """jit_compile=True (XLA) gives the update of the same clipped step without XLA. SGD, not Adam: Adam's
    first update is about lr x sign(g) whatever the gradient's size, so it would hide a wrong gradient."""
    clip = _unclipped_norm(initial_weights) / 4
    plain_trainer, plain = _trainer_step(initial_weights, keras.optimizers.SGD(LR), clip)
    xla_trainer, xla = _trainer_step(initial_weights, keras.optimizers.SGD(LR), clip, jit_compile=True)
    assert xla_trainer.jit_compile is True and plain_trainer.jit_compile is False
    assert np.linalg.norm(plain) == pytest.approx(LR * clip, rel=1e-5)
    assert _relative_error(xla, plain) < 2e-5
    np.testing.assert_allclose(xla, plain, atol=1e-4 * np.abs(plain).max())


# ------------------------------------------------------------------------------ the training crop

def _bilinear_half_pixel(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of HWC `image` to size x size with half-pixel centres, no antialiasing."""

    def taps(n_in):
        src = (np.arange(size) + 0.5) * n_in / size - 0.5
        src = np.clip(src, 0, n_in - 1)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, src - low

    y0, y1, fy = taps(image.shape[0])
    x0, x1, fx = taps(image.shape[1])
    image = image.astype(np.float64)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.parametrize("row, col, side", [(3, 11, 20), (17, 5, 10), (0, 20, 20)])
def test_crop_and_resize_is_the_numpy_slice_resized(row, col, side):
    """(3, 11, 20) downscales to 16 px, (17, 5, 10) upscales, (0, 20, 20) touches the right edge."""
    image = np.random.default_rng(row * 100 + col).integers(0, 256, (40, 40, 4), dtype=np.uint8)
    got = crop_and_resize(tf.constant(image), tf.constant([row, col, side]), 16).numpy()
    assert got.dtype == np.float32 and got.shape == (16, 16, 4)
    assert got.min() >= 0 and got.max() <= 1
    want = _bilinear_half_pixel(image[row:row + side, col:col + side], 16) / 255
    np.testing.assert_allclose(got, want, atol=1e-5)
    for wrong in (image[col:col + side, row:row + side], image[row + 1:row + side + 1, col:col + side],
                  image[row:row + side, col:col + side - 1]):  # swapped, shifted, one column short
        assert np.abs(_bilinear_half_pixel(wrong, 16) / 255 - got).max() > 0.05


def test_numpy_yardstick_on_hand_worked_resizes():
    """Half-pixel centres: 2 -> 4 samples the input at -0.25, 0.25, 0.75, 1.25 (clamped to the edges);
    4 -> 2 at 0.5 and 2.5 (the mean of each pair)."""
    up = _bilinear_half_pixel(np.array([[0.0, 1.0]])[..., None], 4)[0, :, 0]  # rows 1 -> 4 as well
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1])
    down = _bilinear_half_pixel(np.array([[0.0, 1.0, 2.0, 6.0]] * 4)[..., None], 2)[0, :, 0]
    np.testing.assert_allclose(down, [0.5, 4.0])


# -------------------------------------------------------------------- reference profiles (spec 8)

def test_classifier_profiles_match_spec_8_1():
    """Run A (i768) and run B (i1536) of the spec's table, with the spec's optimiser settings."""
    expected = {
        "i768": dict(backbone="densenet121", weights="torchvision", large=False, img_size=768, crop_size=512,
                     batch_size=48, schedule="Adam55", epochs=55, split="random_ext_folds5"),
        "i1536": dict(backbone="densenet121", weights="torchvision", large=True, img_size=1536,
                      crop_size=1024, batch_size=36, schedule="Adam45", epochs=45, split="noleak_clean"),
    }
    assert set(CLASSIFIER_PROFILES) >= set(expected)
    for profile, values in expected.items():
        config = classifier_config(profile)
        got = dataclasses.asdict(config)
        assert {k: got[k] for k in values} == values, profile
        assert (config.dropout, config.clipnorm, config.lr_scale) == (0.5, 1.0, 1.0)
        assert (config.precision, config.sync_bn, config.jit) == ("fp32", False, False)  # spec 8.1, 6.2
        assert config.run_name == profile and config.seed == 0  # spec 8.1: seeded with 0
        optimizer = adam(config)
        assert optimizer.epsilon == 1e-8 and optimizer.weight_decay is None
        assert float(optimizer.learning_rate) == pytest.approx(3e-4)
        assert learning_rate(config.schedule, config.epochs, config.epochs) == 1e-5  # last epoch
    # noleak_clean is the spec's random_ext_noleak_clean_folds5 folder
    assert FOLD_FAMILIES["noleak_clean"] == "random_ext_noleak_clean_folds5"


def test_metric_profile_matches_spec_8_2():
    config = embedder_config("i768")
    got = dataclasses.asdict(config)
    want = dict(backbone="resnet50", weights="torchvision", img_size=768, batch_size=32, schedule="FaceAdam",
                epochs=50, embedding_dim=512, arc_scale=30.0, arc_margin=0.5, dropout=False, clipnorm=1.0,
                lr_scale=1.0, precision="fp32")
    assert {k: got[k] for k in want} == want
    assert EMBEDDER_PROFILES["i768"]["backbone"] == "resnet50"
    optimizer = adam(config)
    assert optimizer.epsilon == 1e-8 and float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert {learning_rate(config.schedule, e, config.epochs) for e in range(1, 51)} == {1e-4}


# --------------------------------------------------------------- stats.json -> input normalisation

STATS = {"mean": [0.11, 0.22, 0.33, 0.44], "std": [0.05, 0.15, 0.25, 0.35]}


@pytest.fixture(scope="module")
def dataset_copy(prepared, tmp_path_factory):
    root, _ = prepared
    copy = tmp_path_factory.mktemp("stats") / "tiny"
    shutil.copytree(root, copy)
    return copy


@pytest.fixture
def stats_copy(dataset_copy):
    """The copy of the prepared tiny dataset, its meta/stats.json (re)written with STATS."""
    (DataLayout(dataset_copy).meta_dir / "stats.json").write_text(json.dumps(STATS))
    return dataset_copy


def _assert_normalisation(net, mean, std):
    layer = net.get_layer("rgby_norm")
    assert isinstance(layer, keras.layers.Normalization)
    np.testing.assert_allclose(np.ravel(layer.mean), mean, rtol=1e-6)
    np.testing.assert_allclose(np.ravel(layer.variance), np.square(std), rtol=1e-5)
    x = np.random.default_rng(1).random((2, 3, 3, 4)).astype("float32")
    np.testing.assert_allclose(layer(x).numpy(), (x - np.array(mean)) / np.array(std), rtol=1e-4, atol=1e-5)


def _config(data_dir, out):
    return classifier_config("demo", data_dir=str(data_dir), out_dir=str(out), backbone="densenet_1_1_1_1",
                             img_size=32, crop_size=16, batch_size=4)


def test_training_normalises_with_the_datasets_stats(stats_copy, tmp_path):
    layout = DataLayout(stats_copy)
    trainer = build_trainer(_config(stats_copy, tmp_path), layout)
    _assert_normalisation(trainer.net, STATS["mean"], STATS["std"])
    (layout.meta_dir / "stats.json").unlink()
    trainer = build_trainer(_config(stats_copy, tmp_path), layout)
    _assert_normalisation(trainer.net, REFERENCE_MEAN, REFERENCE_STD)


def test_inference_normalises_with_the_run_datasets_stats(stats_copy, tmp_path):
    config = _config(stats_copy, tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    keras.utils.set_random_seed(2)
    saved = build_classifier(config.backbone, weights=None)  # the spec's constants, not STATS
    saved.save_weights(folder / "best.weights.h5")
    model, read = load_classifier(folder)
    assert read.data_dir == str(stats_copy)
    _assert_normalisation(model, STATS["mean"], STATS["std"])
    for got, want in zip(model.get_layer("logits").get_weights(), saved.get_layer("logits").get_weights(),
                         strict=True):
        np.testing.assert_array_equal(got, want)  # the checkpoint was loaded
    (DataLayout(stats_copy).meta_dir / "stats.json").unlink()
    model, _ = load_classifier(folder)
    _assert_normalisation(model, REFERENCE_MEAN, REFERENCE_STD)


# ---------------------------------------------------------------- synchronised BatchNorm, 2 replicas

def _env() -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}


SYNC_BN_TEST = "test_sync_bn_moving_statistics_are_those_of_the_global_batch"


@pytest.fixture(scope="module", autouse=True)
def sync_bn_run(request):
    """The sync-BN subprocess (tests/sync_bn_step.py), started when this module's first test starts so
    that it runs while the other tests do; None when its test is not selected."""
    selected = any(item.name == SYNC_BN_TEST for item in request.session.items)
    process = None
    if selected:
        process = subprocess.Popen([sys.executable, str(HERE / "sync_bn_step.py")], env=_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    if process is not None and process.poll() is None:
        process.kill()
        process.communicate()


def test_sync_bn_moving_statistics_are_those_of_the_global_batch(sync_bn_run):
    """One step on MirroredStrategy over 2 logical CPUs (4 of the 8 images each): a synchronised
    BatchNorm's moving mean / variance are Keras' update (momentum 0.9, from 0 and 1) with the biased
    statistics of all 8 images, as on one device; an unsynchronised one keeps replica 0's half."""
    out, err = sync_bn_run.communicate(timeout=240)
    assert sync_bn_run.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    images = np.array(result["images"], dtype=np.float64)
    single, sync, local = result["single"], result["sync"], result["local"]
    assert (single["replicas"], sync["replicas"], local["replicas"]) == (1, 2, 2)
    assert sync["synchronized"] and not local["synchronized"]
    momentum = sync["momentum"]
    assert momentum == 0.9  # PyTorch's 0.1

    def moving(batch):
        axes = (0, 1, 2)
        return (1 - momentum) * batch.mean(axes), momentum * 1.0 + (1 - momentum) * batch.var(axes)

    mean, variance = moving(images)
    unbiased = momentum + (1 - momentum) * images.var((0, 1, 2), ddof=1)
    assert np.abs(unbiased - variance).min() > 1e-4  # biased vs unbiased is distinguishable here
    for run in (single, sync):
        np.testing.assert_allclose(run["moving_mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run["moving_variance"], variance, rtol=1e-5, atol=1e-6)
    assert sync["loss"] == pytest.approx(single["loss"], rel=1e-5)  # normalised with global statistics

    half_mean, half_variance = moving(images[:4])  # replica 0's share
    np.testing.assert_allclose(local["moving_mean"], half_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(local["moving_variance"], half_variance, rtol=1e-5, atol=1e-6)
    assert np.abs(np.array(local["moving_mean"]) - mean).max() > 0.05
    assert np.abs(np.array(local["moving_variance"]) - variance).max() > 0.05
    assert abs(local["loss"] - single["loss"]) > 1e-2


def test_sync_bn_reaches_every_batchnorm_of_the_classifier():
    """sync_bn=True (adapt's rewrite of the backbone, and the head) synchronises every BatchNorm."""
    net = build_classifier("densenet_1_1_1_1", weights=None, sync_bn=True)
    layers = [layer for layer in _all_layers(net) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(layers) > 4  # the backbone's and the head's
    assert all(layer.synchronized and layer.momentum == 0.9 for layer in layers)
    plain = build_classifier("densenet_1_1_1_1", weights=None)
    assert not any(getattr(layer, "synchronized", False) for layer in _all_layers(plain))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
