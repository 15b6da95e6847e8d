"""`python infer.py` / `hpa-infer`: predict the test set and write the submission (spec 9-10), validate,
sweep the match threshold, export SavedModels, draw galleries and the label-noise report; each mode is one
library call."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from hpa_tf.config import (
    AUTO,
    DEMO_TTA_SEEDS,
    REFERENCE_MATCH_THRESHOLD,
    TTA_SEEDS,
    InferenceConfig,
)
from hpa_tf.output import prog, run_or_exit, setup_logging

MODES = ("submission", "validate", "sweep", "export", "gallery", "noise_report", "serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = InferenceConfig()  # every default, once
    parser = argparse.ArgumentParser(
        prog=prog("infer.py"),
        description="With --submission: TTA predictions of every trained fold, fold mean, test duplicate "
                    "group means, per-class thresholds matching label ratios with the top-1 rule, leak "
                    "replacement, then label replacement from the nearest HPAv18 image by the metric "
                    "embedding. With no --data-dir it uses the demo runs on the embedded synthetic dataset "
                    "and prints the macro-F1 after each step.")
    add = parser.add_argument
    add("--submission", action="store_true", help="write the submission")
    add("--validate", action="store_true",
        help="the validation ensemble (spec 9.2-9.3): each trained fold predicts its own validation split "
             "with the same TTA; the out-of-fold set's macro-F1 at 0.5 and at ratio thresholds, with and "
             "without the top-1 rule, and per class, printed and written to --validation-csv")
    add("--validation-csv", default=d.validation_csv,
        help="where --validate writes its table, its out-of-fold probabilities beside it (default: "
             "validation.csv beside --output)")
    add("--sweep", action="store_true",
        help="print the match-threshold sweep on the antibody val split (spec 10.4: each val HPAv18 image "
             "against the antibody-train images; impostors: val images whose best image of another "
             "antibody is above the threshold; gain: right label sets expected per test image) and the "
             "threshold --match-threshold auto takes from it")
    add("--data-dir", default=None, help="prepared dataset root (default: the synthetic demo dataset)")
    add("--runs", default=d.runs, help="results root of train_classifier.py / train_metric.py")
    add("--run", default=None, help="classifier run name (default: demo, or i768 with --data-dir)")
    add("--folds", type=int, nargs="+", default=None, help="folds to ensemble (default: every trained one)")
    add("--seeds", type=int, nargs="+", default=None,
        help="TTA seeds: 0 = whole image, s >= 1 a random-scale crop; each gives 8 dihedral views "
             f"(default {' '.join(map(str, TTA_SEEDS))}; the demo: {' '.join(map(str, DEMO_TTA_SEEDS))})")
    add("--views", nargs="+", default=None,
        help="dihedral TTA views (default all 8: default flipud fliplr transpose flipud_lr flipud_transpose "
             "fliplr_transpose flipud_lr_transpose)")
    add("--tta", dest="combine", choices=["max", "mean"], default=d.combine,
        help="how the views of an image are combined")
    add("--ratios", dest="ratio_source", default=d.ratio_source,
        help="label ratios for the thresholds: train, lb (the public-LB vector), mean (of the two), or a "
             "file of 28 numbers")
    add("--no-leak", dest="leak", action="store_false", help="skip the test<->HPAv18 pHash leak replacement")
    add("--metric-run", default=None,
        help="metric-learning run folder (default RUNS/metric_demo or RUNS/metric_i768); its "
             "embeddings_test.npz / embeddings_ext.npz are extracted first when missing or older than its "
             "checkpoint; 'none' skips the replacement")
    add("--match-threshold", type=match_threshold, default=d.match_threshold,
        help="replace a test image's labels by its nearest HPAv18 image's when their cosine is above this; "
             "auto (default): the threshold of the antibody-val sweep (--sweep) at which replacing is "
             "expected to make the most label sets right, weighed against the classifier's out-of-fold "
             "labels (those of --validation-csv, computed first when missing or stale); the original used "
             f"{REFERENCE_MATCH_THRESHOLD} for its own embedding")
    add("--impostor-rate", type=float, default=d.impostor_rate,
        help="with --match-threshold auto: only thresholds at which at most this share of the antibody-val "
             "images find an image of another antibody above them (default: no cap)")
    add("--neighbour-k", type=int, default=d.neighbour_k,
        help="nearest HPAv18 images per test image in OUTPUT.neighbours.csv (the neighbour step's "
             "evidence: Id, antibody, cosine, labels of each, labels before and after, replaced)")
    add("--output", default=d.output,
        help="submission file (written atomically); beside it OUTPUT.steps.csv (the labels after each step), "
             ".prob.npy, .thresholds.npy and .serving.json (what --export serves)")
    add("--batch-size", type=int, default=d.batch_size,
        help="images per forward pass (each with all its views)")
    add("--export", default=None, metavar="DIR",
        help="write SavedModels for TF Serving: DIR/classifier/<version> (whole images of any size resized "
             "to the crop size, the 8 dihedral views, the folds' mean; labels at the thresholds that "
             "--submission fitted on that computation, OUTPUT.serving.json, else 0.5) and "
             "DIR/embedder/<version>, each also as a bioimage.io model resource in "
             "DIR/bioimageio/<model>/<version> (rdf.yaml, validated)")
    add("--gallery", nargs="+", metavar="ID", default=None,
        help="for each image Id (test, Kaggle train or HPAv18) write FIGURES/gallery_<ID>.png: the image "
             "and its --k nearest annotated images by the metric embedding, with labels and cosines; "
             "its predicted labels (the classifier folds, thresholds as for --export) beside the true "
             "ones where known, missed and wrongly added ones marked")
    add("--k", type=int, default=d.k, help="neighbours shown per image in galleries")
    add("--noise-report", action="store_true",
        help="write FIGURES/noise_report.csv (annotated images ranked by how much their labels disagree "
             "with the majority of their neighbours of the same antibody or very high similarity) and "
             "FIGURES/noise_report.png; the metric run's test, kaggle and ext embeddings are extracted "
             "first where missing or stale")
    add("--noise-neighbours", type=int, default=d.noise_neighbours,
        help="nearest neighbours considered per image")
    add("--noise-similarity", type=float, default=None,
        help="cosine from which a neighbour of another or unknown antibody counts (default: calibrated, "
             "reached with another antibody by 1 in 1000 HPAv18 images)")
    add("--figures", default=d.figures, help="folder for galleries and the noise report")
    add("--serve", action="store_true",
        help="start the curators' web page: search an image or pick one from the noise report, see it, "
             "its nearest annotated images and the classifier's prediction, accept or edit its labels "
             "(appended to --corrections); stops with Ctrl+C")
    add("--host", default=d.host,
        help="--serve: the address to bind (default: this machine only); any other (e.g. 0.0.0.0, every "
             "address of the machine) requires the access token, printed at start as a URL")
    add("--token", default=d.token,
        help="--serve: the access token requests must carry (?token=... once, then a cookie); default: a "
             "random one printed at start where --host is not a loopback address, none on loopback")
    add("--port", type=int, default=d.port, help="--serve: the port")
    add("--corrections", default=d.corrections,
        help="--serve: the CSV the decisions are appended to (Id, Target, previous, who, when; "
             "python -m hpa_tf.data.prepare --corrections takes it)")
    add("--curator", default=d.curator, help="--serve: the name recorded with each decision (default: "
                                            "the login name)")
    add("--quiet", action="store_true", help="warnings and errors only, no progress bars")
    return parser.parse_args(argv)


def match_threshold(value: str):
    """--match-threshold: 'auto' or a cosine."""
    if value.lower() == AUTO:
        return AUTO
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {value!r}") from None


def inference_config(args: argparse.Namespace) -> InferenceConfig:
    """The parsed flags as an InferenceConfig."""
    fields = {f.name for f in dataclasses.fields(InferenceConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return InferenceConfig(**values, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not any(getattr(args, mode) for mode in MODES):
        print("nothing to do: pass --submission, --validate, --sweep, --export, --gallery, --noise-report "
              "or --serve (see --help)", file=sys.stderr)
        return 2
    setup_logging(args.quiet)
    config = inference_config(args)

    def action():
        config.validate()
        if args.sweep:
            from hpa_tf.inference.match_threshold import run_sweep

            run_sweep(config)
        if args.validate:
            from hpa_tf.inference.validation import run_validation

            run_validation(config)
        if args.submission:
            from hpa_tf.inference.submission import run_submission

            run_submission(config)
        if args.export:
            from hpa_tf.export import run_export

            run_export(config, args.export)
        if args.gallery:
            from hpa_tf.curation.gallery import write_galleries

            write_galleries(config, args.gallery)
        if args.noise_report:
            from hpa_tf.curation.report import write_noise_report

            write_noise_report(config)
        if args.serve:  # last: it runs until interrupted
            from hpa_tf.curation.web import serve

            serve(config)

    return run_or_exit(action)
