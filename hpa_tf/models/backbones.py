"""Backbones with a 4-channel RGBY stem (spec 6.1), the "large" variant (spec 6.2) and PyTorch-like
BatchNorm, built from any `keras.applications` model by rewriting its config and copying its weights.

The source model is built as Keras ships it (3 channels, ImageNet weights or random ones); its config is
edited (4-channel input, an extra 2x2/2 max-pool after the stem for "large", BatchNorm momentum 0.9 and
optionally synchronised) and rebuilt, and every weight is copied by layer name. The first convolution
keeps its RGB kernels and gets a copy of the red-input kernel slice as the Y input (no rescaling).
"""

from __future__ import annotations

import copy
import re

import keras
import numpy as np

# The layer after which "large" inserts its extra pool: the stem's max-pool of each known family.
STEM_POOL = {"densenet": "pool1", "resnet": "pool1_pool"}
_MINI_DENSENET = re.compile(r"densenet_(\d+)_(\d+)_(\d+)_(\d+)$")
TORCH_BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1 in Keras' convention (spec 12)


class BackboneError(ValueError):
    """An unknown backbone name or an option the backbone does not support."""


def application_names() -> dict[str, callable]:
    """Lower-case name -> `keras.applications` constructor (densenet121, resnet50, inceptionv3, ...)."""
    return {name.lower(): fn for name, fn in vars(keras.applications).items()
            if callable(fn) and name[:1].isupper()}


def source_model(name: str, weights: str | None = None) -> keras.Model:
    """The 3-channel headless model as Keras builds it (any input size). `densenet_a_b_c_d` is Keras'
    generic DenseNet with those block counts (random weights only): the small demo backbone."""
    mini = _MINI_DENSENET.match(name)
    if mini:
        if weights is not None:
            raise BackboneError(f"{name} has no pretrained weights; use weights=None")
        from keras.src.applications.densenet import DenseNet  # the generic builder is not exported

        return DenseNet([int(b) for b in mini.groups()], include_top=False, weights=None,
                        input_shape=(None, None, 3), name=name)
    apps = application_names()
    if name not in apps:
        raise BackboneError(f"unknown backbone {name!r}; use densenet_A_B_C_D or one of: "
                            + ", ".join(sorted(apps)))
    return apps[name](include_top=False, weights=weights, input_shape=(None, None, 3))


def _family(name: str) -> str:
    return next((f for f in STEM_POOL if name.startswith(f)), "")


def _rename_inputs(node, old: str, new: str):
    """A copy of a serialized node whose references to layer `old` point to `new`."""
    if isinstance(node, dict):
        out = {k: _rename_inputs(v, old, new) for k, v in node.items()}
        history = out.get("keras_history")
        if history and history[0] == old:
            out["keras_history"] = [new, *history[1:]]
        return out
    if isinstance(node, (list, tuple)):
        return [_rename_inputs(v, old, new) for v in node]
    return node


def _insert_pool_after(config: dict, layer_name: str) -> None:
    """Insert a 2x2/2 MaxPooling2D named `<layer>_large` after `layer_name` (spec 6.2 large variant)."""
    names = [layer["name"] for layer in config["layers"]]
    new_name = f"{layer_name}_large"
    pool = {"module": "keras.layers", "class_name": "MaxPooling2D", "registered_name": None,
            "name": new_name,
            "config": {"name": new_name, "pool_size": [2, 2], "strides": [2, 2], "padding": "valid",
                       "trainable": True},
            "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__",
                                         "config": {"shape": [None, None, None, None], "dtype": "float32",
                                                    "keras_history": [layer_name, 0, 0]}}],
                               "kwargs": {}}]}
    for layer in config["layers"]:
        layer["inbound_nodes"] = _rename_inputs(layer["inbound_nodes"], layer_name, new_name)
    config["layers"].insert(names.index(layer_name) + 1, pool)


def adapt(source: keras.Model, channels: int = 4, large: bool = False, sync_bn: bool = False,
          bn_momentum: float = TORCH_BN_MOMENTUM, name: str | None = None) -> keras.Model:
    """A copy of `source` with a `channels`-input stem (extra inputs copy the red kernel slice), the
    large variant's extra pool, and BatchNorm momentum / synchronisation set; weights copied by name."""
    config = copy.deepcopy(source.get_config())
    family = _family(name or source.name)
    if large:
        if family not in STEM_POOL:
            raise BackboneError(f"the large variant is defined for {sorted(STEM_POOL)} backbones, "
                                f"not {name or source.name!r}")
        _insert_pool_after(config, STEM_POOL[family])
    for layer in config["layers"]:
        layer.pop("build_config", None)  # shapes change; layers are built when called
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [*layer["config"]["batch_shape"][:-1], channels]
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = bn_momentum
            layer["config"]["synchronized"] = sync_bn
    model = keras.Model.from_config(config)
    for layer in source.layers:
        weights = layer.get_weights()
        if weights:
            model.get_layer(layer.name).set_weights([_widen(w, channels) for w in weights])
    return model


def _widen(weight: np.ndarray, channels: int) -> np.ndarray:
    """A 3-input conv kernel [kh, kw, 3, out] widened to `channels` inputs by repeating the red slice
    (spec 6.1); every other weight unchanged."""
    if weight.ndim == 4 and weight.shape[2] == 3 and channels != 3:
        extra = np.repeat(weight[:, :, :1], channels - 3, axis=2)
        return np.concatenate([weight, extra], axis=2)
    return weight


def backbone(name: str = "densenet121", weights: str | None = "imagenet", channels: int = 4,
             large: bool = False, sync_bn: bool = False) -> keras.Model:
    """Headless `name` backbone taking [N, H, W, channels] and returning its last feature map."""
    return adapt(source_model(name, weights), channels=channels, large=large, sync_bn=sync_bn, name=name)
