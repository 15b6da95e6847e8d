"""SavedModel export: reload in a TensorFlow-only process, equal outputs, signature names and dtypes as
`saved_model_cli show --all` lists them, and a TF Serving PredictRequest that matches them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from hpa_tf.export import export_classifier, export_embedder, labels_from, next_version, predict_request
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


CROP = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(two small classifiers, their thresholds, the SavedModel folder of their ensemble at crop 32)."""
    keras.utils.set_random_seed(0)
    models = [build_classifier("densenet_1_1_1_1", weights=None) for _ in range(2)]
    thresholds = np.full(28, 0.45, np.float32)
    folder = export_classifier(models, thresholds, tmp_path_factory.mktemp("serving") / "classifier" / "1",
                               crop_size=CROP)
    return models, thresholds, folder


def _d4_views(image: np.ndarray) -> list[np.ndarray]:
    """The 8 elements of the dihedral group of a square HWC image, by numpy rotations and a mirror."""
    return [view for k in range(4) for view in (np.rot90(image, k), np.rot90(image[:, ::-1], k))]


def _ensemble_of_views(models, images: np.ndarray, combine=np.max) -> np.ndarray:
    """Independently: each image resized to CROP (bilinear), its 8 views, sigmoid, `combine` over the
    views, mean over the models."""
    small = tf.image.resize(images * 255.0, [CROP, CROP], "bilinear").numpy() / 255.0
    views = np.stack([view for image in small for view in _d4_views(image)])
    return np.mean([combine((1 / (1 + np.exp(-m.predict(views, verbose=0)))).reshape(len(images), 8, 28),
                            axis=1) for m in models], axis=0)


def test_classifier_ensemble_serves_whole_images_with_tta_and_fold_mean(exported, tmp_path):
    """Whole 48 px images: resized to the crop, the 8 dihedral views combined by max, the fold mean."""
    models, thresholds, folder = exported
    images = np.random.default_rng(0).random((3, 48, 48, 4)).astype(np.float32)
    expected = _ensemble_of_views(models, images)
    out = _reload(folder, images, tmp_path)
    assert set(out) == {"serving_default", "serving_uint8"}
    assert out["serving_default"]["input"] == "float32" and out["serving_uint8"]["input"] == "uint8"
    np.testing.assert_allclose(out["serving_default"]["probabilities"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["serving_default"]["labels"], apply_thresholds(expected, thresholds))
    rounded = np.round(images * 255).astype(np.uint8) / 255.0
    np.testing.assert_allclose(out["serving_uint8"]["probabilities"], _ensemble_of_views(models, rounded),
                               rtol=1e-5, atol=1e-5)
    # the views matter: a single view of the same images gives other probabilities
    single = np.mean([1 / (1 + np.exp(-m.predict(tf.image.resize(images, [CROP, CROP]).numpy(), verbose=0)))
                      for m in models], axis=0)
    assert np.abs(single - expected).max() > 1e-4


def test_mean_combination_and_a_subset_of_views(exported, tmp_path):
    models, thresholds, _ = exported
    models = models[:1]
    folder = export_classifier(models, thresholds, tmp_path / "mean", CROP, combine="mean",
                               views=["default", "flipud"])
    images = np.random.default_rng(4).random((2, CROP, CROP, 4)).astype(np.float32)
    probs = tf.saved_model.load(str(folder)).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
    flipped = images[:, ::-1]  # flipud: rows reversed
    expected = np.mean([np.mean([1 / (1 + np.exp(-m.predict(v, verbose=0))) for v in (images, flipped)],
                                axis=0) for m in models], axis=0)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-5)


def test_versions_count_up_from_the_highest(tmp_path):
    assert next_version(tmp_path / "classifier") == tmp_path / "classifier" / "1"  # no folder yet
    for name in ("1", "3", "assets", "10x"):
        (tmp_path / "classifier" / name).mkdir(parents=True)
    assert next_version(tmp_path / "classifier") == tmp_path / "classifier" / "4"


