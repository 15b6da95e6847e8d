"""Latencies of the curators' image pages at the real profile (i768: DenseNet121, 768 -> 512 px, 5 folds),
with random weights, through the package's own web app (FastAPI's in-process client: the server's time,
no network).

Stages the runs as real_profiles.py does: the synthetic `tiny` dataset prepared at 768 px, five i768 fold
folders (config.json as training writes it, one random-weight checkpoint each), and a metric run holding
only random embeddings (used as they are without a checkpoint). The probability files are written at
HPA's size: the submission's for 11,702 test Ids, the validation's out-of-fold ones for 105,072
training Ids (the tiny images' and made-up ones), so that a page reads a file of the real size; the
annotated pool each page searches is padded to 105,072 images too.

    python benchmarks/curator_pages.py                  # in a temporary folder
    python benchmarks/curator_pages.py --work /tmp/cp   # keeps the prepared data for a rerun

Prints one table (request, seconds) and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TEST_ROWS, TRAIN_ROWS = 11_702, 105_072  # Kaggle test; Kaggle train + HPAv18 (the out-of-fold rows)
POOL_ROWS = TRAIN_ROWS  # the annotated images a page searches for its nearest ones
FOLDS = 5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Image page latencies of `infer.py --serve` at the i768 "
                                                 "profile with 5 random-weight folds.")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: temporary)")
    parser.add_argument("--repeat", type=int, default=3, help="requests per warm measurement (median)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be positive, got {args.repeat}")
    return args


def stage(work: Path) -> dict:
    """The prepared data, the five fold folders, the metric run and the probability files; returns the
    config values and the Ids the benchmark asks for."""
    import numpy as np
    import pandas as pd

    from hpa_tf.atomic import save_weights_atomic, write_json_atomic
    from hpa_tf.config import classifier_config
    from hpa_tf.data.prepare import prepare
    from hpa_tf.data.synthetic import generate
    from hpa_tf.embeddings import save_embeddings
    from hpa_tf.inference.predict import write_probabilities
    from hpa_tf.layout import DataLayout, RunLayout, SubmissionFiles, ValidationFiles
    from hpa_tf.models.loading import build_run_model

    root = work / "data"
    if not (root / "meta" / "cache_manifest_768.csv").is_file():
        generate(root, preset="tiny", seed=0, progress=False, overwrite=True)
        prepare(root, sizes=[768], workers=2, progress=False)
    layout = DataLayout(root)
    runs = work / "runs"
    model = None
    for fold in range(FOLDS):
        config = classifier_config("i768", data_dir=str(root), weights="none", fold=fold, out_dir=str(runs))
        run = RunLayout(runs / config.run_name / f"fold{fold}")
        if not run.best_weights.is_file():
            model = model or build_run_model(config)
            write_json_atomic({**dataclasses.asdict(config), "replicas": 1}, run.config_json)
            save_weights_atomic(model, run.best_weights)
    rng = np.random.default_rng(0)
    test_ids = pd.read_csv(layout.sample_submission_csv, dtype=str)["Id"].tolist()
    kaggle_ids = layout.read_meta("train_meta.csv")["Id"].drop_duplicates().tolist()
    ext_ids = layout.read_meta("external_meta.csv")["Id"].drop_duplicates().tolist()
    metric = RunLayout(runs / "metric_i768")
    padding = [f"padding-{n}" for n in range(TEST_ROWS - len(test_ids))]
    for name, ids in (("test", test_ids + padding), ("kaggle", kaggle_ids), ("ext", ext_ids)):
        save_embeddings(metric.embeddings(name), rng.normal(size=(len(ids), 512)), ids)
    output, validation = work / "submission.csv", work / "validation.csv"
    thresholds = np.full(28, 0.5)
    probs = rng.random((TEST_ROWS, 28)).astype(np.float32) * 0.4  # below 0.5: the top-1 rule's label ...
    probs[0, [0, 25]] = 0.9  # ... and for the first test image two labels, each with a map to draw
    write_probabilities(SubmissionFiles(output), pd.DataFrame({"Id": test_ids + padding}), probs, thresholds)
    write_json_atomic({"thresholds": thresholds.tolist(), "combine": "max", "views": None, "fitted": True},
                      SubmissionFiles(output).serving)
    oof_ids = kaggle_ids[1:] + ext_ids[1:]  # the first of each has none: predicted on its page
    oof_ids += [f"padding-{n}" for n in range(TRAIN_ROWS - len(oof_ids))]
    write_probabilities(ValidationFiles(validation), pd.DataFrame({"Id": oof_ids, "fold": 0}),
                        rng.random((TRAIN_ROWS, 28)).astype(np.float32), thresholds)
    return {"runs": str(runs), "data_dir": str(root), "output": str(output),
            "validation_csv": str(validation), "test": test_ids[0], "train": kaggle_ids[2],
            "uncached": [kaggle_ids[0], ext_ids[0]]}


def padded_pool(pool, rows: int):
    """The annotated pool with made-up rows (random vectors, no files) up to `rows`: every page searches
    the nearest annotated images among as many as HPA's."""
    import numpy as np
    import pandas as pd

    from hpa_tf.curation.pool import AnnotatedPool
    from hpa_tf.embeddings import l2_normalize

    extra = rows - len(pool.frame)
    padding = pd.DataFrame({"Id": [f"pool-padding-{n}" for n in range(extra)], "set": "ext", "Target": "0",
                            "antibody": ""})
    vectors = l2_normalize(np.random.default_rng(1).normal(size=(extra, pool.space.shape[1])))
    return AnnotatedPool(pd.concat([pool.frame, padding], ignore_index=True),
                         np.concatenate([pool.space, vectors]).astype(np.float32))


