"""Benchmark of the training input pipeline (spec 5.1, 5.2): our tf.data `train_dataset` against a
reference-style loader, over the same PNG resize caches, and ours again from the TFRecord shards.

Run from the repository root: `python benchmarks/input_pipeline.py` (a few minutes on 2 CPU cores; pass
`--data-dir` to keep the prepared data and reuse it on the next run).

Data: the synthetic demo dataset (256 px), of which the first train, test and HPAv18 images are linked into
a small dataset that `prepare` turns into 256 and 768 px caches (768 px ones are upsampled, which is
fine for throughput) and TFRecord shards. The rows are the Kaggle rows of fold 0's training split
(`random_ext_folds5/random_train_cv0.csv`), at most `--limit` of them.

Loaders, each producing batches (images float32 [B, crop, crop, 4] in [0, 1], labels [B, 28]):
  ours (PNG)            `train_dataset(Source(layout, size), frame, crop, B)`
  reference-style       what the reference's PyTorch DataLoader does, without torch and OpenCV: a process
                        pool of `--workers` workers (`imap` over row indices in a shuffled order); each
                        worker reads the 4 channel PNGs with PIL, stacks them HWC uint8, cuts the
                        random-scale window of spec 5.1 with numpy's RNG, resizes it with PIL bilinear per
                        channel, applies one of the 8 dihedral flips with numpy and divides by 255 to
                        float32; each image is pickled back through the pool's pipe and the parent
                        stacks the batches. This is the headline's denominator.
  reference-style shm   the same work per image, but a worker makes a whole batch and collates it into
                        shared memory, as torch's DataLoader does (its batches cross processes as shared
                        memory, not through a pipe); the parent copies the batch out. Pickling a 4 MB
                        float32 image through a pipe costs about as much CPU as decoding its 4 PNGs, so
                        this is the closer stand-in for the reference and the harder one to beat.
  ours (TFRecord)       `train_dataset(Source(layout, size, tfrecords=True), frame, crop, B)`
  ours (TFRecord, dev)  the same with `on_device=True`: the CPU part of `--device-augment`, batches of uint8
                        cache images and their crop plans; the crop, resize and flips run in the training
                        step on the accelerator (tested equal to the CPU path), so they are not timed here

Each measurement times one whole epoch of the rows (floor(rows / B) batches) from the first request to
the last batch, so that start-up latency (decoding ahead, filling buffers) counts for every loader.
Excluded are the construction of the loader and a warm-up (one batch from a dataset
of B rows for ours; starting the pool and one batch through it for the reference-style loader). The
loaders take turns, in a rotated order each round, and the median rate over the rounds is reported.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hpa_tf.labels import targets_to_matrix  # noqa: E402
from hpa_tf.layout import COLORS, DataLayout  # noqa: E402

# (name, cache size, crop size): the reference's first profile and a small one
SETTINGS = (("768 -> 512", 768, 512), ("256 -> 192", 256, 192))
SPLIT_FILE = Path("random_ext_folds5") / "random_train_cv0.csv"
SEED = 0
REFERENCE, REFERENCE_SHM = "reference-style (PNG)", "reference-style shm (PNG)"
TFRECORD, DEVICE = "ours (TFRecord)", "ours (TFRecord, dev)"
LOADERS = ("ours (PNG)", REFERENCE, REFERENCE_SHM, TFRECORD, DEVICE)
# The 8 dihedral transforms of spec 5.2 as (flipud, fliplr, transpose), applied in that order.
FLIPS = ((False, False, False), (True, False, False), (False, True, False), (False, False, True),
         (True, True, False), (True, False, True), (False, True, True), (True, True, True))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- data

def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links
        shutil.copy2(source, target)


def make_subset(demo: Path, out: Path, n_train: int, n_other: int) -> Path:
    """A dataset of the demo's first n_train train images and n_other test and HPAv18 images (hard links
    to its raw files), so that preparing 768 px caches takes a minute instead of a quarter of an hour."""
    if (out / "raw" / "train.csv").is_file():
        return out
    building = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    src, dst = DataLayout(demo), DataLayout(building)
    tables = {}
    for name, n in (("train_csv", n_train), ("sample_submission_csv", n_other), ("external_csv", n_other)):
        frame = pd.read_csv(getattr(src, name), dtype=str, keep_default_na=False).head(n)
        getattr(dst, name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(getattr(dst, name), index=False)
        tables[name] = frame["Id"].tolist()
    shutil.copy2(src.raw_dir / "synthetic_info.json", dst.raw_dir / "synthetic_info.json")
    for split, name in (("train", "train_csv"), ("test", "sample_submission_csv")):
        for image_id in tables[name]:
            for color in COLORS:
                _link(src.kaggle_png(split, image_id, color), dst.kaggle_png(split, image_id, color))
                if src.kaggle_tif(split, image_id, color).is_file():
                    _link(src.kaggle_tif(split, image_id, color), dst.kaggle_tif(split, image_id, color))
    for image_id in tables["external_csv"]:
        for color in COLORS:
            _link(src.external_jpg(image_id, color), dst.external_jpg(image_id, color))
    building.rename(out)
    return out


def prepare_data(data_dir: Path, limit: int, workers: int) -> DataLayout:
    """Generate the demo dataset (or reuse it), slice it and prepare the slice at 256 and 768 px with
    TFRecords; prepare is resumable, so a second run only checks."""
    from hpa_tf.data.prepare import prepare
    from hpa_tf.data.synthetic import generate

    demo = data_dir / "demo"
    if not (demo / "raw" / "train.csv").is_file():
        start = time.perf_counter()
        generate(demo, "demo", SEED, progress=False)
        log(f"generated the synthetic demo dataset in {time.perf_counter() - start:.0f} s: {demo}")
    # fold 0 trains on ~80% of the Kaggle rows: enough images for `limit` rows and a few to spare
    n_train = min(len(pd.read_csv(DataLayout(demo).train_csv)), int(limit / 0.8) + 32)
    subset = make_subset(demo, data_dir / f"demo_first{n_train}", n_train, n_other=32)
    start = time.perf_counter()
    prepare(subset, sizes=[size for _, size, _ in SETTINGS], workers=workers, progress=False, tfrecords=True)
    log(f"prepared {n_train} train images at {[s for _, s, _ in SETTINGS]} px with TFRecords in "
        f"{time.perf_counter() - start:.0f} s: {subset}")
    return DataLayout(subset)


def training_rows(layout: DataLayout, limit: int) -> pd.DataFrame:
    frame = pd.read_csv(layout.split_dir / SPLIT_FILE, dtype={"Id": str, "Target": str},
                        keep_default_na=False)
    kaggle = frame[~frame["External"].astype(str).str.lower().eq("true")]
    return kaggle.head(limit).reset_index(drop=True)


# ---------------------------------------------------------------------------- reference-style loader

_WORKER: dict = {}


def _init_worker(paths: list[list[str]], labels: np.ndarray, img_size: int, crop_size: int) -> None:
    _WORKER.update(paths=paths, labels=labels, img_size=img_size, crop_size=crop_size)


def _read_gray(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image if image.mode == "L" else image.convert("L"))


def reference_item(task: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One training example as the reference's ProteinDataset + train_multi_augment2 make it (spec 5.1,
    5.2), HWC: read R, G, B, Y; random-scale crop; bilinear resize; one of 8 flips; / 255."""
    index, draw = task
    img_size, crop_size = _WORKER["img_size"], _WORKER["crop_size"]
    rng = np.random.default_rng([SEED, draw, index])
    image = np.stack([_read_gray(p) for p in _WORKER["paths"][index]], axis=-1)
    side = int(rng.uniform(crop_size, img_size))
    row, col = int(rng.uniform(0, img_size - side)), int(rng.uniform(0, img_size - side))
    image = image[row:row + side, col:col + side]
    if image.shape[0] != crop_size or image.shape[1] != crop_size:
        image = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))
                                     .resize((crop_size, crop_size), Image.BILINEAR))
                          for c in range(image.shape[-1])], axis=-1)
    flipud, fliplr, transpose = FLIPS[int(rng.choice(len(FLIPS)))]
    if flipud:
        image = np.flipud(image)
    if fliplr:
        image = np.fliplr(image)
    if transpose:
        image = image.transpose(1, 0, 2)
    return np.divide(image, 255.0, dtype=np.float32, order="C"), _WORKER["labels"][index]


