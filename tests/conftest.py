"""Shared fixtures: one tiny synthetic dataset per test session."""

from __future__ import annotations

import shutil

import pytest

try:  # torch's CUDA build imports triton, whose LLVM crashes the process (a segmentation fault) when
    import torchvision  # noqa: F401  TensorFlow's was loaded first: load it before any test loads TensorFlow
except ImportError:  # the tests that compare with PyTorch skip, naming it
    pass

from hpa_tf.data import prepare
from hpa_tf.data.synthetic import generate

TINY_SEED = 3


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of a `tiny` synthetic dataset (seed 3), generated once for the whole session."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=TINY_SEED, progress=False)


@pytest.fixture(scope="session")
def adapted_backbone():
    """name, large -> (the 3-channel keras.applications source with random weights (seed 0), its 4-channel
    adaptation): each built once per session, as the big ones take seconds on 2 cores."""
    import keras

    from hpa_tf.models.backbones import adapt, source_model

    sources, adapted = {}, {}

    def get(name: str, large: bool = False):
        if name not in sources:
            keras.utils.set_random_seed(0)
            sources[name] = source_model(name, weights=None)
        if (name, large) not in adapted:
            adapted[name, large] = adapt(sources[name], large=large, name=name)
        return sources[name], adapted[name, large]

    return get


@pytest.fixture(scope="session")
def prepared(tiny_dataset, tmp_path_factory):
    """(root, summary) of a prepared copy of the tiny dataset (the raw session dataset stays raw)."""
    root = tmp_path_factory.mktemp("prepared") / "tiny"
    shutil.copytree(tiny_dataset, root)
    summary = prepare.prepare(root, workers=1, progress=False)
    return root, summary


@pytest.fixture(scope="session")
def trained_runs(prepared, tmp_path_factory):
    """(data root, runs root): two 1-epoch classifier folds and a 1-epoch metric run on the prepared
    `tiny`, with the embeddings inference and curation read (test, kaggle, ext)."""
    from hpa_tf.config import classifier_config, embedder_config
    from hpa_tf.training.classifier import train_classifier
    from hpa_tf.training.embedder import extract, run_folder, train_embedder

    root, _ = prepared
    out = tmp_path_factory.mktemp("runs")
    common = dict(data_dir=str(root), out_dir=str(out), img_size=64, batch_size=16, epochs=1, verbose=0)
    for fold in (0, 1):
        train_classifier(classifier_config("demo", crop_size=32, fold=fold, **common), progress=False)
    # batch 4: enough steps in its one epoch for BatchNorm's moving statistics to leave their start (with
    # 8 steps, most images of the synthetic data came out with the same embedding)
    metric = embedder_config("demo", nn_every=0, **{**common, "batch_size": 4})
    train_embedder(metric, progress=False)
    extract(run_folder(metric), ["test", "kaggle", "ext"], progress=False)
    return root, out


@pytest.fixture(scope="session")
def default_submission(trained_runs, tmp_path_factory):
    """(OUTPUT, what it printed) of one `infer.py --submission --runs RUNS --output OUTPUT` with the demo
    defaults (the data of the classifier runs, every trained fold, seed 0, the metric run RUNS/metric_demo)
    on the session's trained runs, OUTPUT alone in its folder with its side files. Shared: read it only
    (copy a file into the test's tmp_path before changing it)."""
    import contextlib
    import io

    from hpa_tf.cli import infer

    output = tmp_path_factory.mktemp("submission") / "submission.csv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = infer.main(["--submission", "--runs", str(trained_runs[1]), "--output", str(output)])
    assert status == 0, printed.getvalue()[-3000:]
    return output, printed.getvalue()