def timed(client, path: str) -> float:
    start = time.perf_counter()
    response = client.get(path)
    seconds = time.perf_counter() - start
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = args.work or Path(tempfile.mkdtemp(prefix="curator_pages-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        from fastapi.testclient import TestClient

        from hpa_tf.config import InferenceConfig
        from hpa_tf.curation.web import create_app, open_curation
        from hpa_tf.output import setup_logging

        setup_logging(quiet=True)
        staged = stage(work)
        uncached = staged.pop("uncached")
        ids = {name: staged.pop(name) for name in ("test", "train")}
        config = InferenceConfig(**staged, run="i768", metric_run=str(Path(staged["runs"]) / "metric_i768"))
        curation = open_curation(config)
        curation.pool = padded_pool(curation.pool, POOL_ROWS)
        for image_id in uncached:
            curation.predictions.cache.file(image_id).unlink(missing_ok=True)
        client = TestClient(create_app(curation, allowed_hosts=["testserver"]))
        timed(client, "/")  # the app and its templates once
        rows = []

        def median(path: str) -> float:
            return statistics.median(timed(client, path) for _ in range(args.repeat))

        rows.append(("test image, the submission's probabilities", median(f"/image/{ids['test']}")))
        rows.append(("training image, out-of-fold probabilities", median(f"/image/{ids['train']}")))
        rows.append(("image without probabilities, first request (loads the 5 folds)",
                     timed(client, f"/image/{uncached[0]}")))
        rows.append(("the same image again (its cache file)", median(f"/image/{uncached[0]}")))
        rows.append(("another image without probabilities, first request",
                     timed(client, f"/image/{uncached[1]}")))
        rows.append(("Grad-CAM map of a test image (2 labels x 5 folds, first)",
                     timed(client, f"/explain/{ids['test']}/0.png")))
        rows.append(("its second label's map (computed with the first)",
                     timed(client, f"/explain/{ids['test']}/25.png")))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print(f"{'request (i768, DenseNet121 512 px, 5 folds, random weights)'.ljust(width)} | seconds")
    print(f"{'-' * width} | -------")
    for name, seconds in rows:
        print(f"{name.ljust(width)} | {seconds:7.3f}")
    after = os.getloadavg()
    print("load average (1, 5, 15 min) before " + " ".join(f"{v:.1f}" for v in load_before)
          + ", after " + " ".join(f"{v:.1f}" for v in after) + f"; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
