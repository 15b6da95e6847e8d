"""Command-line flags shared by the training CLIs (every RunConfig setting has one)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from hpa_tf.config import PRECISIONS, STRATEGIES
from hpa_tf.output import run_or_exit, setup_logging
from hpa_tf.schedules import SCHEDULES

log = logging.getLogger("hpa_tf.cli")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the RunConfig fields; None (the default) keeps the profile's value."""
    add = parser.add_argument
    add("--data-dir", default=None, help="prepared dataset root (python -m hpa_tf.data.prepare)")
    add("--out", dest="out_dir", default=None, help="results root (default: runs)")
    add("--run", default=None, help="run name (default: the profile name)")
    add("--backbone", default=None,
        help="densenet121 or resnet50 (torchvision's networks, as the original's), another "
             "keras.applications name (inceptionv3, xception, ...) or densenet_A_B_C_D (a DenseNet with "
             "those block counts, random weights)")
    add("--weights", default=None,
        help="'torchvision' (the original's ImageNet weights, fetched once; densenet*, resnet50), a .pth / "
             ".safetensors file of them, 'imagenet' (Keras' weights; not resnet50), 'none' (random), or a "
             "Keras weights file")
    add("--img-size", type=int, default=None, help="resize cache to read (prepare --sizes)")
    add("--batch-size", type=int, default=None, help="global batch, split over replicas")
    add("--schedule", choices=sorted(SCHEDULES), default=None, help="learning-rate schedule by epoch")
    add("--epochs", type=int, default=None, help="epochs; a schedule is stretched to fit other lengths")
    add("--lr-scale", type=float, default=None, help="multiplies every learning rate of the schedule")
    add("--clipnorm", type=float, default=None, help="global gradient norm limit (0: off)")
    add("--seed", type=int, default=None, help="seed of weights init, crops and shuffling")
    add("--tfrecords", action=argparse.BooleanOptionalAction, default=None,
        help="read the TFRecord shards of prepare --tfrecords instead of the PNG caches")
    add("--strategy", choices=STRATEGIES, default=None,
        help="auto: MirroredStrategy on more than one GPU; multiworker reads TF_CONFIG")
    add("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
        help="synchronise BatchNorm statistics across replicas (the reference did not)")
    add("--precision", choices=sorted(PRECISIONS), default=None,
        help="fp32, or mixed precision bf16 / fp16 (fp16 with dynamic loss scaling)")
    add("--jit", action=argparse.BooleanOptionalAction, default=None, help="compile steps with XLA")
    add("--quiet", action="store_true", help="warnings and errors only, no progress bars")
    add("--restart", action="store_true",
        help="delete the run's files (checkpoints, logs, backup) and train it anew; without it a killed run "
             "resumes and a finished one is reported, not trained again")


# Flags of add_run_arguments that are not RunConfig fields.
NOT_CONFIG = ("quiet", "restart")


def default_profile(args: argparse.Namespace) -> str:
    """--profile, else the reference profile i768 with --data-dir and the demo without."""
    return args.profile or ("i768" if args.data_dir else "demo")


def config_overrides(args: argparse.Namespace, skip=("profile",)) -> dict:
    """The parsed flags as config overrides: all but `skip` (a CLI's own flags that are not config fields)
    and NOT_CONFIG."""
    return {k: v for k, v in vars(args).items() if k not in skip and k not in NOT_CONFIG}


def run_training(args: argparse.Namespace, make_config: Callable, train: Callable,
                 describe: Callable[[dict], str], skip=("profile",), instead: Callable | None = None) -> int:
    """A training command's main: logging as asked, the profile's config with the flags applied, then
    `instead(config)` when given and it returns True (another mode), else `train` (a finished run is
    reported by it, not trained again) and one `describe(summary)` line; exit status 0, or 2 with one
    `error:` line."""
    setup_logging(args.quiet)

    def action():
        config = make_config(default_profile(args), **config_overrides(args, skip))
        if instead is not None and instead(config):
            return
        summary = train(config, progress=not args.quiet, restart=args.restart)
        if not summary.get("already_finished"):
            log.info(describe(summary))

    return run_or_exit(action)
