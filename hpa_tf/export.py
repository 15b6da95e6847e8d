"""SavedModels for TensorFlow Serving: DIR/<model_name>/<version>/ with a float32 and a uint8 signature.

classifier: images [N, H, W, 4] (R, G, B, Y) -> `probabilities` [N, 28] (the fold mean of sigmoids) and
`labels` [N, 28] int32 (the fitted thresholds and the top-1 rule, spec 10.2, baked in as constants);
embedder: images -> `embedding` [N, D]. `serving_default` takes float32 in [0, 1], `serving_uint8`
takes uint8 (divided by 255).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.labels import NUM_CLASSES

FLOAT_IMAGES = tf.TensorSpec([None, None, None, 4], tf.float32, name="images")
UINT8_IMAGES = tf.TensorSpec([None, None, None, 4], tf.uint8, name="images")


def labels_from(probs: tf.Tensor, thresholds: tf.Tensor) -> tf.Tensor:
    """Binary labels with the top-1 rule: p > t, and each row's most probable class whenever 1 > t."""
    top = tf.one_hot(tf.argmax(probs, axis=-1), tf.shape(probs)[-1]) > 0
    return tf.cast((probs > thresholds) | (top & (thresholds < 1.0)), tf.int32)


def _write(models: list[keras.Model], outputs, folder: Path) -> Path:
    """Track the models and write both signatures of `outputs(float images)` to `folder`."""
    archive = keras.export.ExportArchive()
    for model in models:
        archive.track(model)
    archive.add_endpoint("serving_default", outputs, input_signature=[FLOAT_IMAGES])
    archive.add_endpoint("serving_uint8", lambda images: outputs(tf.cast(images, tf.float32) / 255.0),
                         input_signature=[UINT8_IMAGES])
    archive.write_out(str(folder), verbose=False)
    return folder


def export_classifier(models: list[keras.Model], thresholds, folder: str | Path) -> Path:
    """The fold ensemble as one SavedModel (probabilities and thresholded labels)."""
    thresholds = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    if thresholds.shape != (NUM_CLASSES,):
        raise ValueError(f"expected {NUM_CLASSES} thresholds, got {thresholds.shape[0]}")
    constant = tf.constant(thresholds)

    def outputs(images):
        probs = tf.add_n([tf.sigmoid(tf.cast(m(images, training=False), tf.float32)) for m in models])
        probs = probs / len(models)
        return {"probabilities": probs, "labels": labels_from(probs, constant)}

    return _write(models, outputs, Path(folder))


def export_embedder(embedder: keras.Model, folder: str | Path) -> Path:
    """The metric-learning embedder as a SavedModel (`embedding`)."""
    return _write([embedder], lambda images: {
        "embedding": tf.cast(embedder(images, training=False), tf.float32)}, Path(folder))


def predict_request(images: np.ndarray, model_name: str, signature_name: str = "serving_default"):
    """A TF Serving gRPC `PredictRequest` for a batch of images (float32 in [0, 1] for serving_default,
    uint8 for serving_uint8); needs `pip install tensorflow-serving-api==2.20.*` (the [serving] extra)."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.asarray(images)))
    return request


def next_version(folder: Path) -> Path:
    """folder/<n+1> after the highest numbered version already there (TF Serving loads the highest)."""
    versions = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if folder.is_dir() else []
    return folder / str(max(versions, default=0) + 1)


def export_runs(folds: list[str | Path], thresholds, metric_run: Path | None,
                out_dir: str | Path) -> list[Path]:
    """Export the classifier fold ensemble (and the metric run's embedder) under out_dir for TF Serving."""
    import json

    from hpa_tf.config import metric_config
    from hpa_tf.data.layout import DataLayout
    from hpa_tf.inference.predict import load_run_model
    from hpa_tf.training.metric import load_embedder

    out_dir = Path(out_dir)
    models = [load_run_model(folder)[0] for folder in folds]
    written = [export_classifier(models, thresholds, next_version(out_dir / "classifier"))]
    if metric_run is not None:
        saved = json.loads((Path(metric_run) / "config.json").read_text())
        config = metric_config(saved["profile"], **{k: v for k, v in saved.items()
                                                    if k not in ("profile", "replicas")})
        embedder = load_embedder(config, DataLayout(saved["data_dir"]), Path(metric_run) / "best.weights.h5")
        written.append(export_embedder(embedder, next_version(out_dir / "embedder")))
    return written
