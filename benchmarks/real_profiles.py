"""The reference profiles at their real sizes, through the package's own code paths (random weights).

Builds the synthetic `tiny` dataset, prepares it at 768 and 1536 px (hpa_tf.data.prepare), then runs
each stage in its own subprocess, so that its time and peak memory are its own:

| stage | what |
|---|---|
| prepare | generate `tiny` (120 train / 40 test / 120 HPAv18) and prepare its caches at 768 and 1536 |
| train-i768 | one step of classifier profile i768 (DenseNet121, 768 -> 512): train_dataset, build_trainer |
| train-i1536 | the same for i1536 (large DenseNet121, 1536 -> 1024, split noleak_clean) |
| metric-i768 | one step of metric profile i768 (ResNet50 at 768, ArcMarginProduct over 12,815 antibodies) |
| tta-768 | tta_probabilities at 768 -> 512 (seed 0: 8 dihedral views per image) on --tta-images images |
| export-i768 | export_classifier of the i768 classifier, reload, serving_uint8 on one 768 px uint8 image |
| import-i768 | the original's class_densenet121_dropout in PyTorch (random weights, BatchNorm statistics; |
| | tests/original_nets.py) saved as its 0.4-format checkpoint, hpa-import-original, then the 8 |
| | dihedral views of one 512 px image through both: logits' relative max error (needs torch) |
| import-i1536 | the same for class_densenet121_large_dropout at 1024 px |
| import-metric | the same for class_resnet50_dropout at 768 px (12,815 classes): the embeddings' error |

Every stage checks the feature map of spec 6.2 / 6.4, symbolically (compute_output_shape) and by running
the built model's backbone on one real input: 16x16x1024 for DenseNet121 at 512, 16x16x1024 for the large
variant at 1024, 24x24x2048 for ResNet50 at 768; and that losses and probabilities are finite.

    python benchmarks/real_profiles.py                      # every stage, batch 2, in a temporary folder
    python benchmarks/real_profiles.py --batch 4 --stages train-i1536
    python benchmarks/real_profiles.py --work /tmp/rp --keep   # reuses the prepared data on a rerun

Prints one table (stage, batch, seconds, peak RSS, result) and exits 1 if any stage failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

STAGES = ("prepare", "train-i768", "train-i1536", "metric-i768", "tta-768", "export-i768", "import-i768",
          "import-i1536", "import-metric")
# The original's model class of each import stage, and its input side at the real profile.
IMPORTS = {"import-i768": ("class_densenet121_dropout", 512),
           "import-i1536": ("class_densenet121_large_dropout", 1024),
           "import-metric": ("class_resnet50_dropout", 768)}
SIZES = (768, 1536)
ARC_CLASSES = 12815  # spec 6.4: antibody classes of the original's HPAv18 split
# Spec 6.2 / 6.4: (backbone input side, final feature map) of each profile's backbone.
FEATURES = {"i768": (512, (16, 16, 1024)), "i1536": (1024, (16, 16, 1024)), "metric": (768, (24, 24, 2048))}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="One step of each real profile (i768, i1536, metric i768), TTA and export at their "
                    "real sizes on the synthetic tiny dataset, with weights=None; a table of seconds and "
                    "peak memory per stage.")
    parser.add_argument("--batch", type=int, default=2,
                        help="training batch of the three training stages (default 2)")
    parser.add_argument("--steps", type=int, default=1,
                        help="optimizer steps per training stage (default 1; from 2 on the later steps' "
                             "time is printed apart from the first's, which includes tracing)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="stages to run, in this order (default all; prepare runs first when the data "
                             "is not prepared yet)")
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder (data/, serving/); default a temporary folder, removed at "
                             "the end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="an already prepared dataset (768 and 1536 caches) to use instead of generating "
                             "tiny; the prepare stage is then skipped")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the runs")
    parser.add_argument("--workers", type=int, default=2, help="preparation worker processes (default 2)")
    parser.add_argument("--tta-images", type=int, default=2, help="test images of the TTA stage (default 2)")
    parser.add_argument("--arc-classes", type=int, default=ARC_CLASSES,
                        help=f"ArcMarginProduct classes of the metric stage (default {ARC_CLASSES}, the "
                             "original's; 0: the dataset's antibody count)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)  # one stage, here
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "workers", "tta_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.arc_classes < 0:
        parser.error(f"--arc-classes must be 0 or positive, got {args.arc_classes}")
    if args.work is not None and args.work.exists() and not args.work.is_dir():
        parser.error(f"--work {args.work} exists and is not a folder")
    if args.data_dir is not None:
        if not (args.data_dir / "meta").is_dir():
            parser.error(f"--data-dir {args.data_dir} is not a prepared dataset (no meta/ folder): run "
                         f"`python -m hpa_tf.data.prepare --data-dir {args.data_dir} --sizes 768 1536` first")
        if args.stage is None and "prepare" in args.stages:
            parser.error("--data-dir is an already prepared dataset: leave out the prepare stage")
    return args


# ------------------------------------------------------------------------------------------ the stages

def data_root(args) -> Path:
    return args.data_dir if args.data_dir is not None else args.work / "data"


def stage_prepare(args) -> dict:
    from hpa_tf.data.prepare import prepare
    from hpa_tf.data.synthetic import generate

    root, timings = data_root(args), {}
    start = time.perf_counter()
    if not (root / "raw" / "synthetic_info.json").is_file():
        generate(root, preset="tiny", seed=args.seed, progress=False, overwrite=True)
    timings["generate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    summary = prepare(root, sizes=list(SIZES), workers=args.workers, progress=False)
    timings["prepare_s"] = time.perf_counter() - start
    for size in SIZES:
        assert (root / "meta" / f"cache_manifest_{size}.csv").is_file(), f"no {size} px caches in {root}"
    return {"batch": "-", **timings,
            "summary": f"{summary['train']} train / {summary['test']} test / {summary['external']} HPAv18 "
                       f"at {SIZES}, generate {timings['generate_s']:.1f} s, "
                       f"prepare {timings['prepare_s']:.1f} s"}


def inner_backbone(model):
    """The backbone inside a built classifier or metric network: its only nested functional model (the
    metric network's embedder is entered first)."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1 and nested[0].name == "embedder":
        return inner_backbone(nested[0])
    assert len(nested) == 1, \
        f"{model.name}: expected one nested backbone model, found {[m.name for m in nested]}"
    return nested[0]


def check_features(model, images, profile: str) -> str:
    """Assert the backbone's feature map of spec 6.2 / 6.4, symbolically for the whole batch and by running
    the model's own backbone on the first image; returns it as HxWxC."""
    side, expected = FEATURES[profile]
    assert tuple(images.shape[1:]) == (side, side, 4), \
        f"{profile}: backbone input {tuple(images.shape)}, expected [B, {side}, {side}, 4]"
    backbone = inner_backbone(model)
    symbolic = tuple(backbone.compute_output_shape(tuple(images.shape)))
    assert symbolic == (images.shape[0], *expected), \
        f"{profile}: {backbone.name} compute_output_shape {symbolic}, expected {(images.shape[0], *expected)}"
    real = tuple(backbone(images[:1], training=False).shape)
    assert real == (1, *expected), \
        f"{profile}: {backbone.name} on a real image gives {real}, expected {expected}"
    return "x".join(str(v) for v in expected)


def _finite(name: str, value) -> float:
    import numpy as np

    value = float(value)
    assert np.isfinite(value), f"{name} is not finite: {value}"
    return value


def fit_steps(trainer, dataset, steps: int, timings: dict, name: str = "loss") -> tuple[float, str]:
    """`steps` optimizer steps with trainer.fit over the real pipeline: the first alone (it traces and
    compiles the step), then the rest in a second fit (the compiled step reused). Asserts finite losses and
    the step count; returns (last loss, a description of the step times)."""
    start = time.perf_counter()
    history = trainer.fit(dataset.take(1), epochs=1, shuffle=False, verbose=0)
    timings["first_step_s"] = time.perf_counter() - start
    losses = [_finite(name, history.history["loss"][-1])]
    text = f"first step {timings['first_step_s']:.1f} s"
    if steps > 1:
        start = time.perf_counter()
        history = trainer.fit(dataset.take(steps - 1), epochs=1, shuffle=False, verbose=0)
        timings["later_step_s"] = (time.perf_counter() - start) / (steps - 1)
        losses.append(_finite(name, history.history["loss"][-1]))
        text += f", then {timings['later_step_s']:.1f} s/step"
    done = int(trainer.optimizer.iterations.numpy())
    assert done == steps, f"expected {steps} optimizer steps, got {done}"
    return losses[-1], text


def stage_train(args, profile: str) -> dict:
    import numpy as np
    import tensorflow as tf

    from hpa_tf.config import classifier_config
    from hpa_tf.data import pipeline
    from hpa_tf.training.classifier import build_trainer, split_frames
    from hpa_tf.training.loop import start_session, training_dataset

    timings = {}
    config = classifier_config(profile, data_dir=str(data_root(args)), weights="none", batch_size=args.batch,
                               precision=args.precision, seed=args.seed, out_dir=str(args.work / "runs"),
                               verbose=0)
    session = start_session(config, progress=False)
    train, _ = split_frames(session.layout, config.split, config.fold)
    assert len(train) >= config.batch_size, f"{len(train)} training rows, fewer than a batch of {args.batch}"
    source = session.source(config)
    dataset = training_dataset(session, pipeline.train_dataset, source, train, config.crop_size,
                               config.batch_size, seed=config.seed)
    start = time.perf_counter()
    images, labels = next(iter(dataset))
    timings["first_batch_s"] = time.perf_counter() - start
    assert images.shape == (config.batch_size, config.crop_size, config.crop_size, 4) and \
        images.dtype == tf.float32, f"train_dataset gave {images.dtype.name} {tuple(images.shape)}"
    assert labels.shape == (config.batch_size, 28)
    low, high = float(tf.reduce_min(images)), float(tf.reduce_max(images))
    assert 0.0 <= low and high <= 1.0, f"images outside [0, 1]: {low}..{high}"
    start = time.perf_counter()
    with session.strategy.scope():
        trainer = build_trainer(config, session.layout)
    timings["build_s"] = time.perf_counter() - start
    features = check_features(trainer.net, images, profile)
    loss, steps = fit_steps(trainer, dataset, args.steps, timings)
    weights = trainer.net.get_layer("logits").get_weights()
    assert all(np.isfinite(w).all() for w in weights), "non-finite weights after the step"
    return {"batch": str(args.batch), **timings, "loss": loss, "features": features,
            "summary": f"{config.backbone}{' large' if config.large else ''} {config.img_size}->"
                       f"{config.crop_size}, loss {loss:.4f}, features {features}, {steps}"}


def stage_metric(args) -> dict:
    import functools

    import tensorflow as tf

    from hpa_tf.config import embedder_config
    from hpa_tf.data import pipeline
    from hpa_tf.losses import arcface_loss
    from hpa_tf.models.embedder import build_arcface_network, number_of_classes
    from hpa_tf.training.embedder import TRAIN_SPLIT
    from hpa_tf.training.loop import adam, start_session, training_dataset
    from hpa_tf.training.split_metrics import RankHits
    from hpa_tf.training.trainer import GlobalBatchTrainer

    timings = {}
    config = embedder_config("i768", data_dir=str(data_root(args)), weights="none", batch_size=args.batch,
                           precision=args.precision, seed=args.seed, out_dir=str(args.work / "runs"),
                           verbose=0)
    session = start_session(config, progress=False)
    train = session.layout.read_split(TRAIN_SPLIT)
    assert len(train) >= config.batch_size, f"{len(train)} metric training rows, fewer than a batch"
    antibodies = number_of_classes(session.layout)
    classes = args.arc_classes or antibodies
    assert classes >= antibodies, f"--arc-classes {classes} is below the dataset's {antibodies} antibodies"
    source = session.source(config)
    dataset = training_dataset(session, pipeline.metric_dataset, source, train, config.batch_size,
                               training=True, seed=config.seed)
    start = time.perf_counter()
    images, codes = next(iter(dataset))
    timings["first_batch_s"] = time.perf_counter() - start
    assert images.shape == (config.batch_size, config.img_size, config.img_size, 4), tuple(images.shape)
    assert codes.shape == (config.batch_size,) and codes.dtype == tf.int32
    start = time.perf_counter()
    with session.strategy.scope():  # as hpa_tf.training.embedder.train_embedder builds it
        net = build_arcface_network(config, classes, config.weights)
        loss = functools.partial(arcface_loss, s=config.arc_scale, m=config.arc_margin)
        trainer = GlobalBatchTrainer(net, loss, clipnorm=config.clipnorm, gather=False,
                                     eval_metrics=[RankHits("top1"), RankHits("top5"), RankHits("map5")])
        trainer.compile(adam(config), jit_compile=config.jit)
    timings["build_s"] = time.perf_counter() - start
    features = check_features(net, images, "metric")
    embedding = net.get_layer("embedder").compute_output_shape(tuple(images.shape))
    assert tuple(embedding) == (config.batch_size, config.embedding_dim), f"embedding shape {embedding}"
    assert tuple(net.compute_output_shape(tuple(images.shape))) == (config.batch_size, classes)
    value, steps = fit_steps(trainer, dataset, args.steps, timings, "ArcFace loss")
    return {"batch": str(args.batch), **timings, "loss": value, "features": features, "classes": classes,
            "summary": f"{config.backbone} {config.img_size}, {classes} classes, loss {value:.4f}, features "
                       f"{features}, {steps}"}


def _i768_classifier(args):
    """(the i768 classifier with random weights, built as build_trainer builds it, its config, layout)."""
    from hpa_tf.config import classifier_config
    from hpa_tf.layout import DataLayout
    from hpa_tf.models.classifier import build_classifier, load_stats

    config = classifier_config("i768", data_dir=str(data_root(args)), weights="none")
    layout = DataLayout(config.data_dir)
    stats = layout.meta_dir / "stats.json"
    mean, std = load_stats(stats if stats.is_file() else None)
    model = build_classifier(config.backbone, weights=config.weights, large=config.large, mean=mean, std=std,
                             dropout=config.dropout)
    return model, config, layout


def _test_frame(layout, count: int):
    import pandas as pd

    frame = pd.read_csv(layout.sample_submission_csv, dtype=str, keep_default_na=False)[["Id"]]
    assert len(frame) >= count, \
        f"{layout.sample_submission_csv} has {len(frame)} test images, fewer than {count}"
    return frame.iloc[:count].reset_index(drop=True)


def _check_probabilities(probs, shape) -> None:
    import numpy as np

    probs = np.asarray(probs)
    assert probs.shape == shape, f"probabilities of shape {probs.shape}, expected {shape}"
    assert np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0, \
        f"probabilities outside [0, 1]: {probs.min()}..{probs.max()}"


def stage_tta(args) -> dict:
    from hpa_tf.data import pipeline
    from hpa_tf.inference.predict import tta_probabilities

    timings = {}
    start = time.perf_counter()
    model, config, layout = _i768_classifier(args)
    timings["build_s"] = time.perf_counter() - start
    frame = _test_frame(layout, args.tta_images)
    source = pipeline.Source(layout, config.img_size, "test")
    views, index = next(iter(pipeline.tta_dataset(source, frame, config.crop_size, 1, (0,))))
    assert tuple(views.shape) == (1, 8, config.crop_size, config.crop_size, 4), \
        f"TTA views {tuple(views.shape)}"
    features = check_features(model, views[0], "i768")
    start = time.perf_counter()
    probs = tta_probabilities(model, source, frame, config.crop_size, seeds=(0,), batch_size=1)
    timings["tta_s"] = time.perf_counter() - start
    _check_probabilities(probs, (len(frame), 28))
    return {"batch": f"1x8 ({len(frame)} img)", **timings, "features": features,
            "summary": f"{len(frame)} images x 8 views {config.img_size}->{config.crop_size}, "
                       f"features {features}, "
                       f"tta {timings['tta_s']:.1f} s ({timings['tta_s'] / len(frame):.1f} s/image)"}


def stage_export(args) -> dict:
    import inspect

    import numpy as np
    import tensorflow as tf

    from hpa_tf import export
    from hpa_tf.data import pipeline
    from hpa_tf.data.resize import read_cached_rgby
    from hpa_tf.inference.predict import tta_probabilities

    parameters = inspect.signature(export.export_classifier).parameters
    assert "crop_size" in parameters, ("hpa_tf.export.export_classifier has no crop_size parameter yet "
                                       f"(its parameters: {list(parameters)})")
    timings = {}
    start = time.perf_counter()
    model, config, layout = _i768_classifier(args)
    timings["build_s"] = time.perf_counter() - start
    frame = _test_frame(layout, 1)
    image = read_cached_rgby(layout, "kaggle", "test", frame["Id"][0], config.img_size)[None]  # uint8
    features = check_features(model, tf.image.resize(image / 255.0, [config.crop_size] * 2), "i768")
    thresholds = np.full(28, 0.5, np.float32)
    folder = export.next_version(args.work / "serving" / "classifier")
    start = time.perf_counter()
    export.export_classifier([model], thresholds, folder, crop_size=config.crop_size)
    timings["export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    loaded = tf.saved_model.load(str(folder))
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    outputs = loaded.signatures["serving_uint8"](images=tf.constant(image))
    timings["serve_s"] = time.perf_counter() - start
    probs, labels = outputs["probabilities"].numpy(), outputs["labels"].numpy()
    _check_probabilities(probs, (1, 28))
    assert labels.shape == (1, 28) and set(np.unique(labels)) <= {0, 1} and labels.sum() >= 1, \
        f"labels {labels.shape} {np.unique(labels)} (the top-1 rule keeps at least one)"
    # What the SavedModel promises: the 8 dihedral views of the whole image resized to crop_size, combined
    # by max, as tta_probabilities' seed 0 computes them.
    tta = tta_probabilities(model, pipeline.Source(layout, config.img_size, "test"), frame, config.crop_size,
                            seeds=(0,), batch_size=1)
    gap = float(np.abs(tta - probs).max())
    assert gap < 1e-4, f"serving_uint8 differs from tta_probabilities (seed 0, max) by {gap:.2e}"
    return {"batch": "1x8", **timings, "features": features, "tta_gap": gap,
            "summary": f"{config.img_size} px uint8 -> {config.crop_size} x 8 views, probabilities (1, 28), "
                       f"= TTA within {gap:.1e}; export {timings['export_s']:.1f} s, "
                       f"load {timings['load_s']:.1f} s, "
                       f"serve {timings['serve_s']:.1f} s"}


def stage_import(args, stage: str) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the original's PyTorch classes
    from original_nets import DensenetClass, ResnetClass, save_like_the_original, with_running_statistics

    from hpa_tf.models.import_original import import_original
    from hpa_tf.models.loading import load_classifier, load_embedder

    arch, side = IMPORTS[stage]
    torch.manual_seed(args.seed)
    metric = arch == "class_resnet50_dropout"
    original = ResnetClass(args.arc_classes or ARC_CLASSES) if metric else \
        DensenetClass(large="large" in arch)
    original = with_running_statistics(original, seed=args.seed)
    checkpoint = args.work / f"{arch}.pth"
    save_like_the_original(original, checkpoint, legacy=True)
    timings = {}
    start = time.perf_counter()
    run = import_original(checkpoint, arch, args.work / "imported" / arch)
    timings["import_s"] = time.perf_counter() - start
    model, _ = (load_embedder if metric else load_classifier)(run.root)
    image = np.random.default_rng(args.seed).random((side, side, 4)).astype(np.float32)
    views = np.stack([np.rot90(np.fliplr(image) if flip else image, k) for flip in (0, 1) for k in range(4)])
    start = time.perf_counter()
    keras_out = np.asarray(model.predict(views, batch_size=args.batch, verbose=0))
    timings["keras_tta_s"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        torch_out = original(torch.from_numpy(views.transpose(0, 3, 1, 2).copy()))
    timings["torch_tta_s"] = time.perf_counter() - start
    torch_out = (torch_out[1] if metric else torch_out).numpy()
    error = float(np.abs(keras_out - torch_out).max() / np.abs(torch_out).max())
    assert error < 1e-4, f"{arch}: relative max error {error:.1e} against PyTorch"
    return {"batch": "8 views", **timings, "error": error,
            "summary": f"{arch}: import {timings['import_s']:.1f} s, 8 views at {side} px: Keras "
                       f"{timings['keras_tta_s']:.1f} s, PyTorch {timings['torch_tta_s']:.1f} s, "
                       f"{'embedding' if metric else 'logit'} relative max error {error:.1e}"}


def run_stage(args) -> int:
    """Run one stage in this process; writes its result (or its error) to --result."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    functions = {"prepare": stage_prepare, "train-i768": lambda a: stage_train(a, "i768"),
                 "train-i1536": lambda a: stage_train(a, "i1536"), "metric-i768": stage_metric,
                 "tta-768": stage_tta, "export-i768": stage_export,
                 **{stage: lambda a, stage=stage: stage_import(a, stage) for stage in IMPORTS}}
    try:
        result = {"ok": True, **functions[args.stage](args)}
        code = 0
    except Exception as exc:  # reported in the table; the traceback goes to stderr
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        code = 1
    result["self_peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.result is not None:
        args.result.write_text(json.dumps(result))
    return code


# ------------------------------------------------------------------------------------------ the driver

def child_command(args, stage: str, result: Path) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--result", str(result),
               "--work", str(args.work), "--batch", str(args.batch), "--seed", str(args.seed),
               "--steps", str(args.steps), "--workers", str(args.workers),
               "--tta-images", str(args.tta_images),
               "--arc-classes", str(args.arc_classes), "--precision", args.precision]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    return command


def run_child(args, stage: str) -> dict:
    """Run a stage in a fresh process; its wall time and peak RSS (its own, from wait4) with its result."""
    result_file = args.work / f".result-{stage}.json"
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    print(f"--- {stage}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(child_command(args, stage, result_file), env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    result = json.loads(result_file.read_text()) if result_file.is_file() else \
        {"ok": False, "error": f"exited {process.returncode} without a result (killed, out of memory?)"}
    if result["ok"] and process.returncode:
        result = {**result, "ok": False, "error": f"exit status {process.returncode}"}
    return {"stage": stage, "seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20, **result}


def print_table(rows: list[dict]) -> None:
    header = ("stage", "batch", "seconds", "peak RSS", "result")
    lines = [(r["stage"], r.get("batch", "-"), f"{r['seconds']:.1f}", f"{r['peak_rss_gib']:.2f} GiB",
              r["summary"] if r["ok"] else f"FAILED: {r['error']}") for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    for line in (header, tuple("-" * w for w in widths), *lines):
        print(" | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_rss_gib"] for r in rows), default=0.0)
    failed = [r["stage"] for r in rows if not r["ok"]]
    print(f"total {total:.1f} s, largest peak RSS {peak:.2f} GiB; "
          + (f"FAILED: {', '.join(failed)}" if failed else "all stages passed"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage is not None:
        if args.work is None:
            print("error: --stage needs --work", file=sys.stderr)
            return 2
        return run_stage(args)
    temporary = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="real_profiles-")) if temporary else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    stages = [s for s in STAGES if s in args.stages]  # the table's order
    prepared = all((data_root(args) / "meta" / f"cache_manifest_{s}.csv").is_file() for s in SIZES)
    if args.data_dir is None and "prepare" not in stages and not prepared:
        stages.insert(0, "prepare")  # every other stage reads the prepared data
    rows = []
    try:
        for stage in stages:
            rows.append(run_child(args, stage))
            if stage == "prepare" and not rows[-1]["ok"]:
                break  # nothing else can run without the data
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
        elif rows:
            print(f"working folder kept: {args.work}")
    print()
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
