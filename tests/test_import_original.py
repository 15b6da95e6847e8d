"""The original's trained checkpoints imported (models.import_original) and torchvision's ImageNet weights
(--weights torchvision) against the original's own PyTorch models: logits, embeddings and feature maps
within 1e-4 (relative max error) at non-square even sizes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the imported models are compared with "
                                            "the original's PyTorch models (pip install -e '.[torch]')")
pytest.importorskip("torchvision", reason="torchvision is not installed: the original's backbones are "
                                          "torchvision's (pip install -e '.[torch]')")

from original_nets import (  # noqa: E402
    DensenetClass,
    ResnetClass,
    four_channel_stem,
    save_like_the_original,
    with_running_statistics,
)

from hpa_tf.errors import RunFolderError  # noqa: E402
from hpa_tf.layout import DataLayout, RunLayout  # noqa: E402
from hpa_tf.models import import_original as importer  # noqa: E402
from hpa_tf.models.backbones import backbone  # noqa: E402
from hpa_tf.models.loading import build_run_model, load_checkpoint, load_classifier, load_embedder  # noqa: E402
from hpa_tf.models.torch_files import CheckpointError  # noqa: E402

TOLERANCE = 1e-4


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def images(rows: int, cols: int, n: int = 2, seed: int = 0) -> np.ndarray:
    """NHWC RGBY images in [0, 1] (what the Keras models take)."""
    return np.random.default_rng(seed).random((n, rows, cols, 4)).astype(np.float32)


def torch_run(model, nhwc: np.ndarray):
    with torch.no_grad():
        return model(torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy()))


@pytest.fixture(scope="module")
def densenets():
    """large -> the original's DenseNet121 classifier with random weights and BatchNorm statistics."""
    torch.manual_seed(0)
    return {large: with_running_statistics(DensenetClass(large=large), seed=int(large))
            for large in (False, True)}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    return with_running_statistics(ResnetClass(num_classes=37), seed=2)


@pytest.fixture(scope="module")
def imported(densenets, resnet, tmp_path_factory):
    """arch -> (the original's PyTorch model, its run folder imported by the CLI): run A's classifier from
    0.4's legacy format with DataParallel's `module.` keys, the large variant from a bare state_dict in
    the zip format, the metric model from the original's dict in the legacy format."""
    folder = tmp_path_factory.mktemp("imported")
    cases = {"class_densenet121_dropout": (densenets[False], dict(legacy=True, data_parallel=True)),
             "class_densenet121_large_dropout": (densenets[True], None),
             "class_resnet50_dropout": (resnet, dict(legacy=True))}
    runs = {}
    for arch, (model, saved) in cases.items():
        checkpoint = folder / f"{arch}.pth"
        if saved is None:
            torch.save(model.state_dict(), checkpoint)
        else:
            save_like_the_original(model, checkpoint, **saved)
        assert importer.main([str(checkpoint), "--arch", arch, "--out", str(folder / arch), "--quiet"]) == 0
        runs[arch] = (model, RunLayout(folder / arch))
    return runs


@pytest.mark.parametrize("arch, sizes", [("class_densenet121_dropout", [(96, 160), (160, 96)]),
                                         ("class_densenet121_large_dropout", [(128, 192)])])
def test_imported_classifier_equals_the_original(imported, arch, sizes):
    """The imported classifier's logits on raw [0, 1] RGBY are the original's (its forward normalises with
    spec 4's constants; the folder names no dataset), at non-square even sizes."""
    model, run = imported[arch]
    keras_model, config = load_classifier(run.root)
    assert config.reference_stats and config.data_dir is None and config.large == ("large" in arch)
    for size in sizes:
        x = images(*size)
        assert relative_error(keras_model(x, training=False), torch_run(model, x)) < TOLERANCE
    original = json.loads(run.original.read_text())
    assert original["arch"] == arch and len(original["sha256"]) == 64
    assert (original.get("epoch"), original.get("best_score")) == \
        ((None, None) if "large" in arch else (45, 0.612))


def test_imported_metric_model_equals_the_original(imported):
    """The embedder gives the original's 512-d feature, and the ArcFace head (with the checkpoint's class
    count) its cosines."""
    resnet, run = imported["class_resnet50_dropout"]
    embedder, config = load_embedder(run.root)
    assert config.arcface_classes == 37 and config.data_dir is None
    x = images(128, 96, seed=1)
    cosine, feature = torch_run(resnet, x)
    assert relative_error(embedder(x, training=False), feature) < TOLERANCE
    network = load_checkpoint(build_run_model(config), run.best_weights, "import")
    assert relative_error(network(x, training=False), cosine) < TOLERANCE


