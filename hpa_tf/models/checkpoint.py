"""Loading a saved checkpoint into a rebuilt model, with an error that names the file."""

from __future__ import annotations

from pathlib import Path

import keras

from hpa_tf.errors import ModelError


def load_checkpoint(model: keras.Model, checkpoint: Path, retrain: str) -> keras.Model:
    """`model` with the weights of `checkpoint`; a damaged file (h5py's OSError) or another model's weights
    (Keras' ValueError / KeyError) is a ModelError naming the file, `retrain` saying how to make a new one."""
    try:
        model.load_weights(checkpoint)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"checkpoint {checkpoint} does not load ({type(error).__name__}: {error}): it is "
                         f"damaged (e.g. cut short) or not this run's; retrain ({retrain}) or pick another "
                         "checkpoint of the run (NNN.weights.h5)") from error
    return model