def reference_batches(pool, order: np.ndarray, draw: int, batch_size: int):
    """Batches (images, labels) over the indices in `order` (drop_last), as the DataLoader's parent."""
    items = pool.imap(reference_item, [(int(i), draw) for i in order], chunksize=2)
    for _ in range(len(order) // batch_size):
        examples = [next(items) for _ in range(batch_size)]
        yield np.stack([x for x, _ in examples]), np.stack([y for _, y in examples])


def reference_shm_batch(task: tuple[tuple[int, ...], int]) -> tuple[str, tuple, np.ndarray]:
    """A worker's whole batch, collated into a new shared-memory block: (its name, shape, labels)."""
    indices, draw = task
    crop_size = _WORKER["crop_size"]
    shape = (len(indices), crop_size, crop_size, 4)
    block = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)) * 4)
    images = np.ndarray(shape, np.float32, buffer=block.buf)
    labels = np.empty((len(indices), _WORKER["labels"].shape[1]), np.float32)
    for j, index in enumerate(indices):
        images[j], labels[j] = reference_item((index, draw))
    del images  # no view may outlive close()
    block.close()
    return block.name, shape, labels


def reference_shm_batches(pool, order: np.ndarray, draw: int, batch_size: int):
    """Batches (images, labels) over `order` (drop_last), one batch per task, through shared memory."""
    tasks = [(tuple(int(i) for i in order[k:k + batch_size]), draw)
             for k in range(0, len(order) - batch_size + 1, batch_size)]
    for name, shape, labels in pool.imap(reference_shm_batch, tasks):
        block = shared_memory.SharedMemory(name=name)
        try:
            images = np.array(np.ndarray(shape, np.float32, buffer=block.buf))
        finally:
            block.close()
            block.unlink()
        yield images, labels