def test_another_architecture_is_refused_naming_it_and_its_keys(resnet, tmp_path):
    checkpoint = tmp_path / "final.pth"
    save_like_the_original(resnet, checkpoint, legacy=False)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"not a class_densenet121_dropout checkpoint: missing keys "
                                              r"\['backbone\.features\.conv0\.weight', .*unexpected keys "
                                              r"\['resnet\.conv1\.weight'") as error:
        importer.import_original(checkpoint, "class_densenet121_dropout", out)
    assert str(checkpoint) in str(error.value)
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_a_shape_mismatch_names_the_key_and_both_shapes(densenets, tmp_path):
    state = densenets[False].state_dict()
    state["fc1.weight"] = torch.zeros(512, 2048)
    checkpoint = tmp_path / "final.pth"
    torch.save({"state_dict": state}, checkpoint)
    with pytest.raises(CheckpointError, match=r"fc1\.weight has shape \(512, 2048\), the model expects "
                                              r"\(1024, 2048\)"):
        importer.import_original(checkpoint, "class_densenet121_dropout", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_errors_are_one_line_and_write_nothing(densenets, tmp_path, capsys):
    """A truncated checkpoint, a trained run's folder as --out, and no --arch (the choices listed)."""
    checkpoint = tmp_path / "final.pth"
    save_like_the_original(densenets[False], checkpoint, legacy=False)
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:len(data) // 2])
    out = tmp_path / "run"
    assert importer.main([str(cut), "--arch", "class_densenet121_dropout", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(cut) in err[0]
    assert not out.exists()
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / RunLayout.CONFIG).write_text("{}")
    with pytest.raises(RunFolderError, match="not an imported run"):
        importer.import_original(checkpoint, "class_densenet121_dropout", trained)
    with pytest.raises(SystemExit) as exit_:
        importer.main([str(checkpoint), "--out", str(out)])
    assert exit_.value.code == 2
    usage = capsys.readouterr().err
    assert all(arch in usage for arch in importer.ARCHS) and "--arch" in usage


# ------------------------------------------------ --weights torchvision: torchvision's ImageNet files

@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory):
    """name -> (torchvision's 3-channel model with random weights and statistics, that state dict written in
    timm's format: safetensors with torchvision's keys)."""
    import torchvision
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("timm")
    files = {}
    for seed, name in enumerate(("densenet121", "resnet50")):
        torch.manual_seed(seed)
        model = with_running_statistics(getattr(torchvision.models, name)(), seed=seed)
        path = folder / f"{name}.tv_in1k.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        files[name] = (model, path)
    return files


def torchvision_features(model, name: str, x: np.ndarray) -> torch.Tensor:
    """The last feature map of torchvision's `name` with the 4-channel stem (spec 6.1), as the original's
    backbones compute it (DenseNet: relu(features); ResNet: layer4)."""
    stem = four_channel_stem(model.features.conv0 if name == "densenet121" else model.conv1)
    if name == "densenet121":
        layers = [stem, *list(model.features)[1:], torch.nn.ReLU()]
    else:
        layers = [stem, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3,
                  model.layer4]
    return torch_run(torch.nn.Sequential(*layers).eval(), x).permute(0, 2, 3, 1)


@pytest.mark.parametrize("name, keyword", [("densenet121", True), ("resnet50", False)])
def test_torchvision_weights_equal_torchvision(imagenet_files, tmp_path, monkeypatch, name, keyword):
    """`--weights torchvision` (a timm-format file in Keras' cache; DenseNet121 here) and `--weights PATH`
    (that file given; ResNet50 here) give torchvision's network with the 4-channel stem, on torch-convention
    RGB and a Y channel. One path each keeps the test to one Keras build per network."""
    model, path = imagenet_files[name]
    x = np.random.default_rng(3).standard_normal((1, 64, 96, 4)).astype(np.float32)
    weights = str(path)
    if keyword:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path))
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / path.name).write_bytes(path.read_bytes())
        weights = "torchvision"
    net = backbone(name, weights=weights)
    assert relative_error(net(x, training=False), torchvision_features(model, name, x)) < TOLERANCE


