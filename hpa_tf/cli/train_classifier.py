"""`python train_classifier.py` / `hpa-train-classifier`: train the DenseNet121 RGBY classifier on one fold
(spec 8.1)."""

from __future__ import annotations

import argparse
import sys

from hpa_tf.cli.common import add_run_arguments, run_training
from hpa_tf.config import CLASSIFIER_PROFILES, FOLD_FAMILIES
from hpa_tf.output import prog


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog("train_classifier.py"),
        description="Train the 4-channel classifier of the HPA 2018 winning solution on one fold. With no "
                    "--data-dir it trains the small 'demo' profile on the embedded synthetic dataset "
                    "(generated and prepared on first use). Files go to OUT/RUN/foldK. A killed run "
                    "resumes when rerun with the same command; a finished one is reported, not trained "
                    "again (--restart trains it anew). Every flag overrides the profile's value.")
    parser.add_argument("--fold", type=int, default=0, help="validation fold 0..4 (default 0)")
    parser.add_argument(
        "--profile", choices=sorted(CLASSIFIER_PROFILES), default=None,
        help="demo: small DenseNet from scratch, 128 -> 64 px, 10 epochs (default without --data-dir); "
             "i768: run A, DenseNet121 768 -> 512, batch 48, Adam55, random_ext_folds5 (default with "
             "--data-dir); i1536: run B, large DenseNet121 1536 -> 1024, batch 36, Adam45, noleak_clean")
    parser.add_argument("--split", choices=sorted(FOLD_FAMILIES), default=None,
                        help="fold family (spec 3.1 / 3.2)")
    parser.add_argument("--large", action=argparse.BooleanOptionalAction, default=None,
                        help="extra 2x2/2 max-pool after the stem (the 1536 px model)")
    parser.add_argument("--crop-size", type=int, default=None, help="training crop / validation resize side")
    parser.add_argument("--dropout", type=float, default=None, help="rate of the two head dropouts")
    parser.add_argument("--device-augment", action=argparse.BooleanOptionalAction, default=None,
                        help="cut, resize and flip the crops on the accelerator inside the training step "
                             "(the same random draws); the CPU only reads and batches uint8 images. With "
                             "--tfrecords, the recommended setting for real data on GPU hosts")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpa_tf.config import classifier_config
    from hpa_tf.training.classifier import train_classifier

    return run_training(args, classifier_config, train_classifier, lambda summary: (
        f"best epoch {summary['best_epoch']}: val focal {summary['val_focal']:.4f}, val macro-F1 "
        f"{summary['val_macro_f1']:.4f}; weights {summary['best_weights']}"))


if __name__ == "__main__":
    sys.exit(main())
