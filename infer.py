"""Predict the test set and write the submission (spec 9-10); see `python infer.py --help`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python infer.py",
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
    add("--validation-csv", default="validation.csv", help="where --validate writes its table")
    add("--sweep", action="store_true",
        help="print the match-threshold sweep on the antibody val split (spec 10.4: each val HPAv18 image "
             "against the antibody-train images; impostors: val images whose best image of another "
             "antibody is above the threshold) and the threshold --match-threshold auto takes from it")
    add("--data-dir", default=None, help="prepared dataset root (default: the synthetic demo dataset)")
    add("--runs", default="runs", help="results root of train_classifier.py / train_metric.py")
    add("--run", default=None, help="classifier run name (default: demo, or i768 with --data-dir)")
    add("--folds", type=int, nargs="+", default=None, help="folds to ensemble (default: every trained one)")
    add("--seeds", type=int, nargs="+", default=None,
        help="TTA seeds: 0 = whole image, s >= 1 a random-scale crop; each gives 8 dihedral views "
             "(default 0 1 2 3; the demo: 0)")
    add("--views", nargs="+", default=None,
        help="dihedral TTA views (default all 8: default flipud fliplr transpose flipud_lr flipud_transpose "
             "fliplr_transpose flipud_lr_transpose)")
    add("--tta", choices=["max", "mean"], default="max", help="how the views of an image are combined")
    add("--ratios", default="train",
        help="label ratios for the thresholds: train, lb (the public-LB vector), mean (of the two), or a "
             "file of 28 numbers")
    add("--no-leak", action="store_true", help="skip the test<->HPAv18 pHash leak replacement")
    add("--metric-run", default=None,
        help="metric-learning run folder (default RUNS/metric_demo or RUNS/metric_i768); its "
             "embeddings_test.npz / embeddings_ext.npz are extracted first when missing or older than its "
             "checkpoint; 'none' skips the replacement")
    add("--match-threshold", type=match_threshold, default="auto",
        help="replace a test image's labels by its nearest HPAv18 image's when their cosine is above this; "
             "auto (default): the lowest threshold of the antibody-val sweep (--sweep) at which at most "
             "--impostor-rate of the val images find an image of another antibody above it (the original "
             "used 0.65 for its own embedding)")
    add("--impostor-rate", type=float, default=0.01,
        help="with --match-threshold auto: the largest share of antibody-val images allowed to match another "
             "antibody above the threshold")
    add("--neighbour-k", type=int, default=3,
        help="nearest HPAv18 images per test image in OUTPUT.neighbours.csv (the neighbour step's "
             "evidence: Id, antibody, cosine, labels of each, labels before and after, replaced)")
    add("--output", default="submission.csv",
        help="submission file (written atomically); beside it OUTPUT.steps.csv (the labels after each step), "
             ".prob.npy, .thresholds.npy and .serving.json (what --export serves)")
    add("--batch-size", type=int, default=4, help="images per forward pass (each with all its views)")
    add("--export", default=None, metavar="DIR",
        help="write SavedModels for TF Serving: DIR/classifier/<version> (whole images of any size resized "
             "to the crop size, the 8 dihedral views, the folds' mean; labels at the thresholds that "
             "--submission fitted on that computation, OUTPUT.serving.json, else 0.5) and "
             "DIR/embedder/<version>")
    add("--gallery", nargs="+", metavar="ID", default=None,
        help="for each image Id (test, Kaggle train or HPAv18) write FIGURES/gallery_<ID>.png: the image "
             "and its --k nearest annotated images by the metric embedding, with labels and cosines; "
             "its predicted labels (the classifier folds, thresholds as for --export) beside the true "
             "ones where known, missed and wrongly added ones marked")
    add("--k", type=int, default=8, help="neighbours shown per image in galleries")
    add("--noise-report", action="store_true",
        help="write FIGURES/noise_report.csv (annotated images ranked by how much their labels disagree "
             "with the majority of their neighbours of the same antibody or very high similarity) and "
             "FIGURES/noise_report.png; the metric run's test, kaggle and ext embeddings are extracted "
             "first where missing or stale")
    add("--noise-neighbours", type=int, default=10, help="nearest neighbours considered per image")
    add("--noise-similarity", type=float, default=None,
        help="cosine from which a neighbour of another or unknown antibody counts (default: calibrated, "
             "reached with another antibody by 1 in 1000 HPAv18 images)")
    add("--figures", default="figures", help="folder for galleries and the noise report")
    add("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def match_threshold(value: str):
    """--match-threshold: 'auto' or a cosine."""
    if value.lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {value!r}") from None


def trained_data_dir(folds: list[Path], metric_run: Path | None) -> str:
    """The dataset the classifier folds (else the metric run) were trained on."""
    runs = folds[:1] + ([metric_run] if metric_run else [])
    for config in [run / "config.json" for run in runs]:
        if config.is_file():
            return json.loads(config.read_text())["data_dir"]
    from hpa_tf.inference.predict import InferenceError

    raise InferenceError("no trained run to take the dataset from: pass --data-dir or train first")


def serving_record(output: str) -> dict:
    """What --submission fitted for the served computation (OUTPUT.serving.json), with a note if none."""
    from hpa_tf.inference.submission import serving_path, serving_record

    record = serving_record(output)
    if not record["fitted"]:
        print(f"note: no {serving_path(output)} (python infer.py --submission): labels at 0.5, 8-view max")
    return record


def gallery_command(args: argparse.Namespace, image_id: str) -> str:
    """The command that draws `image_id`'s gallery with this run's data, runs and metric run."""
    given = {name: getattr(args, name) for name in ("data_dir", "runs", "metric_run")}
    flags = [f"--{name.replace('_', '-')} {value}" for name, value in given.items()
             if value not in (None, "runs")]
    return " ".join(["python infer.py --gallery", image_id, *flags])


def curate(args: argparse.Namespace, folds: list[Path], metric_run: Path, data_dir: str) -> None:
    """--gallery and --noise-report: PNGs and the report CSV under --figures."""
    from hpa_tf.atomic import write_csv_atomic
    from hpa_tf.data.layout import DataLayout
    from hpa_tf.inference import curation
    from hpa_tf.inference.predict import load_run_model
    from hpa_tf.training.metric import ensure_embeddings

    layout, figures = DataLayout(data_dir), Path(args.figures)
    ensure_embeddings(metric_run, ["test", "kaggle", "ext"], progress=not args.quiet)
    pool = curation.annotated_pool(metric_run, layout)
    if args.gallery and not folds:
        print("note: no trained classifier fold (python train_classifier.py): galleries show no prediction")
    runs = [load_run_model(folder) for folder in folds] if args.gallery else []
    serving = serving_record(args.output) if runs else None
    for image_id in args.gallery or []:
        query = curation.find_query(pool, metric_run, layout, image_id)
        predicted = curation.predicted_labels(runs, layout, query, serving) if runs else None
        path = curation.gallery(pool, query, layout, args.k, figures / f"gallery_{image_id}.png", predicted)
        print(f"gallery written to {path}")
    if args.noise_report:
        report, similarity = curation.label_noise_report(pool, args.noise_neighbours, args.noise_similarity)
        write_csv_atomic(report, figures / "noise_report.csv")
        disagreeing = int((report["disagreement"] > 0).sum())
        alone = int(report["disagreement"].isna().sum())
        print(f"{disagreeing} of {len(report)} annotated images disagree with their neighbours (same "
              f"antibody or cosine >= {similarity:.4f}); {alone} have none")
        print(report.head(10)[["rank", "Id", "set", "Target", "majority", "disagreement", "neighbours"]]
              .to_string(index=False))
        print(f"report written to {figures / 'noise_report.csv'}")
        if disagreeing:
            path = curation.noise_gallery(report, pool, layout, figures / "noise_report.png", k=args.k)
            print(f"gallery written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = (args.submission, args.validate, args.sweep, args.export, args.gallery, args.noise_report)
    if not any(modes):
        print("nothing to do: pass --submission, --validate, --sweep, --export, --gallery or --noise-report "
              "(see --help)", file=sys.stderr)
        return 2
    if min(args.k, args.noise_neighbours, args.neighbour_k) < 1:
        print("error: --k, --noise-neighbours and --neighbour-k must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.impostor_rate < 1:
        print(f"error: --impostor-rate must lie between 0 and 1, got {args.impostor_rate}", file=sys.stderr)
        return 2
    from hpa_tf.errors import USER_ERRORS
    from hpa_tf.inference.submission import (
        InferenceError,
        InferenceOptions,
        class_counts,
        make_submission,
        neighbours_path,
    )

    demo = args.data_dir is None
    run = Path(args.runs) / (args.run or ("demo" if demo else "i768"))
    folds = [run / f"fold{k}" for k in args.folds] if args.folds else \
        sorted(p for p in run.glob("fold*") if (p / "best.weights.h5").is_file())
    if args.metric_run is None:
        metric_run = Path(args.runs) / ("metric_demo" if demo else "metric_i768")
    else:
        metric_run = None if args.metric_run.lower() == "none" else Path(args.metric_run)
    try:
        if not folds and (args.submission or args.export or args.validate):
            raise InferenceError(f"no trained fold in {run}: run `python train_classifier.py` first")
        data_dir = args.data_dir or trained_data_dir(folds, metric_run)
        if args.sweep:
            if metric_run is None:
                raise InferenceError("--sweep needs a metric run (--metric-run)")
            from hpa_tf.inference import match_threshold as auto

            sweep = auto.run_sweep(metric_run, data_dir, progress=not args.quiet)
            print(auto.changes(sweep).round(4).to_string(index=False))
            print(auto.choose(sweep, args.impostor_rate).describe())
        seeds = tuple(args.seeds or ((0,) if demo else (0, 1, 2, 3)))
        if args.validate:
            from hpa_tf.inference.validation import validate

            summary, per_class = validate(folds, args.ratios, seeds, args.views, args.tta, args.batch_size,
                                          args.validation_csv)
            print(per_class.round(4).to_string(index=False))
            print(summary.round(4).to_string(index=False))
            print(f"validation table written to {args.validation_csv}")
        if args.submission:
            options = InferenceOptions(folds=[str(f) for f in folds], output=Path(args.output), seeds=seeds,
                                       views=args.views, combine=args.tta, ratio_source=args.ratios,
                                       leak=not args.no_leak, metric_run=metric_run,
                                       match_threshold=args.match_threshold,
                                       impostor_rate=args.impostor_rate, neighbour_k=args.neighbour_k,
                                       batch_size=args.batch_size, progress=not args.quiet)
            result = make_submission(options, data_dir)
            print(class_counts(result["steps"]).to_string())
            for name, score in result["scores"].items():
                print(f"macro-F1 after {name}: {score:.4f}")
            print(f"submission written to {args.output}")
            if result["neighbours"] is not None:
                replaced = result["neighbours"].query("replaced")["Id"].tolist()
                print(f"neighbour evidence written to {neighbours_path(args.output)} ({len(replaced)} "
                      "replaced)" + (f"; a replaced image's gallery: {gallery_command(args, replaced[0])}"
                                     if replaced else ""))
        if args.export:
            from hpa_tf.export import export_runs

            for folder in export_runs(folds, serving_record(args.output), metric_run, args.export):
                print(f"SavedModel written to {folder}")
        if args.gallery or args.noise_report:
            if metric_run is None:
                raise InferenceError("--gallery and --noise-report need a metric run (--metric-run)")
            curate(args, folds, metric_run, data_dir)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