# -------------------------------------------------------------------------------------------- timing

def workers_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (Linux /proc; NaN elsewhere)."""
    total = 0
    for pid in pids:
        try:  # /proc/PID/stat: after the ")" that ends the name, utime and stime are fields 12 and 13
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return float("nan")
    return total / os.sysconf("SC_CLK_TCK")


def time_epoch(batches, cpu_seconds=time.process_time) -> tuple[int, float, float, float]:
    """(images, seconds to the first batch, seconds for all, CPU seconds for all) of iterating a batch
    iterator to its end; cpu_seconds() is the CPU time of the loader's processes so far."""
    cpu, start = cpu_seconds(), time.perf_counter()
    first, images = None, 0
    for x, _ in batches:
        images += int(x.shape[0])
        if first is None:
            first = time.perf_counter() - start
    return images, first or 0.0, time.perf_counter() - start, cpu_seconds() - cpu


def measure_ours(layout: DataLayout, frame: pd.DataFrame, img_size: int, crop_size: int, batch_size: int,
                 tfrecords: bool, draw: int, on_device: bool = False) -> tuple[int, float, float, float]:
    from hpa_tf.data.pipeline import IMAGES, Source, train_dataset

    source = Source(layout, img_size, tfrecords=tfrecords)
    warm = train_dataset(source, frame.head(batch_size), crop_size, batch_size, seed=10_000 + draw,
                         on_device=on_device)
    next(iter(warm))
    dataset = train_dataset(source, frame, crop_size, batch_size, seed=draw, on_device=on_device)
    iterator = iter(dataset)
    return time_epoch(((x[IMAGES] if on_device else x).numpy(), y.numpy()) for x, y in iterator)


def measure_reference(pool, n_rows: int, batch_size: int, draw: int, shm: bool
                      ) -> tuple[int, float, float, float]:
    batches = reference_shm_batches if shm else reference_batches
    rng = np.random.default_rng([SEED, draw])
    for _ in batches(pool, rng.permutation(n_rows)[:batch_size], 10_000 + draw, batch_size):
        pass  # warm-up: the workers have started and imported
    pids = [process.pid for process in getattr(pool, "_pool", [])]  # the workers (a private attribute)
    return time_epoch(batches(pool, rng.permutation(n_rows), draw, batch_size),
                      lambda: time.process_time() + workers_cpu_seconds(pids))


