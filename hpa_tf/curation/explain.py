"""Where in an image the classifier sees a label: Grad-CAM (Selvaraju et al., 2017) on the backbone's last
feature map. The gradient of the class's logit with respect to that map, averaged over its positions,
weights each channel; the weighted sum of the channels through a ReLU is the map (16 x 16 for DenseNet121
at 512 px), the mean over the folds. Written here (about 40 lines): tf-keras-vis, the maintained Keras
implementation, fails under Keras 3 on a nested backbone; hpa_tf.viz upsamples and overlays the maps."""

from __future__ import annotations

import threading
from collections import OrderedDict

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.config import ClassifierConfig
from hpa_tf.curation.pool import Query
from hpa_tf.curation.predictions import ImagePredictions, query_input
from hpa_tf.data import pipeline
from hpa_tf.layout import DataLayout

# models.classifier.concat_pool's average pooling: its input is the backbone's last feature map
FEATURE_CONSUMER = "pool_avg"


def feature_model(classifier: keras.Model) -> keras.Model:
    """images -> (the backbone's last feature map, logits): the classifier's own graph, the map as a
    second output."""
    return keras.Model(classifier.inputs, [classifier.get_layer(FEATURE_CONSUMER).input, classifier.output])


def grad_cam(extractor: keras.Model, images: tf.Tensor, classes: list[int]) -> np.ndarray:
    """[len(classes), h, w] float32 Grad-CAM maps of one image [1, H, W, 4] through a feature_model: one
    forward pass, one gradient per class."""
    with tf.GradientTape(persistent=True) as tape:
        features, logits = extractor(images, training=False)
        targets = [tf.cast(logits[0, c], tf.float32) for c in classes]
    features = tf.cast(features, tf.float32)
    maps = []
    for target in targets:
        weights = tf.reduce_mean(tf.cast(tape.gradient(target, features), tf.float32), axis=(1, 2))  # [1, C]
        maps.append(tf.nn.relu(tf.einsum("bhwc,bc->bhw", features, weights))[0].numpy())
    del tape
    return np.stack(maps)


def model_input(layout: DataLayout, query: Query, config: ClassifierConfig) -> tf.Tensor:
    """[1, crop, crop, 4]: the whole image resized to the fold's crop size, as validation (and TTA seed 0's
    first view) shows it to the classifier, so that the map lies over the image as it is."""
    source, frame = query_input(layout, query, config)
    images, _ = next(iter(pipeline.valid_dataset(source, frame, config.crop_size, 1)))
    return images


class Explanations:
    """Grad-CAM maps of images' labels (the folds' mean), computed once per image and label and kept for
    the last `memory` images; one computation at a time."""

    def __init__(self, predictions: ImagePredictions, memory: int = 32):
        self.predictions, self.memory = predictions, memory
        self._maps: OrderedDict[str, dict[int, np.ndarray]] = OrderedDict()
        self._extractors: list[keras.Model] | None = None
        self._lock = threading.Lock()

    def maps(self, query: Query, classes: list[int]) -> dict[int, np.ndarray]:
        """class -> [h, w] map of each of `classes` (those not yet known computed in one pass per fold)."""
        with self._lock:
            known = self._maps.setdefault(query.image_id, {})
            self._maps.move_to_end(query.image_id)
            missing = sorted(set(classes) - known.keys())
            if missing:
                folds = self.predictions.folds
                if self._extractors is None:
                    self._extractors = [feature_model(model) for model, _ in folds]
                layout = self.predictions.runs.data
                cams = [grad_cam(extractor, model_input(layout, query, config), missing)
                        for extractor, (_, config) in zip(self._extractors, folds, strict=True)]
                known.update(zip(missing, np.mean(cams, axis=0), strict=True))
            while len(self._maps) > self.memory:
                self._maps.popitem(last=False)
            return {c: known[c] for c in classes}
