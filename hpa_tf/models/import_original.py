"""`hpa-import-original CHECKPOINT --arch ARCH --out RUN_DIR` (`python -m hpa_tf.models.import_original`):
one of the original's trained checkpoints (its `final.pth` / `NNN.pth`) as a run folder that inference,
export, the galleries and the web page use like a trained one (spec 6.2, 6.4, 9.1).

The original's modules register the backbone twice (`backbone.features.conv0` is also `conv1.0`, ...);
the backbone's own names are read and the aliases skipped, as are modules its forward never uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import keras

from hpa_tf.atomic import file_sha256, write_folder_atomic, write_json_atomic
from hpa_tf.config import classifier_config, embedder_config
from hpa_tf.errors import RunFolderError
from hpa_tf.layout import RunLayout
from hpa_tf.models.loading import build_run_model
from hpa_tf.models.torch_files import CheckpointError, read_checkpoint
from hpa_tf.models.torchvision_nets import backbone_modules, load_torch_weights, torch_keys
from hpa_tf.output import prog, run_or_exit, setup_logging

log = logging.getLogger("hpa_tf.import")

ENCODERS = tuple(f"encoder{k}." for k in range(1, 6))


@dataclass(frozen=True)
class OriginalArch:
    """One of the original's model classes: which profile it was trained with and where its weights sit."""

    kind: str  # classifier or embedder
    profile: str
    backbone: str
    prefix: str  # the backbone's own module in the checkpoint
    head: dict[str, str]  # Keras layer -> the original's module
    skipped: tuple[str, ...]  # aliases of backbone modules, and modules the forward never uses
    large: bool = False


_DENSENET_HEAD = {"head_bn1": "bn1", "head_fc1": "fc1", "head_bn2": "bn2", "logits": "logit"}
_DENSENET_SKIPPED = ("conv1.", *ENCODERS, "backbone.classifier.")
ARCHS = {
    "class_densenet121_dropout": OriginalArch("classifier", "i768", "densenet121", "backbone.",
                                              _DENSENET_HEAD, _DENSENET_SKIPPED),
    "class_densenet121_large_dropout": OriginalArch("classifier", "i1536", "densenet121", "backbone.",
                                                    _DENSENET_HEAD, _DENSENET_SKIPPED, large=True),
    "class_resnet50_dropout": OriginalArch(
        "embedder", "i768", "resnet50", "resnet.",
        {"embed_bn1": "bn1", "embed_fc1": "fc1", "embed_bn2": "bn2", "embed_fc2": "fc2", "embedding": "bn3"},
        (*ENCODERS, "resnet.fc.", "logit.")),
}
ARC_MARGIN = "arc_margin_product.weight"


def _config(arch: OriginalArch, tensors: dict, path: Path):
    """The run's typed config: the profile the original trained it with, no dataset, spec 4's constants
    (the classifier's forward applies them) or the checkpoint's ArcFace class count."""
    if arch.kind == "classifier":
        return classifier_config(arch.profile, weights="none", reference_stats=True, large=arch.large)
    if ARC_MARGIN not in tensors:
        raise CheckpointError(f"{path} is not a class_resnet50_dropout checkpoint: no {ARC_MARGIN}")
    return embedder_config(arch.profile, weights="none", arcface_classes=int(tensors[ARC_MARGIN].shape[0]))


def _parts(model: keras.Model, arch: OriginalArch) -> list[tuple[keras.Model, dict[str, str]]]:
    """(model part, Keras layer -> checkpoint module) of the backbone, the head and ArcFace's weight."""
    family = "densenet" if arch.backbone.startswith("densenet") else "resnet"
    if arch.kind == "classifier":
        net = model.get_layer(arch.backbone)
        return [(net, backbone_modules(net, family, arch.prefix)), (model, arch.head)]
    embedder = model.get_layer("embedder")
    net = embedder.get_layer(arch.backbone)
    return [(net, backbone_modules(net, family, arch.prefix)), (embedder, arch.head),
            (model, {"arc_margin": ARC_MARGIN.rsplit(".", 1)[0]})]


def original_model(checkpoint: str | Path, arch_name: str) -> tuple[keras.Model, object, dict]:
    """(network with the checkpoint's weights, its typed config, the checkpoint's info: epoch, best_epoch,
    best_score); CheckpointError naming the file and the first missing / unexpected keys or a shape."""
    arch = ARCHS[arch_name]
    path = Path(checkpoint)
    tensors, info = read_checkpoint(path)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    config = _config(arch, tensors, path)
    model = build_run_model(config)
    parts = _parts(model, arch)
    expected = [key for part, modules in parts for key in torch_keys(part, modules)]  # the model's order
    missing = [key for key in expected if key not in tensors]
    unexpected = [k for k in tensors if k not in set(expected) and not k.startswith(arch.skipped)]
    if missing or unexpected:
        raise CheckpointError(f"{path} is not a {arch_name} checkpoint: missing keys {missing[:3]}"
                              f"{' ...' if len(missing) > 3 else ''}, unexpected keys {unexpected[:3]}"
                              f"{' ...' if len(unexpected) > 3 else ''}")
    for part, modules in parts:
        load_torch_weights(part, modules, tensors, path)
    return model, config, info


def import_original(checkpoint: str | Path, arch_name: str, out: str | Path) -> RunLayout:
    """Write the run folder `out` (config.json, best.weights.h5, original.json) of the original's
    checkpoint, atomically: it appears complete or not at all. An existing folder is replaced only if it
    holds an earlier import (never a trained run)."""
    run = RunLayout(out)
    if run.root.exists() and any(run.root.iterdir()) and not run.original.is_file():
        raise RunFolderError(f"{run.root} exists and is not an imported run: choose another --out")
    model, config, info = original_model(checkpoint, arch_name)
    source = Path(checkpoint)
    provenance = {"checkpoint": str(source.resolve()), "arch": arch_name, "sha256": file_sha256(source),
                  **{k: info[k] for k in ("epoch", "best_epoch", "best_score") if k in info}}

    def write(folder: Path) -> None:
        target = RunLayout(folder)
        write_json_atomic({**dataclasses.asdict(config), "data_dir": None}, target.config_json)
        model.save_weights(target.best_weights)
        write_json_atomic(provenance, target.original)

    write_folder_atomic(run.root, write)
    log.info(f"imported {arch_name} ({config.backbone}, profile {config.profile}) from {source} -> "
             f"{run.root}")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("-m hpa_tf.models.import_original"),
        description="Import one of the original's trained PyTorch checkpoints (final.pth or NNN.pth of the "
                    "HPA 2018 winning solution; torch's zip or legacy format, no torch needed) as a run "
                    "folder: classifier folds as RUNS/NAME/foldK for `infer.py --run NAME`, the metric model "
                    "for `infer.py --metric-run RUN_DIR`.")
    parser.add_argument("checkpoint", help="the original's .pth file (its dict or a bare state_dict)")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS),
                        help="the original's model class: DenseNet121 classifier (i768), its large variant "
                             "(i1536), or the ResNet50 ArcFace metric model")
    parser.add_argument("--out", required=True, help="run folder to write (e.g. runs/bestfitting/fold0)")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    return run_or_exit(lambda: import_original(args.checkpoint, args.arch, args.out))


if __name__ == "__main__":
    sys.exit(main())
