"""Inference: TTA and duplicate means (spec 9), leak and neighbour replacement (spec 10.3-10.5), ScaNN
against exact search, the submission file, and `python infer.py --submission / --export / --gallery /
--noise-report` on the tiny dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpa_tf.cli import infer
from hpa_tf.data import pipeline
from hpa_tf.embeddings import load_embeddings, matching_space, save_embeddings
from hpa_tf.errors import InferenceError
from hpa_tf.inference.neighbours import NeighbourIndex, replace_labels, threshold_sweep
from hpa_tf.inference.postprocess import leak_replace
from hpa_tf.inference.predict import duplicate_groups, group_mean, read_probabilities, tta_probabilities
from hpa_tf.inference.submission import write_submission
from hpa_tf.labels import parse_target, targets_to_matrix
from hpa_tf.layout import DataLayout, ValidationFiles
from hpa_tf.models.loading import load_classifier


def test_duplicate_groups_are_connected_components_and_get_their_mean():
    ids = ["a", "b", "c", "d", "e"]
    pairs = pd.DataFrame({"Test1": ["a", "b", "x"], "Test2": ["b", "c", "d"]})  # a-b-c chained; x unknown
    groups = duplicate_groups(ids, pairs)
    assert groups[0] == groups[1] == groups[2] and len({groups[0], groups[3], groups[4]}) == 3
    probs = np.arange(15, dtype=np.float32).reshape(5, 3)
    averaged = group_mean(probs, groups)
    np.testing.assert_allclose(averaged[:3], np.tile(probs[:3].mean(0), (3, 1)))
    np.testing.assert_array_equal(averaged[3:], probs[3:])


def test_leak_and_neighbour_replacement_replace_whole_sets_strictly_above_the_threshold():
    targets, replaced = leak_replace(["a", "b"], ["0 1", "2"], pd.DataFrame({"Id": ["b"], "Target": ["5 7"]}))
    assert targets == ["0 1", "5 7"] and replaced.tolist() == [False, True]
    targets, replaced = replace_labels(["0 1", "2", "3"], np.array([1, 0, 1]), np.array([0.65, 0.66, 0.9]),
                                       ["25", "4 6"], threshold=0.65)
    assert targets == ["0 1", "25", "4 6"] and replaced.tolist() == [False, True, True]


def test_threshold_sweep_counts():
    rows = threshold_sweep(np.array([0.61, 0.70, 0.75, 0.5]), np.array([True, True, False, True]),
                           np.array([True, False, False, True]), thresholds=[0.6, 0.72])
    assert rows[0] == {"threshold": 0.6, "selected": 3, "matched": 2, "correct": 1, "accuracy": 1 / 3,
                       "recall": 0.25, "f1": pytest.approx(2 * (1 / 3) * 0.25 / (1 / 3 + 0.25))}
    assert rows[1]["selected"] == 1 and rows[1]["correct"] == 0 and rows[1]["f1"] == 0.0


def _clustered(rng, n, centres):
    return centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, centres.shape[1]))


def test_scann_recall_against_exact_search_and_save_load(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 64))
    references = matching_space(_clustered(rng, 5000, centres))
    queries = matching_space(_clustered(rng, 300, centres))
    exact = NeighbourIndex.build(references, exact=True)
    # a third of the 70 leaves searched: the tree's recall at the defaults (1/10) varied from 0.94 to 1.0
    # between runs in one suite; benchmarks/neighbours.py measures the defaults at scale
    scann_index = NeighbourIndex.build(references, exact_below=1000, leaves_to_search=23)
    assert NeighbourIndex.build(references).searcher is None  # 5,000 rows: exact by default
    assert scann_index.searcher is not None and exact.searcher is None
    truth, truth_scores = exact.search(queries, k=1)
    found, scores = scann_index.search(queries, k=1)
    assert np.mean(found[:, 0] == truth[:, 0]) >= 0.95
    np.testing.assert_allclose(scores[found == truth], truth_scores[found == truth], atol=1e-4)
    exact.save(tmp_path / "index")
    saved = scann_index.save(tmp_path / "index")  # replaces the exact one, its files built beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    loaded = NeighbourIndex.load(saved)  # ScaNN's absolute asset paths point at the final folder
    np.testing.assert_array_equal(loaded.search(queries, k=1)[0], found)
    with pytest.raises(InferenceError, match="NeighbourIndex.save"):
        NeighbourIndex.load(tmp_path)


def test_submission_file_parses_back(tmp_path):
    path = write_submission(tmp_path / "s.csv", ["a", "b"], ["7 0 3", "25"])
    frame = pd.read_csv(path, dtype=str)
    assert frame.columns.tolist() == ["Id", "Predicted"]
    assert frame["Predicted"].tolist() == ["0 3 7", "25"]
    assert [parse_target(t) for t in frame["Predicted"]] == [[0, 3, 7], [25]]


def test_tta_max_equals_the_max_over_numpy_dihedral_views(trained_runs):
    root, out = trained_runs
    model, config = load_classifier(out / "demo" / "fold0")
    frame = pd.read_csv(DataLayout(root).sample_submission_csv, dtype=str)[["Id"]].head(3)
    source = pipeline.Source(DataLayout(root), 64, "test")
    got = tta_probabilities(model, source, frame, 32, seeds=(0,), batch_size=2)
    whole = next(iter(pipeline.valid_dataset(source, frame, 32, 3)))[0].numpy()
    views = []
    for image in whole:
        for k in range(4):
            views += [np.rot90(image, k), np.rot90(image[:, ::-1], k)]  # the 8 elements of D4
    probs = 1 / (1 + np.exp(-model.predict(np.stack(views), verbose=0)))
    np.testing.assert_allclose(got, probs.reshape(3, 8, 28).max(axis=1), rtol=1e-4, atol=1e-5)
    # a subset of views: the identity alone is the plain whole-image prediction
    alone = tta_probabilities(model, source, frame, 32, seeds=(0,), batch_size=2, views=["default"])
    np.testing.assert_allclose(alone, probs.reshape(3, 8, 28)[:, 0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown TTA views"):
        tta_probabilities(model, source, frame, 32, seeds=(0,), views=["rot45"])


def test_infer_submission_on_tiny(trained_runs, default_submission):
    """The demo defaults: the data of the classifier runs, every trained fold, seed 0, the metric run
    RUNS/metric_demo; the labels after each step in OUTPUT.steps.csv (the session's `--submission --runs
    RUNS --output OUTPUT`, conftest.default_submission)."""
    root, out = trained_runs
    output, printed = default_submission
    for step in ("cnn@0.5", "thresholds", "leak", "neighbours"):
        assert f"macro-F1 after {step}:" in printed
    _check_evidence(root, out / "metric_demo", output, printed)
    submission = pd.read_csv(output, dtype=str, keep_default_na=False)
    sample = pd.read_csv(DataLayout(root).sample_submission_csv, dtype=str)
    assert submission["Id"].tolist() == sample["Id"].tolist()
    for target in submission["Predicted"]:
        labels = parse_target(target)
        assert labels and labels == sorted(labels)  # the top-1 rule: never empty
    leak = pd.read_csv(DataLayout(root).meta_dir / "test_leak_meta.csv", dtype=str).set_index("Id")
    merged = submission.set_index("Id").loc[leak.index]
    # a leaked image keeps its HPAv18 labels unless a nearer neighbour replaced them afterwards
    assert (merged["Predicted"] == leak["Target"]).mean() >= 0.5
    steps = pd.read_csv(output.with_suffix(".steps.csv"), dtype=str, keep_default_na=False)
    assert steps.columns.tolist() == ["Id", "cnn@0.5", "thresholds", "leak", "neighbours"]
    assert steps["Id"].tolist() == submission["Id"].tolist()
    assert steps["neighbours"].tolist() == submission["Predicted"].tolist()
    leaked = steps.set_index("Id").loc[leak.index, "leak"]
    assert [parse_target(t) for t in leaked] == [parse_target(t) for t in leak["Target"]]
    # the fold mean: outside duplicate groups each row is the mean of the two folds' probabilities
    probs = np.load(output.with_suffix(".prob.npy"))
    folds = [np.load(output.with_suffix(f".fold{k}.prob.npy")) for k in (0, 1)]
    assert not list((out / "demo").rglob("prob_test.npy"))  # the run folders are only read
    alone = _outside_duplicate_groups(root, steps["Id"].tolist())
    assert np.abs(folds[0] - folds[1]).max() > 1e-3  # two different models
    np.testing.assert_allclose(probs[alone], np.mean(folds, axis=0)[alone], rtol=1e-6)


def _check_evidence(root, metric_run, output, printed: str) -> None:
    """OUTPUT.neighbours.csv against brute force: each test image's 3 most cosine-similar HPAv18 images
    (each set standardised on its own, spec 10.4) with their antibody and corrected labels, the labels of
    the leak and neighbour steps, replaced where the best cosine is above the printed auto threshold."""
    from sklearn.preprocessing import normalize, scale

    evidence = pd.read_csv(output.with_suffix(".neighbours.csv"), dtype=str, keep_default_na=False)
    steps = pd.read_csv(output.with_suffix(".steps.csv"), dtype=str, keep_default_na=False)
    test, test_ids = load_embeddings(metric_run / "embeddings_test.npz")
    ext, ext_ids = load_embeddings(metric_run / "embeddings_ext.npz")
    sims = normalize(scale(test.astype(np.float64))) @ normalize(scale(ext.astype(np.float64))).T
    ranked = -np.sort(-sims, axis=1)[:, :3]
    meta = pd.read_csv(DataLayout(root).meta_dir / "external_antibody_correct_meta.csv", dtype=str,
                       keep_default_na=False).set_index("Id")
    assert evidence["Id"].tolist() == test_ids.tolist() == steps["Id"].tolist()
    column = {image_id: j for j, image_id in enumerate(ext_ids)}
    listed = np.array([[column[i] for i in evidence[f"top{r + 1}"]] for r in range(3)]).T
    assert all(len(set(row)) == 3 for row in listed)
    for r in range(3):
        chosen = ext_ids[listed[:, r]]
        # the r-th most similar by brute force, up to images of equal cosine (a tiny run's embedder gives
        # some images the same embedding: their order is either way); exactly it where no other is as near
        np.testing.assert_allclose(np.take_along_axis(sims, listed[:, r:r + 1], axis=1)[:, 0], ranked[:, r],
                                   atol=1e-5)
        alone = (np.abs(sims - ranked[:, r:r + 1]) < 1e-5).sum(axis=1) == 1
        assert alone.mean() > 0.5
        np.testing.assert_array_equal(listed[alone, r], np.argsort(-sims, axis=1)[alone, r])
        np.testing.assert_allclose(evidence[f"top{r + 1}_cosine"].astype(float), ranked[:, r], atol=1e-4)
        assert evidence[f"top{r + 1}_antibody"].tolist() == meta.loc[chosen, "antibody"].tolist()
        assert [parse_target(t) for t in evidence[f"top{r + 1}_labels"]] == \
            [parse_target(t) for t in meta.loc[chosen, "Target"]]
    line = next(line for line in printed.splitlines() if line.startswith("match threshold auto:"))
    threshold = float(evidence["threshold"].iloc[0])
    assert (f"auto: {threshold:.2f} " in line) if np.isfinite(threshold) else ("no replacement" in line)
    replaced = sims.max(axis=1) > threshold
    assert evidence["replaced"].tolist() == [str(v) for v in replaced]
    assert [parse_target(t) for t in evidence["before"]] == [parse_target(t) for t in steps["leak"]]
    assert [parse_target(t) for t in evidence["after"]] == [parse_target(t) for t in steps["neighbours"]]
    best_labels = meta.loc[ext_ids[listed[:, 0]], "Target"].tolist()
    for row, hit in enumerate(replaced):
        want = best_labels[row] if hit else steps["leak"].iloc[row]
        assert parse_target(evidence["after"].iloc[row]) == parse_target(want)
    assert f"neighbour evidence written to {output.with_suffix('.neighbours.csv')} ({replaced.sum()} " \
           "replaced)" in printed


def _outside_duplicate_groups(root, ids: list[str]) -> np.ndarray:
    """Mask of the ids in no test<->test duplicate pair (their group mean is themselves)."""
    pairs = pd.read_csv(DataLayout(root).meta_dir / "test_match_test.csv", dtype=str)
    paired = set(pairs["Test1"]) | set(pairs["Test2"])
    mask = np.array([i not in paired for i in ids])
    assert 0 < mask.sum() < len(ids)
    return mask


def test_one_command_extracts_missing_embeddings_and_reuses_the_index(trained_runs, tmp_path, capsys):
    """A metric run with only its checkpoint: --submission extracts test and ext itself (the same files
    as --extract), saves the neighbour index and reuses it until embeddings_ext.npz changes."""
    import shutil

    root, out = trained_runs
    metric = tmp_path / "metric"
    metric.mkdir()
    for name in ("config.json", "best.weights.h5"):
        shutil.copy(out / "metric_demo" / name, metric / name)
    base = ["--submission", "--runs", str(out), "--folds", "0", "--metric-run", str(metric),
            "--output", str(tmp_path / "submission.csv"), "--match-threshold", "0.3", "--neighbour-k", "2"]
    assert infer.main(base) == 0
    printed = capsys.readouterr().out
    assert "extracting embeddings test, ext" in printed and "saved to" in printed
    assert "match threshold auto" not in printed  # a number overrides the choice
    evidence = pd.read_csv(tmp_path / "submission.neighbours.csv")
    assert (evidence["threshold"] == 0.3).all() and "top2" in evidence and "top3" not in evidence
    assert (evidence["replaced"] == (evidence["top1_cosine"] > 0.3)).all()
    for name in ("test", "ext"):
        with np.load(metric / f"embeddings_{name}.npz") as new, \
                np.load(out / "metric_demo" / f"embeddings_{name}.npz") as reference:
            np.testing.assert_array_equal(new["ids"], reference["ids"])
            np.testing.assert_allclose(new["feats"], reference["feats"], rtol=1e-5, atol=1e-5)
    assert infer.main(base) == 0
    printed = capsys.readouterr().out
    assert "extracting" not in printed and f"reused from {metric / 'index_ext'}" in printed
    feats, ids = load_embeddings(metric / "embeddings_ext.npz")
    save_embeddings(metric / "embeddings_ext.npz", feats * 2, ids)  # changed: rebuilt
    assert infer.main(base) == 0
    assert f"rebuilt in {metric / 'index_ext'}: it was built from other embeddings" in capsys.readouterr().err


OUTPUT_SUFFIXES = (".csv", ".steps.csv", ".neighbours.csv", ".prob.npy", ".prob_ids.csv", ".thresholds.npy",
                   ".serving.json", ".fold0.prob.npy", ".fold1.prob.npy")


def test_infer_refuses_missing_or_mismatched_embeddings_and_changes_no_output(trained_runs, tmp_path, capsys):
    """Failing runs, one of them only after the long TTA part, leave every output of a previous run as it
    was (planted here): all outputs are written at the end."""
    root, out = trained_runs
    output = tmp_path / "submission.csv"
    earlier = {output.with_suffix(suffix): f"earlier {suffix}".encode() for suffix in OUTPUT_SUFFIXES}
    for path, data in earlier.items():
        path.write_bytes(data)
    base = ["--submission", "--data-dir", str(root), "--runs", str(out), "--run", "demo", "--seeds", "0",
            "--output", str(output)]
    assert infer.main([*base, "--metric-run", str(tmp_path)]) == 2
    assert "embeddings_test.npz not found, nor the checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad"
    save_embeddings(bad / "embeddings_test.npz", np.zeros((2, 512)), ["x", "y"])
    save_embeddings(bad / "embeddings_ext.npz", np.zeros((2, 512)), ["x", "y"])
    assert infer.main([*base, "--metric-run", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "not the test Ids" in captured.err
    assert "TTA probabilities" not in captured.out  # refused before the long part
    assert infer.main([*base, "--run", "nothing"]) == 2
    assert "no trained fold" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in earlier} == earlier
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(p.name for p in earlier)


def test_infer_validate_scores_the_out_of_fold_predictions(trained_runs, tmp_path, capsys):
    """`--validate` on the two trained folds: each fold's own validation split, scored as sklearn scores
    the same out-of-fold predictions; no trained fold is named."""
    from sklearn.metrics import f1_score

    from hpa_tf.training.classifier import split_frames

    root, out = trained_runs
    table_path = tmp_path / "validation.csv"
    assert infer.main(["--validate", "--runs", str(out), "--validation-csv", str(table_path)]) == 0
    assert f"validation table written to {table_path}" in capsys.readouterr().out
    table = pd.read_csv(table_path, index_col="class")
    layout, truth, probs = DataLayout(root), [], []
    for fold in (0, 1):
        model, config = load_classifier(out / "demo" / f"fold{fold}")
        valid = split_frames(layout, config.split, fold)[1]
        probs.append(tta_probabilities(model, pipeline.Source(layout, 64, "train"), valid, 32, seeds=(0,)))
        truth.append(pipeline.frame_labels(valid))
    truth, probs = np.concatenate(truth), np.concatenate(probs)
    expected = f1_score(truth, probs > 0.5, average="macro", zero_division=0)
    assert table.loc["macro", "f1 0.5"] == pytest.approx(expected, abs=1e-6)
    ids, oof, thresholds = read_probabilities(ValidationFiles(table_path))  # beside it, for the pages
    assert ids == [i for fold in (0, 1) for i in split_frames(layout, config.split, fold)[1]["Id"]]
    np.testing.assert_allclose(oof, probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(thresholds, table["threshold"].iloc[:28])
    assert len(table) == 30 and table.index[0] == "Nucleoplasm"
    assert infer.main(["--validate", "--runs", str(out), "--run", "nothing"]) == 2
    assert "no trained fold" in capsys.readouterr().err


def test_infer_names_a_test_id_without_images(trained_runs, tmp_path, capsys):
    import shutil

    root, out = trained_runs
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    sample = pd.read_csv(DataLayout(copy).sample_submission_csv, dtype=str)
    lost = sample["Id"].iloc[3]
    for path in (DataLayout(copy).root / "test").rglob(f"{lost}_*"):
        path.unlink()
    output = tmp_path / "submission.csv"
    args = ["--submission", "--data-dir", str(copy), "--runs", str(out), "--run", "demo", "--seeds", "0",
            "--metric-run", "none", "--output", str(output)]
    assert infer.main(args) == 2
    assert f"test image {lost}" in capsys.readouterr().err
    assert not output.exists()
    # a cache PNG cut short: TF's decoder names no file, the error does
    shutil.copytree(root / "test", copy / "test", dirs_exist_ok=True)
    damaged = pipeline.cache_files(pipeline.Source(DataLayout(copy), 64, "test"), sample.iloc[[21]])[0][2]
    data = open(damaged, "rb").read()
    open(damaged, "wb").write(data[:len(data) // 2])
    assert infer.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and damaged in err
    assert not output.exists()


def test_served_labels_equal_the_submissions_thresholded_labels(trained_runs, default_submission, tmp_path):
    """The exported ensemble on the test cache images gives the `thresholds` step of `--submission
    --seeds 0` (the session's demo submission: that step and the serving record come before the leak and
    neighbour steps) for every image outside a duplicate group; an export beside one becomes version 2.
    A submission without a metric run removes an earlier run's neighbour evidence."""
    import shutil

    import tensorflow as tf
    from PIL import Image

    root, out = trained_runs
    alone_fold = tmp_path / "fold0" / "submission.csv"
    stale = alone_fold.with_suffix(".neighbours.csv")
    stale.parent.mkdir()
    stale.write_text("Id,replaced\nx,True\n")  # an earlier run's evidence
    assert infer.main(["--submission", "--runs", str(out), "--folds", "0", "--seeds", "0", "--metric-run",
                       "none", "--no-leak", "--output", str(alone_fold), "--quiet"]) == 0
    assert not stale.exists()  # no neighbour step: no evidence that would describe another submission
    submission, _ = default_submission
    output = tmp_path / "submission.csv"
    shutil.copy(submission.with_suffix(".serving.json"), output.with_suffix(".serving.json"))  # --export's
    shutil.copy(submission.with_suffix(".steps.csv"), output.with_suffix(".steps.csv"))
    common = ["--runs", str(out), "--output", str(output), "--quiet"]
    serving = tmp_path / "serving"
    (serving / "classifier" / "1").mkdir(parents=True)
    assert infer.main(["--export", str(serving), *common]) == 0  # the classifier and the embedder
    assert sorted(p.name for p in (serving / "classifier").iterdir()) == ["1", "2"]
    assert sorted(p.name for p in (serving / "embedder").iterdir()) == ["1"]
    steps = pd.read_csv(output.with_suffix(".steps.csv"), dtype=str, keep_default_na=False)
    layout = DataLayout(root)
    paths = pipeline.cache_files(pipeline.Source(layout, 64, "test"), steps[["Id"]])
    images = np.stack([np.stack([np.asarray(Image.open(p)) for p in row], axis=-1) for row in paths])
    signature = tf.saved_model.load(str(serving / "classifier" / "2")).signatures["serving_uint8"]
    labels = np.concatenate([signature(images=tf.constant(images[i:i + 4]))["labels"].numpy()
                             for i in range(0, len(images), 4)])
    alone = _outside_duplicate_groups(root, steps["Id"].tolist())
    expected = targets_to_matrix(steps["thresholds"])
    np.testing.assert_array_equal(labels[alone], expected[alone])
    embedder = tf.saved_model.load(str(serving / "embedder" / "1")).signatures["serving_uint8"]
    with np.load(out / "metric_demo" / "embeddings_test.npz") as extracted:  # the same images, same model
        np.testing.assert_allclose(embedder(images=tf.constant(images[:2]))["embedding"].numpy(),
                                   extracted["feats"][:2], rtol=1e-4, atol=1e-4)
    _check_bioimage_resources(serving)


def _check_bioimage_resources(serving):
    """Each exported model's bioimage.io resource validates with bioimageio.spec, its weights are the
    zipped SavedModel (sha256 as recorded) and its test output is that SavedModel's output on its input."""
    import hashlib
    import zipfile

    import tensorflow as tf
    from bioimageio.spec import load_description

    models = (("classifier", "2", "probabilities", 28), ("embedder", "1", "embedding", 512))
    for model, version, output, width in models:
        folder = serving / "bioimageio" / model / version
        description = load_description(folder / "rdf.yaml", perform_io_checks=True)
        summary = description.validation_summary
        assert summary.status == "valid-format", summary.format()
        assert [str(a.id) for a in description.inputs[0].axes] == ["batch", "y", "x", "channel"]
        assert len(description.outputs[0].axes[1].channel_names) == width
        assert any("bestfitting" in str(c.text) for c in description.cite)
        weights = folder / "weights.zip"
        bundle = description.weights.tensorflow_saved_model_bundle
        assert bundle.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
        saved = serving / model / version
        with zipfile.ZipFile(weights) as archive:
            assert sorted(archive.namelist()) == sorted(p.relative_to(saved).as_posix()
                                                        for p in saved.rglob("*") if p.is_file())
        test_input, test_output = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
        signature = tf.saved_model.load(str(saved)).signatures["serving_default"]
        np.testing.assert_allclose(signature(images=tf.constant(test_input))[output].numpy(), test_output,
                                   rtol=1e-6, atol=1e-6)
        assert test_output.shape == (1, width) and (folder / "cover.png").is_file()


def _planted(root, kind: str, same_labels: str) -> pd.DataFrame:
    pairs = pd.read_csv(DataLayout(root).raw_dir / "synthetic_duplicates.csv", dtype=str)
    return pairs[(pairs["kind"] == kind) & (pairs["same_labels"] == same_labels)]


def test_infer_gallery_of_a_planted_test_copy(trained_runs, tmp_path, capsys):
    """A test copy of an HPAv18 image: a PNG of the expected size, and its nearest annotated image is the
    original with the same labels."""
    from PIL import Image

    from hpa_tf.config import InferenceConfig
    from hpa_tf.curation import pool as curation
    from hpa_tf.curation.predictions import ImagePredictions
    from hpa_tf.inference.runs import resolve
    from hpa_tf.viz import gallery_size

    root, out = trained_runs
    copy = _planted(root, "test_external", "True").iloc[0]
    original, query_id = copy["Id1"], copy["Id2"]
    args = ["--gallery", query_id, "--k", "4", "--runs", str(out), "--figures", str(tmp_path)]
    assert infer.main(args) == 0
    path = tmp_path / f"gallery_{query_id}.png"
    assert f"gallery written to {path}" in capsys.readouterr().out
    layout = DataLayout(root)
    pool = curation.annotated_pool(out / "metric_demo", layout)
    query = curation.find_query(pool, out / "metric_demo", layout, query_id)
    config = InferenceConfig(runs=str(out))
    predicted = ImagePredictions(config, resolve(config)).of(query).labels
    with Image.open(path) as png:  # a second row: the Grad-CAM map of each predicted label
        assert png.size == gallery_size(max(5, len(predicted)), 2)
    truth = pd.read_csv(layout.test_truth_csv, dtype=str).set_index("Id")["Target"]
    assert query.true == parse_target(truth[query_id]) and query.kaggle_split == "test"
    rows, cosines = curation.nearest_annotated(pool, query, 4)
    assert pool.frame["Id"].iloc[rows[0]] == original and cosines[0] > 0.9
    assert parse_target(pool.frame["Target"].iloc[rows[0]]) == query.true
    assert infer.main([*args[:1], "unknown-id", *args[2:]]) == 2
    assert "unknown-id is in none of the embedding files" in capsys.readouterr().err


def test_infer_noise_report_ranks_the_planted_label_conflicts_first(trained_runs, tmp_path, capsys):
    root, out = trained_runs
    args = ["--noise-report", "--runs", str(out), "--figures", str(tmp_path)]
    assert infer.main(args) == 0
    assert "report written to" in capsys.readouterr().out
    report = pd.read_csv(tmp_path / "noise_report.csv", dtype=str, keep_default_na=False)
    conflicts = _planted(root, "train_external", "False")
    planted = set(conflicts["Id1"]) | set(conflicts["Id2"])
    assert len(planted) == 4  # tiny: 2 HPAv18 copies of train images with a label swapped
    assert set(report["Id"].head(len(planted))) == planted
    assert (report["disagreement"].iloc[:len(planted)].astype(float) > 0).all()
    assert (tmp_path / "noise_report.png").is_file()
