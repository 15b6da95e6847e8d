"""SavedModels for TensorFlow Serving: DIR/<model_name>/<version>/ with a float32 and a uint8 signature.

classifier: whole images [N, H, W, 4] (R, G, B, Y) of any size -> resized to the run's crop size (as
validation and TTA seed 0 do, spec 5.1), the run's dihedral TTA views combined by its max or mean, the
fold mean (spec 9.2-9.3) -> `probabilities` [N, 28] and `labels` [N, 28] int32 (thresholds fitted on that
same computation and the top-1 rule, spec 10.2, baked in as constants); embedder: whole images resized to
the metric run's image size -> `embedding` [N, D]. `serving_default` takes float32 in [0, 1],
`serving_uint8` takes uint8, converted exactly as the input pipeline converts the cache images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.atomic import write_folder_atomic
from hpa_tf.config import ClassifierConfig, EmbedderConfig, InferenceConfig
from hpa_tf.data.pipeline import dihedral
from hpa_tf.errors import InferenceError
from hpa_tf.inference.predict import combined_probabilities, view_indices
from hpa_tf.inference.runs import resolve
from hpa_tf.inference.submission import serving_record
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models.loading import load_classifier, load_embedder

log = logging.getLogger(__name__)
FLOAT_IMAGES = tf.TensorSpec([None, None, None, 4], tf.float32, name="images")
UINT8_IMAGES = tf.TensorSpec([None, None, None, 4], tf.uint8, name="images")


def labels_from(probs: tf.Tensor, thresholds: tf.Tensor) -> tf.Tensor:
    """Binary labels with the top-1 rule: p > t, and each row's most probable class whenever 1 > t."""
    top = tf.one_hot(tf.argmax(probs, axis=-1), tf.shape(probs)[-1]) > 0
    return tf.cast((probs > thresholds) | (top & (thresholds < 1.0)), tf.int32)


def checked(images: tf.Tensor) -> tf.Tensor:
    """`images` once they are a non-empty [N, H, W, 4] batch; else an InvalidArgumentError saying so (a
    loaded signature does not check shapes itself)."""
    shape = tf.shape(images)
    checks = [tf.debugging.assert_equal(tf.rank(images), 4, message="images must be [N, H, W, 4]"),
              tf.debugging.assert_equal(shape[-1], 4, message="images must have 4 channels (R, G, B, Y)"),
              tf.debugging.assert_positive(shape[0], message="empty batch: send at least one image")]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def resized(images: tf.Tensor, size: int) -> tf.Tensor:
    """Float 0-255 images [N, H, W, C] resized (bilinear, as the input pipeline) to size x size, in [0, 1]."""
    shape = tf.shape(images)
    same = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
    images = tf.cond(same, lambda: images, lambda: tf.image.resize(images, [size, size], "bilinear"))
    return tf.clip_by_value(images / 255.0, 0.0, 1.0)


def _write(models: list[keras.Model], outputs, folder: Path) -> Path:
    """Track the models and write both signatures of `outputs(float 0-255 images)` to `folder`."""
    archive = keras.export.ExportArchive()
    for model in models:
        archive.track(model)
    archive.add_endpoint("serving_default", lambda images: outputs(checked(images) * 255.0),
                         input_signature=[FLOAT_IMAGES])
    archive.add_endpoint("serving_uint8", lambda images: outputs(tf.cast(checked(images), tf.float32)),
                         input_signature=[UINT8_IMAGES])
    # Built beside the version folder and renamed into place: TF Serving never sees a half-written version.
    return write_folder_atomic(folder, lambda temporary: archive.write_out(str(temporary), verbose=False))


def export_classifier(models: list[keras.Model], thresholds, folder: str | Path, crop_size: int,
                      combine: str = "max", views: list[str] | None = None) -> Path:
    """The fold ensemble as one SavedModel: whole images resized to `crop_size`, the dihedral `views`
    (default all 8) combined by `combine`, the fold mean, and labels at `thresholds` (top-1 rule)."""
    thresholds = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    if thresholds.shape != (NUM_CLASSES,):
        raise InferenceError(f"expected {NUM_CLASSES} thresholds, got {thresholds.shape[0]}")
    constant = tf.constant(thresholds)
    chosen = view_indices((0,), views)

    def outputs(images):
        whole = resized(images, crop_size)
        all_views = tf.stack([dihedral(whole, k) for k in chosen], axis=1)
        probs = tf.add_n([combined_probabilities(m, all_views, combine) for m in models]) / len(models)
        return {"probabilities": probs, "labels": labels_from(probs, constant)}

    return _write(models, outputs, Path(folder))


def export_embedder(embedder: keras.Model, folder: str | Path, img_size: int) -> Path:
    """The metric-learning embedder as a SavedModel (`embedding` of whole images resized to img_size)."""
    return _write([embedder], lambda images: {
        "embedding": tf.cast(embedder(resized(images, img_size), training=False), tf.float32)}, Path(folder))


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


def export_runs(folds: list[str | Path], serving: dict, embedder_run: str | Path | None,
                out_dir: str | Path) -> list[Path]:
    """Export the classifier fold ensemble (with `serving`'s thresholds, TTA combination and views: what
    `infer.py --submission` fitted, see submission.serving_record) and the metric run's embedder under
    out_dir for TF Serving."""
    out_dir = Path(out_dir)
    runs = [load_classifier(folder) for folder in folds]
    crop_sizes = {config.crop_size for _, config in runs}
    if len(crop_sizes) != 1:
        raise InferenceError(f"the folds were trained at different crop sizes {sorted(crop_sizes)}: export "
                             "them separately (--folds)")
    written = [export_classifier([model for model, _ in runs], serving["thresholds"],
                                 next_version(out_dir / "classifier"), crop_sizes.pop(),
                                 serving["combine"], serving["views"])]
    if embedder_run is not None:
        embedder, config = load_embedder(embedder_run)
        written.append(export_embedder(embedder, next_version(out_dir / "embedder"), config.img_size))
    return written


def run_export(config: InferenceConfig, out_dir: str | Path) -> list[Path]:
    """`infer.py --export DIR`: the trained folds and the metric run of `config` as SavedModels (labels at
    the thresholds of the last --submission to config.output, OUTPUT.serving.json), each also as a
    bioimage.io model resource in DIR/bioimageio/<model>/<version>."""
    from hpa_tf.bioimage import classifier_resource, embedder_resource, imported, write_resource

    runs = resolve(config, need_folds=True)
    written = export_runs([fold.root for fold in runs.folds], serving_record(config.output),
                          runs.embedder.root if runs.embedder else None, out_dir)
    classifier = runs.folds[0].read_config(ClassifierConfig)
    resources = [imported(classifier_resource(classifier.crop_size, len(runs.folds)), runs.folds[0])]
    if runs.embedder is not None:
        embedder = runs.embedder.read_config(EmbedderConfig)
        resource = embedder_resource(embedder.img_size, embedder.embedding_dim)
        resources.append(imported(resource, runs.embedder))
    for folder, resource in zip(written, resources, strict=True):
        log.info(f"SavedModel written to {folder}")
        write_resource(folder, resource, runs.data,
                       Path(out_dir) / "bioimageio" / folder.parent.name / folder.name)
    return written
