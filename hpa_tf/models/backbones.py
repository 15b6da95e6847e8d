"""Backbones with a 4-channel RGBY stem (spec 6.1), the "large" variant (spec 6.2) and PyTorch-like
BatchNorm, built from a 3-channel source model by rewriting its config and copying its weights.

The sources: torchvision's networks for the original's backbones (DenseNets from keras.applications, ResNet50
from keras-hub; torchvision_nets), any other `keras.applications` model as Keras ships it. The source is
built with 3 channels (torchvision's or Keras' ImageNet weights, or random ones); its config is edited
(4-channel input, an extra 2x2/2 max-pool after the stem for "large", BatchNorm momentum 0.9, torch's
epsilon for torchvision's networks, optionally synchronised) and rebuilt, and every weight is copied by
layer name. The first convolution keeps its RGB kernels and gets a copy of the red-input kernel slice as
the Y input (no rescaling).

Every adapted backbone takes torch-convention input (RGB z-scored with ImageNet's mean and std, as the
original's torchvision weights expect, plus Y). For Keras' weights of other families a fixed per-pixel
affine layer in front converts it to the convention of those weights, read off the family's
`preprocess_input` (caffe BGR 0-255 minus the mean for VGG, [-1, 1] for Inception, 0-255 for families that
normalise inside); Y is scaled like red, without an offset, so that Y = 0 adds nothing.
"""

from __future__ import annotations

import copy
import importlib
import re
import types

import keras
import numpy as np

from hpa_tf.errors import ModelError
from hpa_tf.models.torchvision_nets import (
    TORCHVISION,
    TORCHVISION_RESNETS,
    is_torchvision_net,
    is_torchvision_weights,
    load_imagenet,
    torchvision_resnet,
)

# The layer after which "large" inserts its extra pool: the stem's max-pool of each known family.
STEM_POOL = {"densenet": "pool1", "resnet": "pool1_pool"}
_MINI_DENSENET = re.compile(r"densenet_(\d+)_(\d+)_(\d+)_(\d+)$")
TORCH_BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1 in Keras' convention (spec 12)
TORCH_BN_EPSILON = 1e-5  # PyTorch's default (keras.applications' DenseNet has 1.001e-5)
# The torch convention the adapted backbones take (torchvision's ImageNet normalisation of RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVENTION_LAYER = "input_convention"


class BackboneError(ModelError):
    """An unknown backbone name or an option the backbone does not support."""


def application_names() -> dict[str, callable]:
    """Lower-case name -> `keras.applications` constructor (densenet121, resnet50, inceptionv3, ...)."""
    return {name.lower(): fn for name, fn in vars(keras.applications).items()
            if callable(fn) and name[:1].isupper()}


def check_backbone(name: str, weights: str | None = None) -> None:
    """BackboneError unless `name` is a keras.applications model or densenet_A_B_C_D (random weights
    only) and `weights` fit it: checked before any data work."""
    if _MINI_DENSENET.match(name):
        if weights is not None:
            raise BackboneError(f"{name} has no pretrained weights; use weights=None (--weights none)")
        return
    apps = application_names()
    if name not in apps:
        raise BackboneError(f"unknown backbone {name!r}; use densenet_A_B_C_D or one of: "
                            + ", ".join(sorted(apps)))
    torchvision_weights = is_torchvision_weights(weights)
    if torchvision_weights and not is_torchvision_net(name):
        raise BackboneError(f"--weights {weights}: torchvision's weights are for densenet121/169/201 and "
                            f"resnet50, not {name}; use --weights imagenet (Keras' weights) or none")
    if name in TORCHVISION_RESNETS and weights is not None and not torchvision_weights:
        raise BackboneError(f"{name} is torchvision's network (stride on the 3x3, no convolution bias), "
                            f"which Keras' ImageNet weights do not fit; use --weights torchvision, a "
                            ".pth / .safetensors file with torchvision's keys, or none")
    torch_to_source(name)  # refuses the families that normalise inside


