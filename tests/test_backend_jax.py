"""The losses, ArcMarginProduct and the classifier under Keras' JAX backend equal TensorFlow's: within 1e-5
(the classifier's logits and gradients in training mode: 1e-4, see that test).

One subprocess (tests/jax_backend_step.py: KERAS_BACKEND=jax, `import tensorflow` blocked) computes
everything from the inputs and weights this TensorFlow process writes; the module-scoped fixture runs it once,
computing TensorFlow's side here meanwhile, and the tests compare the two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from hpa_tf import losses
from hpa_tf.models import ArcMarginProduct
from hpa_tf.models.classifier import build_classifier

HERE = Path(__file__).resolve().parent
C = 28
CLASSIFIER_LOSSES = ["focal_loss", "lovasz_hinge", "symmetric_lovasz", "hard_log_loss", "classifier_loss"]
BACKBONE = "densenet_1_1_1_1"  # the project's small demo DenseNet
TOLERANCE = 1e-5
EDGE = "b120"  # class 0: 30 positives, 90 negatives


def _loss_cases(rng) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """name -> (multi-hot y, logits, dtype the logits are given in): batches of 1 to 120, +-100 logits,
    bfloat16 logits, and (EDGE) a class where hard mining keeps int(0.7 * 90) + 2 = 64 negatives (Python's
    float gives 0.7 * 90 = 62.99.. -> 62, not 7 * 90 // 10 = 63)."""
    cases = {}
    for batch in (1, 7, 48, 120):
        y = (rng.random((batch, C)) < 0.6 * 0.8 ** np.arange(C)).astype(np.float32)
        y[:, 3], y[:, 5] = 0.0, 1.0
        cases[f"b{batch}"] = (y, (3.0 * rng.normal(size=(batch, C))).astype(np.float32), "float32")
    cases[EDGE][0][:, 0] = np.arange(120) < 30
    y7 = cases["b7"][0]
    cases["extreme"] = (y7, np.where(rng.random(y7.shape) < 0.5, 100.0, -100.0).astype(np.float32), "float32")
    y48, z48, _ = cases["b48"]
    cases["bf16"] = (y48, tf.cast(tf.cast(z48, tf.bfloat16), tf.float32).numpy(), "bfloat16")
    return cases


def _arc_inputs(rng, inputs: dict) -> list[str]:
    """Features, labels and a weight for ArcMarginProduct + ArcFace, and raw cosines at ArcFace's edges."""
    features = rng.normal(size=(16, 8)).astype(np.float32)
    layer = ArcMarginProduct(40)
    layer.build(features.shape)
    inputs.update({"arc/features": features, "arc/labels": rng.integers(0, 40, 16),
                   "arc/weight": layer.get_weights()[0]})
    cases = []
    for kind in ("random", "near_one", "below_threshold"):
        cosine = rng.uniform(-1, 1, (16, 40))
        labels = rng.integers(0, 40, 16)
        if kind == "near_one":
            cosine[np.arange(16), labels] = rng.choice([1.0, 0.999999, -1.0, -0.999999], 16)
        elif kind == "below_threshold":  # the linear branch under cos(pi - m)
            cosine[np.arange(16), labels] = rng.uniform(-1.0, -0.88, 16)
        inputs[f"arc_{kind}/cosine"], inputs[f"arc_{kind}/labels"] = cosine.astype(np.float32), labels
        cases.append(f"arc_{kind}")
    return cases


def _classifier_inputs(rng, inputs: dict, work: Path) -> keras.Model:
    """The small classifier (its weights saved for the child) and a batch of 8 images and labels. The
    images differ in brightness and contrast, so the head's BatchNorm over the batch normalises real
    spreads (near-identical random images would amplify float32 rounding through the batch statistics)."""
    keras.utils.set_random_seed(0)
    model = build_classifier(BACKBONE, weights=None, dropout=0.0)
    model.save_weights(work / "classifier.weights.h5")
    shape = (8, 1, 1, 4)
    images = rng.random((8, 64, 64, 4)) ** rng.uniform(0.3, 3, shape) * rng.uniform(0.1, 1, shape)
    inputs["clf/images"] = images.astype(np.float32)
    inputs["clf/labels"] = (rng.random((8, C)) < 0.3).astype(np.float32)
    return model


def _tf_losses(cases, out: dict) -> None:
    for case, (y, z, dtype) in cases.items():
        for name in CLASSIFIER_LOSSES:
            logits = tf.cast(tf.constant(z), dtype)
            with tf.GradientTape() as tape:
                tape.watch(logits)
                value = getattr(losses, name)(y, logits)
            grad = tape.gradient(value, logits)
            key = f"{case}/{name}"
            out[f"{key}/value"], out[f"{key}/grad"] = value.numpy(), tf.cast(grad, "float32").numpy()
            out[f"{key}/value_dtype"], out[f"{key}/grad_dtype"] = value.dtype.name, grad.dtype.name
    y, z, _ = cases[EDGE]
    out[f"{EDGE}/keep"] = losses._hard_mining(tf.constant(y), tf.constant(z))[2].numpy()


def _tf_arcface(inputs: dict, cases: list[str], out: dict) -> None:
    layer = ArcMarginProduct(int(inputs["arc/weight"].shape[0]))
    layer.build(inputs["arc/features"].shape)
    layer.set_weights([inputs["arc/weight"]])
    features = tf.constant(inputs["arc/features"])
    with tf.GradientTape() as tape:
        tape.watch(features)
        cosine = layer(features)
        value = losses.arcface_loss(inputs["arc/labels"], cosine)
    out["arc/cosine"], out["arc/value"] = cosine.numpy(), value.numpy()
    out["arc/grad"] = tape.gradient(value, features).numpy()
    for case in cases:
        cosine = tf.constant(inputs[f"{case}/cosine"])
        with tf.GradientTape() as tape:
            tape.watch(cosine)
            value = losses.arcface_loss(inputs[f"{case}/labels"], cosine)
        out[f"{case}/value"], out[f"{case}/grad"] = value.numpy(), tape.gradient(value, cosine).numpy()


def _tf_classifier(model: keras.Model, images, labels, out: dict) -> None:
    """As the child: in inference and in training mode, logits, loss and gradients; the updated statistics."""
    trainable = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    non_trainable = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    for mode in ("infer", "train"):
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            logits, updated = model.stateless_call(trainable, non_trainable, images, training=mode == "train")
            value = losses.classifier_loss(labels, logits)
        out[f"clf/{mode}/loss"], out[f"clf/{mode}/logits"] = value.numpy(), logits.numpy()
        grads = tape.gradient(value, trainable)
        out.update({f"clf/{mode}/grad/{i}": grad.numpy() for i, grad in enumerate(grads)})
    out.update({f"clf/train/updated/{i}": v.numpy() for i, v in enumerate(updated)})
    out["clf/trainable_paths"] = np.array([v.path for v in model.trainable_variables])


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(TensorFlow's results, JAX's results, the child's JSON line) on the same inputs and weights."""
    work = tmp_path_factory.mktemp("jax")
    rng = np.random.default_rng(27)
    cases = _loss_cases(rng)
    inputs = {f"{case}/{part}": value for case, (y, z, _) in cases.items()
              for part, value in (("y", y), ("z", z))}
    inputs["int07/n"] = np.arange(5000, dtype=np.int32)
    arc_cases = _arc_inputs(rng, inputs)
    model = _classifier_inputs(rng, inputs, work)
    np.savez(work / "inputs.npz", **inputs)
    plan = {"cases": list(cases), "case_dtypes": {case: dtype for case, (_, _, dtype) in cases.items()},
            "edge": EDGE, "losses": CLASSIFIER_LOSSES, "arc_cases": arc_cases, "backbone": BACKBONE}
    (work / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(HERE / "jax_backend_step.py"), str(work)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # TensorFlow's side while the child compiles
        tf_out = {"int07": np.array([int(0.7 * n) for n in inputs["int07/n"]])}
        _tf_losses(cases, tf_out)
        _tf_arcface(inputs, arc_cases, tf_out)
        _tf_classifier(model, inputs["clf/images"], inputs["clf/labels"], tf_out)
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, stderr[-4000:]
    return tf_out, dict(np.load(work / "results.npz")), json.loads(stdout.strip().splitlines()[-1])


def relative_error(got, want, scale=None) -> float:
    """|got - want| / |scale| in the Euclidean norm over the whole tensor (scale: `want`), in float64."""
    want = np.asarray(want, np.float64)
    norm = np.linalg.norm(want if scale is None else scale)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / norm) if norm else 0.0


def _close(both, key: str, scale=None) -> None:
    """JAX's `key` within 1e-5 of TensorFlow's, relative to TensorFlow's norm (or `scale`'s)."""
    tf_out, jax_out, _ = both
    assert jax_out[key].shape == tf_out[key].shape, key
    error = relative_error(jax_out[key], tf_out[key], scale)
    assert error <= TOLERANCE, f"{key}: relative error {error:.2e}"


def test_models_and_losses_load_without_tensorflow(both):
    _, _, report = both
    assert report["backend"] == "jax" and not report["tensorflow_imported"]
    assert {"hpa_tf.losses", "hpa_tf.models.arcface", "hpa_tf.models.backbones", "hpa_tf.models.classifier",
            "hpa_tf.models.embedder"} <= set(report["modules"])


@pytest.mark.parametrize("name", CLASSIFIER_LOSSES)
def test_classifier_losses_and_gradients_match_tensorflow(both, name):
    tf_out, jax_out, _ = both
    cases = sorted({key.split("/")[0] for key in tf_out if key.endswith(f"/{name}/value")})
    assert len(cases) == 6
    for case in cases:
        for part in ("value", "grad"):
            _close(both, f"{case}/{name}/{part}")
        # float32 out whatever comes in; the gradient keeps the logits' dtype (bf16 upcast inside)
        assert str(jax_out[f"{case}/{name}/value_dtype"]) == tf_out[f"{case}/{name}/value_dtype"] == "float32"
        assert str(jax_out[f"{case}/{name}/grad_dtype"]) == tf_out[f"{case}/{name}/grad_dtype"]
    assert tf_out[f"bf16/{name}/grad_dtype"] == "bfloat16"


def test_hard_mining_rounds_0_7_n_as_python_does(both):
    tf_out, jax_out, _ = both
    np.testing.assert_array_equal(jax_out["int07"], tf_out["int07"])
    np.testing.assert_array_equal(losses._python_int_07(tf.range(5000)).numpy(), tf_out["int07"])
    np.testing.assert_array_equal(jax_out[f"{EDGE}/keep"], tf_out[f"{EDGE}/keep"])
    assert tf_out[f"{EDGE}/keep"][0].sum() == 30 + 64


def test_arc_margin_product_and_arcface_match_tensorflow(both):
    tf_out, _, _ = both
    for key in ["arc/cosine", "arc/value", "arc/grad"] + [k for k in tf_out if k.startswith("arc_")]:
        _close(both, key)


@pytest.mark.parametrize("mode, tolerance", [("infer", TOLERANCE), ("train", 10 * TOLERANCE)])
def test_classifier_forward_and_gradient_match_tensorflow(both, mode, tolerance):
    """The loss and the BatchNorm statistics a training pass updates within 1e-5; the logits, and each
    weight's gradient relative to the whole gradient's norm, within `tolerance`. In training mode 10
    BatchNorms on the batch statistics of 8 images amplify float32 rounding (gradients: 6e-6 to 1.6e-5 over
    four input draws, against 4e-7 in inference mode and ~1e-6 for a float64 model), hence 1e-4 there, far
    below what a wrong layer gives."""
    tf_out, jax_out, _ = both
    np.testing.assert_array_equal(jax_out["clf/trainable_paths"], tf_out["clf/trainable_paths"])
    grads = sorted(k for k in tf_out if k.startswith(f"clf/{mode}/grad/"))
    updated = sorted(k for k in tf_out if k.startswith("clf/train/updated/"))
    assert len(grads) == len(tf_out["clf/trainable_paths"]) > 10 and len(updated) > 10
    for key in [f"clf/{mode}/loss", *(updated if mode == "train" else [])]:
        _close(both, key)
    assert relative_error(jax_out[f"clf/{mode}/logits"], tf_out[f"clf/{mode}/logits"]) <= tolerance
    whole = np.concatenate([tf_out[key].ravel() for key in grads])
    errors = {key: relative_error(jax_out[key], tf_out[key], whole) for key in grads}
    assert max(errors.values()) <= tolerance, max(errors.items(), key=lambda item: item[1])
    assert relative_error(np.concatenate([jax_out[key].ravel() for key in grads]), whole) <= tolerance
