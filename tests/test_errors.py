"""The error family: every user-facing error derives from HpaTfError, a CLI prints it as one `error:` line
with exit status 2, anything else keeps its traceback, and flags are checked before any data work."""

from __future__ import annotations

import pytest

from hpa_tf.cli import train_classifier
from hpa_tf.config import ConfigError
from hpa_tf.data.download import DownloadError
from hpa_tf.data.io import ImageReadError
from hpa_tf.data.prepare import PrepareError
from hpa_tf.embeddings import EmbeddingFileError
from hpa_tf.errors import DataError, HpaTfError, InferenceError, ModelError, TrainingSetupError
from hpa_tf.models.backbones import BackboneError
from hpa_tf.output import run_or_exit


@pytest.mark.parametrize("error, stage", [
    (ConfigError, HpaTfError), (ImageReadError, DataError), (PrepareError, DataError),
    (DownloadError, DataError), (EmbeddingFileError, HpaTfError), (InferenceError, HpaTfError),
    (BackboneError, ModelError), (TrainingSetupError, HpaTfError)])
def test_every_stage_error_is_in_the_family(error, stage):
    assert issubclass(error, stage) and issubclass(error, HpaTfError)
    assert issubclass(error, ValueError)  # callers that caught ValueError still do


def test_cli_prints_one_line_for_the_family_and_keeps_bugs(capsys):
    def bad_input():
        raise DataError("raw/train.csv line 7: empty Target")

    assert run_or_exit(bad_input) == 2
    assert capsys.readouterr().err == "error: raw/train.csv line 7: empty Target\n"

    def bug():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_or_exit(bug)


def test_unknown_backbone_is_refused_before_any_data_work(tmp_path, monkeypatch, capsys):
    """No demo dataset is generated and no run folder is made for a backbone that does not exist."""
    monkeypatch.setenv("HPA_TF_DATA", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    assert train_classifier.main(["--backbone", "foo", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown backbone 'foo'") and err.count("\n") == 1
    assert not (tmp_path / "cache").exists() and not out.exists()
