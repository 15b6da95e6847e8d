"""`python train_metric.py` / `hpa-train-metric`: train the ResNet50 + ArcFace embedder on antibody ids
(spec 8.2), or extract its embeddings."""

from __future__ import annotations

import argparse
import sys

from hpa_tf.cli.common import add_run_arguments, run_training
from hpa_tf.config import EMBEDDER_PROFILES
from hpa_tf.layout import RunLayout
from hpa_tf.output import prog


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog("train_metric.py"),
        description="Train the metric-learning embedder (ArcFace on antibody codes of the 'tr' antibody "
                    "split), or with --extract write embeddings_<set>.npz from a trained run. With no "
                    "--data-dir it uses the small 'demo' profile on the embedded synthetic dataset. Files "
                    "go to OUT/RUN (default runs/metric_<profile>). A killed run resumes when rerun with "
                    "the same command; a finished one is reported, not trained again (--restart trains "
                    "it anew).")
    parser.add_argument("--profile", choices=sorted(EMBEDDER_PROFILES), default=None,
                        help="demo: small DenseNet embedder at 64 px, 16 epochs, started from the "
                             "classifier demo's fold 0 (default without --data-dir); i768: ResNet50 at 768, "
                             "batch 32, FaceAdam, 50 epochs")
    parser.add_argument("--embedding-dim", type=int, default=None, help="feature size (default 512)")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=None,
                        help="the head's dropouts (p .25, .5); off by default, as they were no-ops in the "
                             "original (spec 6.4)")
    parser.add_argument("--init-from", default=None, metavar="FOLD_DIR",
                        help="start the embedder's backbone from this trained classifier fold's (a folder "
                             "under --out, or a path; 'none': the --weights start). The demo starts from "
                             "demo/fold0, as the original started from ImageNet weights")
    parser.add_argument("--nn-every", type=int, default=None,
                        help="nearest-neighbour val accuracy every N epochs (0: never)")
    parser.add_argument("--extract", nargs="+", metavar="SET",
                        choices=["test", "kaggle", "ext", "train", "val"],
                        help="instead of training, write OUT/RUN/embeddings_<SET>.npz for these sets: "
                             "test (sample_submission), kaggle (Kaggle train images), ext (all HPAv18), "
                             "train / val (the HPAv18 antibody split)")
    parser.add_argument("--checkpoint", default=RunLayout.BEST_WEIGHTS,
                        help="weights file of the run for --extract (best.weights.h5, 045.weights.h5, ...)")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpa_tf.config import embedder_config
    from hpa_tf.errors import ConfigError
    from hpa_tf.training.embedder import extract, run_folder, train_embedder

    def extract_instead(config) -> bool:
        """--extract: write the embeddings of a trained run instead of training."""
        if args.extract and args.restart:
            raise ConfigError("--restart trains the run anew; it does not go with --extract")
        if args.extract:
            extract(run_folder(config), args.extract, args.checkpoint, progress=not args.quiet)
        return bool(args.extract)

    return run_training(args, embedder_config, train_embedder, lambda summary: (
        f"best epoch {summary['best_epoch']}: val MAP@5 {summary['val_map5']:.4f}, top-1 "
        f"{summary['val_top1']:.4f}, nearest-neighbour top-1 {summary.get('val_nn_top1', float('nan')):.4f}; "
        f"weights {summary['best_weights']}"), skip=("profile", "extract", "checkpoint"),
        instead=extract_instead)


if __name__ == "__main__":
    sys.exit(main())
