"""Train the DenseNet121 RGBY classifier on one fold (spec 8.1); see `python train_classifier.py --help`."""

from __future__ import annotations

import argparse
import sys

from hpa_tf.config import CLASSIFIER_PROFILES, PRECISIONS, SPLITS, STRATEGIES, ClassifierConfig
from hpa_tf.training.schedules import SCHEDULES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = ClassifierConfig()
    parser = argparse.ArgumentParser(
        prog="python train_classifier.py",
        description="Train the 4-channel classifier of the HPA 2018 winning solution on one fold. With no "
                    "--data-dir it trains the small 'demo' profile on the embedded synthetic dataset "
                    "(generated and prepared on first use). A killed run resumes when rerun with the same "
                    "command. Profile values can be overridden by each flag below.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--fold", type=int, default=0, help="validation fold 0..4")
    add("--profile", choices=sorted(CLASSIFIER_PROFILES), default=None,
        help="demo: small DenseNet from scratch, 128 -> 64 px, 10 epochs (default without --data-dir); "
             "i768: run A, DenseNet121 768 -> 512, batch 48, Adam55, random_ext_folds5 (default with "
             "--data-dir); i1536: run B, large DenseNet121 1536 -> 1024, batch 36, Adam45, noleak_clean")
    add("--data-dir", default=None, help="prepared dataset root (python -m hpa_tf.data.prepare)")
    add("--out", dest="out_dir", default=defaults.out_dir, help="results root; files go to OUT/RUN/foldK")
    add("--run", default=None, help="run name (default: the profile name)")
    add("--split", choices=sorted(SPLITS), default=None, help="fold family (spec 3.1 / 3.2)")
    add("--backbone", default=None,
        help="keras.applications name (densenet121, resnet50, inceptionv3, ...) or densenet_A_B_C_D "
             "(a DenseNet with those block counts, random weights)")
    add("--weights", default=None, help="'imagenet' (downloads once), 'none' (random), or a weights file")
    add("--large", action=argparse.BooleanOptionalAction, default=None,
        help="extra 2x2/2 max-pool after the stem (the 1536 px model)")
    add("--img-size", type=int, default=None, help="resize cache to read (prepare --sizes)")
    add("--crop-size", type=int, default=None, help="training crop / validation resize side")
    add("--batch-size", type=int, default=None, help="global batch, split over replicas")
    add("--schedule", choices=sorted(SCHEDULES), default=None, help="learning-rate schedule by epoch")
    add("--epochs", type=int, default=None, help="epochs; a schedule is stretched to fit other lengths")
    add("--lr-scale", type=float, default=None, help="multiplies every learning rate of the schedule")
    add("--clipnorm", type=float, default=None, help="global gradient norm limit (0: off)")
    add("--dropout", type=float, default=None, help="dropout rate of the two head dropouts")
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
    add("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpa_tf.config import ConfigError, classifier_config
    from hpa_tf.training.classifier import train_classifier
    from hpa_tf.training.loop import TrainingSetupError

    overrides = {k: v for k, v in vars(args).items() if k not in ("profile", "quiet")}
    profile = args.profile or ("i768" if args.data_dir else "demo")
    try:
        summary = train_classifier(classifier_config(profile, **overrides), progress=not args.quiet)
    except (ConfigError, TrainingSetupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"best epoch {summary['best_epoch']}: val focal {summary.get('val_focal', float('nan')):.4f}, "
          f"val macro-F1 {summary.get('val_macro_f1', float('nan')):.4f}; weights {summary['best_weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