def test_bad_batches_are_refused_through_the_signature(exported):
    """A loaded signature does not check shapes itself: the model says what is wrong."""
    signature = tf.saved_model.load(str(exported[2])).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"4 channels \(R, G, B, Y\)"):
        signature(images=tf.zeros([2, 16, 16, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        signature(images=tf.zeros([0, 16, 16, 4]))


def test_embedder_serves_equal_outputs(tmp_path):
    """At the run's image size the embedding is the model's; other sizes are resized to it first (the
    TF-only reload in a fresh process is checked on the classifier)."""
    embedder = build_embedder("densenet_1_1_1_1", weights=None)
    folder = export_embedder(embedder, tmp_path / "embedder" / "1", img_size=64)
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    images = np.random.default_rng(2).random((2, 64, 64, 4)).astype(np.float32)
    embedding = signature(images=tf.constant(images))["embedding"].numpy()
    np.testing.assert_allclose(embedding, embedder.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    assert embedding.shape == (2, 512)
    larger = np.random.default_rng(5).random((1, 96, 96, 4)).astype(np.float32)
    served = signature(images=tf.constant(larger))
    expected = embedder.predict(tf.image.resize(larger, [64, 64]).numpy(), verbose=0)
    np.testing.assert_allclose(served["embedding"].numpy(), expected, rtol=1e-4, atol=1e-4)


def _signature_blocks(shown: str) -> dict[str, str]:
    """signature name -> its block of `saved_model_cli show --all` output."""
    parts = re.split(r"signature_def\['([^']+)'\]:", shown.split("Concrete Functions:")[0])
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_saved_model_cli_lists_the_signatures(exported):
    cli = Path(sys.executable).parent / "saved_model_cli"
    assert cli.is_file(), f"saved_model_cli is installed with tensorflow beside {sys.executable}"
    done = subprocess.run([str(cli), "show", "--all", "--dir", str(exported[2])], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = _signature_blocks(done.stdout)
    assert {"serving_default", "serving_uint8"} <= set(blocks)
    for name, dtype in (("serving_default", "DT_FLOAT"), ("serving_uint8", "DT_UINT8")):
        tensors = re.findall(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))",
                             blocks[name])
        assert sorted(tensors) == [("inputs", "images", dtype, "(-1, -1, -1, 4)"),
                                   ("outputs", "labels", "DT_INT32", "(-1, 28)"),
                                   ("outputs", "probabilities", "DT_FLOAT", "(-1, 28)")]
        assert "Method name is: tensorflow/serving/predict" in blocks[name]


def test_predict_request_matches_the_signatures_and_feeds_them(exported):
    """The gRPC request carries the signature's input names and dtypes, and its tensor, decoded as TF
    Serving does, gives the same outputs as the images themselves."""
    loaded = tf.saved_model.load(str(exported[2]))
    images = np.random.default_rng(3).random((2, 32, 32, 4)).astype(np.float32)
    as_uint8 = np.round(images * 255).astype(np.uint8)
    for name, batch in (("serving_default", images), ("serving_uint8", as_uint8)):
        signature = loaded.signatures[name]
        specs = signature.structured_input_signature[1]
        request = predict_request(batch, "classifier", name)
        assert request.model_spec.name == "classifier" and request.model_spec.signature_name == name
        assert set(request.inputs) == set(specs) == {"images"}
        assert request.inputs["images"].dtype == specs["images"].dtype.as_datatype_enum
        assert [d.size for d in request.inputs["images"].tensor_shape.dim] == [2, 32, 32, 4]
        decoded = tf.make_ndarray(request.inputs["images"])
        np.testing.assert_array_equal(signature(images=tf.constant(decoded))["probabilities"].numpy(),
                                      signature(images=tf.constant(batch))["probabilities"].numpy())
