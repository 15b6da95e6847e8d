"""torchvision's DenseNet and ResNet50 as Keras computes them, and their weights by torch's names.

The original's networks are torchvision's (spec 6.1-6.4). keras.applications' DenseNets are the same
function (with torch's BatchNorm epsilon); keras.applications' ResNet50 is not (it strides on the first
1x1 and has convolution biases), so ResNet50 is keras-hub's `ResNetBackbone`, which strides on the 3x3 like
torchvision. Each Keras layer of these networks is named after one torch module (`torch_module`), which is
how a torch state dict (torchvision's ImageNet files, the original's checkpoints) is loaded into them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras
import numpy as np

from hpa_tf.errors import ModelError
from hpa_tf.models.torch_files import CheckpointError, read_state_dict

TORCHVISION_RESNETS = {"resnet50": (3, 4, 6, 3)}  # keras-hub's torchvision-exact ResNet (bottleneck blocks)
TORCHVISION = "torchvision"  # --weights torchvision: the ImageNet weights the original started from
# Where torchvision's ImageNet weights are fetched from: timm's copies (`*.tv_in1k`, torchvision's keys).
TIMM_URL = "https://huggingface.co/timm/{name}.tv_in1k/resolve/main/model.safetensors"
TORCHVISION_FILES = {"densenet121": "densenet121-a639ec97.pth", "resnet50": "resnet50-19c8e357.pth"}
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".safetensors")

_DENSE_LAYER = re.compile(r"conv(\d)_block(\d+)_(\d)_(conv|bn)$")
_DENSE_PARTS = {("0", "bn"): "norm1", ("1", "conv"): "conv1", ("1", "bn"): "norm2", ("2", "conv"): "conv2"}
_TRANSITION = re.compile(r"pool(\d)_(conv|bn)$")
_RESNET_BLOCK = re.compile(r"stack(\d)_block(\d+)_(\d)_(conv|bn)$")
# Old torchvision DenseNet files (densenet121-a639ec97.pth) name layer parts `norm.1`, `conv.2`, ...
_OLD_DENSE_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.(\d)\.")


def is_torchvision_net(name: str) -> bool:
    """Whether the backbone `name` computes a torchvision network (DenseNets and ResNet50)."""
    return name in TORCHVISION_RESNETS or name.startswith("densenet")


def is_torchvision_weights(weights: str | None) -> bool:
    """Whether --weights asks for torchvision's weights: `torchvision`, or a torch state-dict file (.pth,
    .safetensors, ...) with torchvision's keys."""
    if weights is None:
        return False
    return weights == TORCHVISION or Path(str(weights)).suffix.lower() in TORCH_SUFFIXES


def torchvision_resnet(name: str) -> keras.Model:
    """The 3-channel headless torchvision ResNet `name` (keras-hub's ResNetBackbone), random weights, as a
    plain functional model whose config can be rewritten like keras.applications'."""
    import keras_hub

    net = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=list(TORCHVISION_RESNETS[name]), stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block", image_shape=(None, None, 3))
    return keras.Model(net.input, net.output, name=name)


def torch_module(layer_name: str, family: str) -> str | None:
    """The torchvision module (state-dict prefix) that the Keras layer `layer_name` of a `family`
    ("densenet" or "resnet") backbone computes; None for layers without a torch counterpart."""
    if family == "densenet":
        fixed = {"conv1_conv": "features.conv0", "conv1_bn": "features.norm0", "bn": "features.norm5"}
        if layer_name in fixed:
            return fixed[layer_name]
        if match := _DENSE_LAYER.match(layer_name):
            block, layer, part, kind = match.groups()
            return f"features.denseblock{int(block) - 1}.denselayer{layer}.{_DENSE_PARTS[part, kind]}"
        if match := _TRANSITION.match(layer_name):
            block, kind = match.groups()
            return f"features.transition{int(block) - 1}.{'norm' if kind == 'bn' else 'conv'}"
        return None
    fixed = {"conv1_conv": "conv1", "conv1_bn": "bn1"}
    if layer_name in fixed:
        return fixed[layer_name]
    if match := _RESNET_BLOCK.match(layer_name):
        stack, block, part, kind = match.groups()
        where = f"layer{int(stack) + 1}.{block}"
        if part == "0":
            return f"{where}.downsample.{0 if kind == 'conv' else 1}"
        return f"{where}.{kind}{part}"
    return None