def test_torchvision_weights_offline_say_how_to_get_them(tmp_path, monkeypatch):
    """No file in the cache and no network: one ModelError naming the URL, the original's file and the
    cache path to put it at."""
    from hpa_tf.errors import ModelError
    from hpa_tf.models import torchvision_nets

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision_nets, "TIMM_URL", "http://127.0.0.1:9/{name}/model.safetensors")
    with pytest.raises(ModelError, match=r"could not be downloaded from http://127\.0\.0\.1:9/resnet50.*"
                                         r"resnet50-19c8e357\.pth.*--weights PATH") as error:
        backbone("resnet50", weights="torchvision")
    assert str(tmp_path / "models" / "resnet50.tv_in1k.safetensors") in str(error.value)


def _copy_small(run: RunLayout, out, **sizes) -> RunLayout:
    """A copy of the imported run folder `run` at `out`, its config's sizes cut to the tiny dataset's 64 px
    cache (to keep the test fast)."""
    shutil.copytree(run.root, out)
    copy = RunLayout(out)
    copy.config_json.write_text(json.dumps({**json.loads(copy.config_json.read_text()), **sizes}))
    return copy


def test_imported_runs_make_a_submission(imported, prepared, tmp_path, capsys):
    """`infer.py --submission` uses an imported fold (RUNS/NAME/fold0) and an imported metric run like
    trained ones, with --data-dir naming the dataset, which the folders do not: the embeddings are
    extracted from that dataset's images."""
    from hpa_tf.cli import infer
    from hpa_tf.embeddings import load_embeddings

    root, _ = prepared
    _copy_small(imported["class_densenet121_dropout"][1], tmp_path / "runs" / "bestfitting" / "fold0",
                img_size=64, crop_size=32)
    metric = _copy_small(imported["class_resnet50_dropout"][1], tmp_path / "metric", img_size=64)
    output = tmp_path / "submission.csv"
    common = ["--runs", str(tmp_path / "runs"), "--run", "bestfitting", "--metric-run", str(metric.root),
              "--seeds", "0", "--output", str(output)]
    assert infer.main(["--submission", *common]) == 2
    assert "imported from the original's checkpoint and names no dataset: pass --data-dir" in \
        capsys.readouterr().err
    assert infer.main(["--submission", "--data-dir", str(root), *common]) == 0
    submission = pd.read_csv(output, dtype=str, keep_default_na=False)
    sample = pd.read_csv(DataLayout(root).sample_submission_csv, dtype=str)
    assert submission["Id"].tolist() == sample["Id"].tolist()
    probs = np.load(output.with_suffix(".prob.npy"))
    assert probs.shape == (len(sample), 28) and np.isfinite(probs).all()
    _, test_ids = load_embeddings(metric.embeddings("test"))
    _, ext_ids = load_embeddings(metric.embeddings("ext"))
    external = pd.read_csv(DataLayout(root).meta_dir / "external_meta.csv", dtype=str)
    assert test_ids.tolist() == sample["Id"].tolist() and set(ext_ids) == set(external["Id"])
    assert pd.read_csv(output.with_suffix(".neighbours.csv"))["Id"].tolist() == sample["Id"].tolist()


def test_the_bioimage_resource_of_an_imported_run_names_the_original_weights(tmp_path):
    from hpa_tf.bioimage import classifier_resource, imported, rdf

    run = RunLayout(tmp_path)
    resource = classifier_resource(512, 5)
    assert imported(resource, run) == resource  # a run trained here
    run.original.write_text(json.dumps({"arch": "class_densenet121_large_dropout", "sha256": "ab" * 32}))
    for name in ("weights.zip", "test_input.npy", "test_output.npy"):
        (tmp_path / name).write_bytes(b"x")
    files = {name: tmp_path / name for name in ("weights.zip", "test_input.npy", "test_output.npy")}
    description = rdf(imported(resource, run), files)
    assert "class_densenet121_large_dropout checkpoint (sha256 " + "ab" * 32 in description["description"]
    authors = description["weights"]["tensorflow_saved_model_bundle"]["authors"]
    assert authors == [{"name": "Shubin Dai (bestfitting), who trained these weights"}]
    assert "authors" not in rdf(resource, files)["weights"]["tensorflow_saved_model_bundle"]