def source_model(name: str, weights: str | None = None) -> keras.Model:
    """The 3-channel headless model (any input size): torchvision's network for the original's backbones
    (`weights` torchvision, a torch file, Keras' imagenet for DenseNets, or None), else as Keras builds it.
    `densenet_a_b_c_d` is Keras' generic DenseNet with those block counts (random weights only): the small
    demo backbone."""
    check_backbone(name, weights)
    mini = _MINI_DENSENET.match(name)
    if mini:
        from keras.src.applications.densenet import DenseNet  # the generic builder is not exported

        return DenseNet([int(b) for b in mini.groups()], include_top=False, weights=None,
                        input_shape=(None, None, 3), name=name)
    torchvision_weights = is_torchvision_weights(weights)
    if name in TORCHVISION_RESNETS:
        model = torchvision_resnet(name)
    else:
        model = application_names()[name](include_top=False, weights=None if torchvision_weights else weights,
                                          input_shape=(None, None, 3))
    return load_imagenet(model, name, weights) if torchvision_weights else model


def preprocess_function(name: str):
    """The `preprocess_input` of the `keras.applications` module that holds the constructor `name`
    (densenet_A_B_C_D: DenseNet's)."""
    if _MINI_DENSENET.match(name):
        return keras.applications.densenet.preprocess_input
    constructor = application_names().get(name)
    for module in vars(keras.applications).values():
        if isinstance(module, types.ModuleType) and constructor in vars(module).values() \
                and hasattr(module, "preprocess_input"):
            return module.preprocess_input
    # Some public modules do not list their constructors (mobilenet_v3): the module that defines it.
    defining = importlib.import_module(constructor.__module__) if constructor is not None else None
    if hasattr(defining, "preprocess_input"):
        return defining.preprocess_input
    raise BackboneError(f"no keras.applications module with preprocess_input holds {name!r}")


def torch_to_source(name: str, channels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(kernel [channels, channels], bias [channels]) of the affine map from torch-convention input (z of
    R, G, B, then extra channels) to what the source's weights were trained on: out = in @ kernel + bias.

    The family's preprocess_input is affine per channel (possibly reordering them), so probing it with
    black and with one channel at 255 gives its matrix A and offset b; then out_rgb = A (255 (std z +
    mean)) + b. Extra channels are scaled as red is and get no offset (the Y kernel copies red's).
    torchvision's networks take torch's convention itself: the identity."""
    if is_torchvision_net(name):
        return np.eye(channels), np.zeros(channels)
    preprocess = preprocess_function(name)
    probes = np.zeros((4, 1, 1, 3), np.float32)
    probes[1:, 0, 0] = 255.0 * np.eye(3)
    out = np.asarray(preprocess(probes.copy()), np.float64).reshape(4, 3)
    bias_rgb, matrix = out[0], (out[1:] - out[0]) / 255.0  # matrix[i, j]: input channel i -> output j
    if np.allclose(matrix, np.eye(3)) and np.allclose(bias_rgb, 0):
        raise BackboneError(f"{name} normalises its input inside the model (its preprocess_input does "
                            "nothing): that per-channel normalisation would give the Y input an offset, so "
                            "a 4-channel stem is not built for it; use a family whose preprocessing is "
                            "outside the model (densenet121, resnet50, inceptionv3, xception, ...)")
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    kernel = np.zeros((channels, channels))
    kernel[:3, :3] = 255.0 * std[:, None] * matrix
    kernel[3:, 3:] = np.eye(channels - 3) * kernel[0, red_slot(kernel)]
    bias = np.zeros(channels)
    bias[:3] = 255.0 * mean @ matrix + bias_rgb
    return kernel, bias


def red_slot(kernel: np.ndarray) -> int:
    """The source input channel that reads red (2 for BGR weights): where the red row of the map goes."""
    return int(np.argmax(np.abs(kernel[0, :3])))


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


def _input_name(config: dict) -> str:
    """The input layer's name of a single-input functional config (listed flat or nested)."""
    first = config["input_layers"]
    return first[0][0] if isinstance(first[0], list) else first[0]


def _insert_after(config: dict, layer_name: str, class_name: str, new_name: str, layer_config: dict) -> None:
    """Insert a `keras.layers.<class_name>` named `new_name` after `layer_name`, which fed its consumers."""
    names = [layer["name"] for layer in config["layers"]]
    layer = {"module": "keras.layers", "class_name": class_name, "registered_name": None, "name": new_name,
             "config": {"name": new_name, "trainable": True, **layer_config},
             "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__",
                                          "config": {"shape": [None, None, None, None], "dtype": "float32",
                                                     "keras_history": [layer_name, 0, 0]}}],
                                "kwargs": {}}]}
    for other in config["layers"]:
        other["inbound_nodes"] = _rename_inputs(other["inbound_nodes"], layer_name, new_name)
    config["layers"].insert(names.index(layer_name) + 1, layer)


