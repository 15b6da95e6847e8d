"""SavedModel export: reload in a TensorFlow-only process, equal outputs, signature names and dtypes."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.export import export_classifier, export_embedder, labels_from
from hpa_tf.inference.postprocess import apply_thresholds
from hpa_tf.models import build_classifier, build_embedder

RELOAD = """
import json, sys
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = {}
for name, signature in model.signatures.items():
    spec = signature.structured_input_signature[1]["images"]
    batch = images if spec.dtype == tf.float32 else np.round(images * 255).astype(np.uint8)
    result = signature(images=tf.constant(batch))
    out[name] = {"input": spec.dtype.name, **{k: v.numpy().tolist() for k, v in result.items()}}
print(json.dumps(out))
"""


def _reload(folder, images, tmp_path) -> dict:
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", RELOAD, str(folder), str(tmp_path / "images.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_labels_follow_the_top1_rule():
    probs = np.random.default_rng(0).random((20, 28)).astype(np.float32)
    thresholds = np.random.default_rng(1).uniform(0.5, 1.0, 28).astype(np.float32)
    thresholds[3] = 1.0
    np.testing.assert_array_equal(labels_from(tf.constant(probs), tf.constant(thresholds)).numpy(),
                                  apply_thresholds(probs, thresholds))


def test_classifier_ensemble_reloads_with_equal_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    models = [build_classifier("densenet_1_1_1_1", weights=None) for _ in range(2)]
    thresholds = np.full(28, 0.45, np.float32)
    folder = export_classifier(models, thresholds, tmp_path / "classifier" / "1")
    images = np.random.default_rng(0).random((3, 64, 64, 4)).astype(np.float32)
    expected = np.mean([1 / (1 + np.exp(-m.predict(images, verbose=0))) for m in models], axis=0)
    out = _reload(folder, images, tmp_path)
    assert set(out) == {"serving_default", "serving_uint8"}
    assert out["serving_default"]["input"] == "float32" and out["serving_uint8"]["input"] == "uint8"
    np.testing.assert_allclose(out["serving_default"]["probabilities"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["serving_default"]["labels"], apply_thresholds(expected, thresholds))
    rounded = np.round(images * 255).astype(np.uint8) / 255.0
    expected_uint8 = np.mean([1 / (1 + np.exp(-m.predict(rounded, verbose=0))) for m in models], axis=0)
    np.testing.assert_allclose(out["serving_uint8"]["probabilities"], expected_uint8, rtol=1e-5, atol=1e-5)


def test_embedder_reloads_with_equal_outputs(tmp_path):
    embedder = build_embedder("densenet_1_1_1_1", weights=None)
    folder = export_embedder(embedder, tmp_path / "embedder" / "1")
    images = np.random.default_rng(2).random((2, 64, 64, 4)).astype(np.float32)
    out = _reload(folder, images, tmp_path)
    np.testing.assert_allclose(out["serving_default"]["embedding"], embedder.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert np.asarray(out["serving_default"]["embedding"]).shape == (2, 512)
