"""The prepared one-GPU check (run by benchmarks/gpu_check.sh): every figure README's GPU table needs, in one
run of under 8 minutes on one GPU, printed as one table.

1. `train_classifier` on the synthetic data at 768 -> 512 from TFRecords with on-device augmentation
   (the real pipeline and training loop, one epoch of a few hundred images), images/s after the first
   steps and the mean GPU utilisation from `nvidia-smi` when it is there;
2. TTA inference (8 dihedral views of each whole test image, the fold just trained), images/s;
3. the model step (`benchmarks/train_step.py`, Keras fit path, in-memory batch) of the i768 classifier at
   crop 512: batch 32 and 64, fp32 and bf16, without and with XLA, each in its own process, sharing the
   time the first parts left of the budget (a run over its share shows "over N s"); images/s and MFU
   (training ~ 3 x forward FLOPs against the H200's peak).

    bash benchmarks/gpu_check.sh                  # on a machine with one GPU
    bash benchmarks/gpu_check.sh --cpu-smoke      # tiny settings on CPU: what CI runs

Last line: `gpu_check: done (<device>)`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout


@dataclass(frozen=True)
class Settings:
    """Sizes of one check: the reference's i768 run on a GPU, tiny ones for the CPU smoke test."""

    backbone: str
    crop: int
    img: int
    batches: tuple[int, ...]
    steps: int
    train_images: int
    budget_s: int  # the whole check; the model steps share what the training and TTA parts left


GPU = Settings("densenet121", 512, 768, (32, 64), 20, 640, 440)
SMOKE = Settings("densenet_1_1_1_1", 32, 64, (2, 4), 2, 48, 900)
PEAK_TFLOPS = {"fp32": 67.0, "bf16": 989.0}  # H200 SXM dense: FP32 (no tensor cores), BF16 tensor cores
# (MFU is shown on a GPU only, against these peaks)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_steps(settings: Settings, deadline: float) -> list[dict]:
    """images/s of the fit path for every batch x precision x XLA, each run of train_step.py in its own
    process (a clean dtype policy and device memory), sharing the time left before `deadline` equally."""
    runs = [(b, p, v) for b in settings.batches for p in ("fp32", "bf16") for v in ("fit", "fit-jit")]
    rows, flops = [], None
    for n, (batch, precision, variant) in enumerate(runs):
        limit = max(1, int((deadline - time.perf_counter()) / (len(runs) - n)))
        command = [sys.executable, str(HERE / "train_step.py"), "--backbone", settings.backbone,
                   "--crop", str(settings.crop), "--batch", str(batch), "--precision", precision,
                   "--variants", variant, "--steps", str(settings.steps), "--rounds", "2", "--warmup", "1"]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
            output = done.stdout + done.stderr
            rate = re.search(r"train_images_per_s: ([0-9.]+)", output)
            found = re.search(r"forward GFLOPs per image: ([0-9.]+)", output)
            flops = float(found.group(1)) if found else flops
            result = float(rate.group(1)) if rate else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            result = f"over {limit} s"
        xla = "XLA" if variant.endswith("jit") else "no XLA"
        rows.append({"part": "model step", "precision": precision, "images_per_s": result,
                     "setting": f"batch {batch} {precision} {xla}"})
        log(f"model step batch {batch} {precision} {variant}: {result} ({time.perf_counter() - start:.0f} s)")
    for row in rows:
        row["gflops"] = flops
    return rows


def synthetic_data(folder: Path, settings: Settings, smoke: bool) -> Path:
    """A prepared synthetic dataset with caches and TFRecord shards at the check's image size: the demo
    preset's first train images (the tiny preset for the smoke test)."""
    sys.path.insert(0, str(HERE))
    from input_pipeline import make_subset

    from hpa_tf.data.prepare import prepare
    from hpa_tf.data.synthetic import generate

    raw = generate(folder / "raw", "tiny" if smoke else "demo", 0, progress=False)
    subset = make_subset(raw, folder / "subset", settings.train_images, n_other=32)
    prepare(subset, sizes=[settings.img], progress=False, tfrecords=True)
    return subset


class Utilisation:
    """Mean GPU utilisation sampled by `nvidia-smi` while a block runs (None without nvidia-smi)."""

    def __enter__(self):
        self.samples = None
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "250"],
                stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            output, _ = self.process.communicate()
            values = [float(v) for v in output.split() if v.replace(".", "", 1).isdigit()]
            self.samples = sum(values) / len(values) if values else None
        return False