def adapt(source: keras.Model, channels: int = 4, large: bool = False, sync_bn: bool = False,
          bn_momentum: float = TORCH_BN_MOMENTUM, name: str | None = None) -> keras.Model:
    """A copy of `source` taking torch-convention input (converted in front to the source weights' own
    convention), with a `channels`-input stem (extra inputs copy the kernel slice that reads red), the
    large variant's extra pool, and BatchNorm momentum / synchronisation set; weights copied by name."""
    config = copy.deepcopy(source.get_config())
    name = name or source.name
    family = _family(name)
    if large:
        if family not in STEM_POOL:
            raise BackboneError(f"the large variant is defined for {sorted(STEM_POOL)} backbones, "
                                f"not {name!r}")
        _insert_after(config, STEM_POOL[family], "MaxPooling2D", f"{STEM_POOL[family]}_large",
                      {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"})
    kernel, bias = torch_to_source(name, channels)
    convert = not (np.allclose(kernel, np.eye(channels), atol=1e-6) and np.allclose(bias, 0, atol=1e-6))
    if convert:  # a fixed Dense on the channel axis: out = in @ kernel + bias per pixel
        _insert_after(config, _input_name(config), "Dense", CONVENTION_LAYER,
                      {"units": channels, "use_bias": True, "trainable": False, "dtype": "float32"})
    for layer in config["layers"]:
        layer.pop("build_config", None)  # shapes change; layers are built when called
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [*layer["config"]["batch_shape"][:-1], channels]
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = bn_momentum
            layer["config"]["synchronized"] = sync_bn
            if is_torchvision_net(name):
                layer["config"]["epsilon"] = TORCH_BN_EPSILON
    model = keras.Model.from_config(config)
    if convert:
        model.get_layer(CONVENTION_LAYER).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    red = red_slot(kernel)
    for layer in source.layers:
        weights = layer.get_weights()
        if weights:
            model.get_layer(layer.name).set_weights([_widen(w, channels, red) for w in weights])
    return model


def _widen(weight: np.ndarray, channels: int, red: int = 0) -> np.ndarray:
    """A 3-input conv kernel [kh, kw, 3, out] widened to `channels` inputs by repeating the slice that
    reads red (index `red` of the source's input order, spec 6.1); every other weight unchanged."""
    if weight.ndim == 4 and weight.shape[2] == 3 and channels != 3:
        extra = np.repeat(weight[:, :, red:red + 1], channels - 3, axis=2)
        return np.concatenate([weight, extra], axis=2)
    return weight


def backbone(name: str = "densenet121", weights: str | None = TORCHVISION, channels: int = 4,
             large: bool = False, sync_bn: bool = False) -> keras.Model:
    """Headless `name` backbone taking [N, H, W, channels] and returning its last feature map."""
    return adapt(source_model(name, weights), channels=channels, large=large, sync_bn=sync_bn, name=name)