def backbone_modules(model: keras.Model, family: str, prefix: str = "") -> dict[str, str]:
    """Keras layer name -> torch module name (`prefix` + torchvision's) for every layer of a backbone
    that holds weights."""
    names = {}
    for layer in model.layers:
        module = torch_module(layer.name, family)
        if module is not None and layer.weights:
            names[layer.name] = prefix + module
    return names


def _torch_keys(layer: keras.layers.Layer, module: str) -> list[str]:
    """The state-dict keys of `layer`'s weights in Keras' order."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [f"{module}.{part}" for part in ("weight", "bias", "running_mean", "running_var")]
    return [f"{module}.weight", f"{module}.bias"][:len(layer.weights)]


def torch_keys(model: keras.Model, modules: dict[str, str]) -> list[str]:
    """Every state-dict key that load_torch_weights reads for `modules` (Keras name -> torch module)."""
    return [key for name, module in modules.items() for key in _torch_keys(model.get_layer(name), module)]


def _to_keras(layer: keras.layers.Layer, tensor: np.ndarray, index: int) -> np.ndarray:
    """A torch tensor in Keras' layout: conv kernels [out, in, kh, kw] -> [kh, kw, in, out], Linear
    weights transposed; biases, BatchNorm vectors and ArcFace's [classes, D] weight as they are."""
    if index == 0 and isinstance(layer, keras.layers.Conv2D):
        return np.transpose(tensor, (2, 3, 1, 0))
    if index == 0 and isinstance(layer, keras.layers.Dense):
        return tensor.T
    return tensor


def load_torch_weights(model: keras.Model, modules: dict[str, str], tensors: dict[str, np.ndarray],
                       source: str | Path) -> set[str]:
    """Set each layer of `modules` (Keras name -> torch module) from the state dict `tensors`; returns
    the keys used. CheckpointError naming `source` for a missing key or a shape that does not fit."""
    used = set()
    for layer_name, module in modules.items():
        layer = model.get_layer(layer_name)
        current = layer.get_weights()
        values = []
        for index, key in enumerate(_torch_keys(layer, module)):
            if key not in tensors:
                raise CheckpointError(f"{source}: no tensor {key!r} (for layer {layer_name})")
            value = _to_keras(layer, np.asarray(tensors[key], np.float32), index)
            if value.shape != current[index].shape:
                expected = _to_keras(layer, np.empty(current[index].shape), index).shape  # torch layout
                raise CheckpointError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, the model "
                                      f"expects {tuple(expected)}")
            values.append(value)
            used.add(key)
        layer.set_weights(values)
    return used


def renamed_old_densenet_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision's old DenseNet names (`denselayer1.norm.1.weight`) as today's (`denselayer1.norm1`)."""
    return {_OLD_DENSE_KEY.sub(r"\1\2.", key): value for key, value in tensors.items()}


def imagenet_file(name: str) -> Path:
    """torchvision's ImageNet weights of `name` (timm's `NAME.tv_in1k` safetensors), downloaded once into
    Keras' cache; ModelError saying how to get them when that fails (offline)."""
    url = TIMM_URL.format(name=name)
    fname = f"{name}.tv_in1k.safetensors"
    cache = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()  # Keras' own cache folder
    try:
        return Path(keras.utils.get_file(fname=fname, origin=url, cache_dir=str(cache),
                                         cache_subdir="models"))
    except Exception as error:  # get_file raises a bare Exception for HTTP and URL errors
        original = TORCHVISION_FILES.get(name, f"torchvision's {name} ImageNet file")
        raise ModelError(f"torchvision's ImageNet weights for {name} could not be downloaded from {url} "
                         f"({error}); download that file (or {original}) where there is internet and "
                         f"pass --weights PATH, or put it at {cache / 'models' / fname}") from None


def load_imagenet(model: keras.Model, name: str, weights: str) -> keras.Model:
    """The 3-channel torchvision network `model` (backbone `name`) with torchvision's ImageNet weights:
    --weights torchvision (fetched once) or a .pth / .safetensors file with torchvision's keys."""
    path = imagenet_file(name) if weights == TORCHVISION else Path(weights)
    tensors = renamed_old_densenet_keys(read_state_dict(path))
    family = "resnet" if name in TORCHVISION_RESNETS else "densenet"
    load_torch_weights(model, backbone_modules(model, family), tensors, path)
    return model