def training_and_tta(data_dir: Path, out: Path, settings: Settings, smoke: bool) -> list[dict]:
    """One epoch of train_classifier (TFRecords, on-device augmentation), its images/s after the first
    steps, then TTA images/s of the trained fold on the test images."""
    import keras
    import pandas as pd

    from hpa_tf.config import classifier_config
    from hpa_tf.data import pipeline
    from hpa_tf.inference.predict import seed_probabilities
    from hpa_tf.layout import DataLayout
    from hpa_tf.models.loading import load_classifier
    from hpa_tf.training.classifier import train_classifier

    class Timer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    batch = settings.batches[0]
    config = classifier_config("demo" if smoke else "i768", data_dir=str(data_dir), out_dir=str(out),
                               backbone=settings.backbone, weights=None, img_size=settings.img,
                               crop_size=settings.crop, batch_size=batch, epochs=1, tfrecords=True,
                               device_augment=True)
    timer = Timer()
    with Utilisation() as gpu:
        train_classifier(config, callbacks=[timer], progress=False)
    times = timer.times[2:]  # after compilation and the first steps
    rate = batch * (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else "too few steps"
    rows = [{"part": "train_classifier", "setting": f"{settings.img} -> {settings.crop}, batch {batch}, "
             f"TFRecords + device augment, {len(timer.times)} steps", "precision": "fp32",
             "images_per_s": rate, "gpu_util": gpu.samples}]
    model, _ = load_classifier(out / config.run_name / "fold0")
    layout = DataLayout(data_dir)
    test = pd.read_csv(layout.sample_submission_csv, dtype=str)[["Id"]]
    source = pipeline.Source(layout, settings.img, "test", tfrecords=True)
    seed_probabilities(model, source, test.head(4), settings.crop, (0,), batch_size=4)  # compile
    start = time.perf_counter()
    with Utilisation() as gpu:
        seed_probabilities(model, source, test, settings.crop, (0,), batch_size=4)
    rows.append({"part": "TTA inference", "setting": f"8 views of {len(test)} whole {settings.img} px "
                 f"images at {settings.crop}", "precision": "fp32",
                 "images_per_s": len(test) / (time.perf_counter() - start), "gpu_util": gpu.samples})
    return rows


def print_table(rows: list[dict], device: str) -> None:
    """The check's table: images/s and, where FLOPs are known, MFU against the device's peak."""
    print(f"\nGPU check on {device}")
    print(f"{'part':<17} {'setting':<58} {'images/s':>10} {'MFU':>6} {'GPU util':>8}")
    for row in rows:
        rate = row["images_per_s"]
        mfu = ""
        if isinstance(rate, float) and row.get("gflops") and device != "CPU":
            mfu = f"{rate * 3 * row['gflops'] / (PEAK_TFLOPS[row['precision']] * 1e3):.1%}"
        util = "" if row.get("gpu_util") is None else f"{row['gpu_util']:.0f}%"
        shown = f"{rate:10.1f}" if isinstance(rate, float) else f"{rate:>10}"
        print(f"{row['part']:<17} {row['setting']:<58} {shown} {mfu:>6} {util:>8}")
    gflops = next((row["gflops"] for row in rows if row.get("gflops")), None)
    if gflops:
        print(f"forward GFLOPs per image {gflops:.2f}; MFU = images/s x 3 x forward FLOPs / peak "
              f"({PEAK_TFLOPS['fp32']:.0f} TFLOP/s fp32, {PEAK_TFLOPS['bf16']:.0f} bf16: H200)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny settings (small DenseNet, 64 -> 32 px, tiny dataset): minutes on CPU")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.cpu_smoke:
        parser.error("no GPU visible to TensorFlow: run on a GPU machine, or pass --cpu-smoke")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    settings = SMOKE if args.cpu_smoke else GPU
    log(f"gpu_check on {device}: {settings}")
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="hpa_tf_gpu_check_"))
    try:  # the real pipeline first: the model steps share whatever time is left
        data = synthetic_data(folder / "data", settings, args.cpu_smoke)
        log(f"synthetic data prepared at {settings.img} px with TFRecords "
            f"({time.perf_counter() - start:.0f} s)")
        rows = training_and_tta(data, folder / "runs", settings, args.cpu_smoke)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = model_steps(settings, start + settings.budget_s) + rows
    print_table(rows, device)
    print(f"total {time.perf_counter() - start:.0f} s")
    print(f"gpu_check: done ({device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