def run_setting(layout: DataLayout, frame: pd.DataFrame, img_size: int, crop_size: int, args,
                setting: str) -> dict[str, list[tuple[int, float, float, float]]]:
    from hpa_tf.data.pipeline import Source, cache_files

    paths = cache_files(Source(layout, img_size), frame).tolist()  # the same files ours reads
    labels = targets_to_matrix(frame["Target"].astype(str))
    results: dict[str, list] = {name: [] for name in LOADERS}
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, _init_worker, (paths, labels, img_size, crop_size)) as pool:
        for r in range(args.rounds):
            for k in range(len(LOADERS)):
                name = LOADERS[(r + k) % len(LOADERS)]  # the order rotates from round to round
                if name in (REFERENCE, REFERENCE_SHM):
                    result = measure_reference(pool, len(frame), args.batch_size, r, name == REFERENCE_SHM)
                else:
                    result = measure_ours(layout, frame, img_size, crop_size, args.batch_size,
                                          name in (TFRECORD, DEVICE), r, on_device=name == DEVICE)
                results[name].append(result)
                images, first, seconds, cpu = result
                log(f"  {setting} round {r + 1}/{args.rounds} {name:<26} {images / seconds:7.1f} img/s, "
                    f"first batch {first:5.2f} s, {images} images in {seconds:4.1f} s, "
                    f"{1000 * cpu / images:5.1f} CPU ms/image")
    return results


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the synthetic dataset is generated and prepared, or reused from an "
                             "earlier run (default: a temporary folder, removed at the end)")
    parser.add_argument("--limit", type=int, default=400, help="training rows per epoch (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per loader (default 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes of the reference-style loader and of prepare (default: all cores)")
    args = parser.parse_args(argv)
    if min(args.limit, args.rounds, args.batch_size, args.workers) < 1:
        parser.error("--limit, --rounds, --batch-size and --workers must be positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="hpa_tf_input_pipeline_")) if temporary else args.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        layout = prepare_data(data_dir, args.limit, args.workers)
        frame = training_rows(layout, args.limit)
        if len(frame) < args.batch_size:
            parser.error(f"only {len(frame)} training rows, fewer than one batch")
        log(f"{len(frame)} Kaggle rows of {SPLIT_FILE}, batch {args.batch_size}, "
            f"{args.workers} reference-style workers, {os.cpu_count()} cores")
        rows = []
        for setting, img_size, crop_size in SETTINGS:
            results = run_setting(layout, frame, img_size, crop_size, args, setting)
            def median(of, results=results):
                return {name: statistics.median(of(*run) for run in runs) for name, runs in results.items()}

            rates, firsts = median(lambda n, f, t, c: n / t), median(lambda n, f, t, c: f)
            cpus = median(lambda n, f, t, c: 1000 * c / n)
            rows.append((setting, rates, firsts, cpus))
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)

    print(f"\ntraining input pipeline, {len(frame)} images per epoch, batch {args.batch_size}, "
          f"median of {args.rounds} rounds, {os.cpu_count()} cores, {args.workers} reference-style workers")
    cores = os.cpu_count() or 1
    print(f"{'setting':<11} {'loader':<26} {'images/s':>8} {'per core':>8} {'ours / ref-style':>17} "
          f"{'ours / ref shm':>15} {'first batch s':>14} {'CPU ms/image':>13}")
    for setting, rates, firsts, cpus in rows:
        for name in LOADERS:
            ratios = ["" if name.startswith("reference") else f"{rates[name] / rates[r]:.2f}x"
                      for r in (REFERENCE, REFERENCE_SHM)]
            print(f"{setting:<11} {name:<26} {rates[name]:8.1f} {rates[name] / cores:8.1f} {ratios[0]:>17} "
                  f"{ratios[1]:>15} {firsts[name]:14.2f} {cpus[name]:13.1f}")
    print("CPU ms/image: user + system time of the loader's processes (TensorFlow's idle threads spin for a "
          "while, which counts)")
    headline = rows[0][1]
    print(f"input_pipeline_speedup: {headline['ours (PNG)'] / headline[REFERENCE]:.2f}x")
    fastest = max((name for name in LOADERS if not name.startswith("reference")), key=headline.get)
    print(f"input_pipeline_per_core: {headline[fastest] / cores:.1f} images/s ({fastest}, "
          f"{rows[0][0]}; {headline[fastest] / headline[REFERENCE]:.2f}x the reference-style loader)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
