"""Console output: INFO lines on stdout and warnings on stderr through `logging`, `--quiet` keeping only
warnings, and progress bars only on a terminal."""

from __future__ import annotations

import logging

import pytest

from hpa_tf import output


@pytest.fixture
def package_logger():
    """The package logger's handlers and level, restored after the test."""
    logger = logging.getLogger(output.PACKAGE_LOGGER)
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers, logger.level, logger.propagate = saved


@pytest.fixture
def root_handler():
    """A handler on the root logger, as a library may set up (logging.basicConfig), removed after."""
    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def test_info_goes_to_stdout_warnings_to_stderr_and_quiet_keeps_warnings(capsys, package_logger,
                                                                          root_handler):
    """Each line once, even with a root handler that would print it again."""
    output.setup_logging()
    output.setup_logging()  # again: one handler, not two
    logging.getLogger("hpa_tf.training.loop").info("epoch 1: loss 0.5")
    logging.getLogger("hpa_tf.curation.pool").warning("note: no kaggle embeddings")
    assert capsys.readouterr() == ("epoch 1: loss 0.5\n", "note: no kaggle embeddings\n")
    output.setup_logging(quiet=True)
    logging.getLogger("hpa_tf.training.loop").info("epoch 2: loss 0.4")
    logging.getLogger("hpa_tf.data.prepare").warning("a warning")
    assert capsys.readouterr() == ("", "a warning\n")


def test_progress_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(output, "on_terminal", lambda: False)
    assert output.bars_disabled(True) and output.bars_disabled(False)
    assert output.keras_verbose("auto", True) == 2  # one line per epoch in a log file
    assert output.keras_verbose("auto", False) == 0 and output.keras_verbose(1, True) == 1
    monkeypatch.setattr(output, "on_terminal", lambda: True)
    assert not output.bars_disabled(True) and output.bars_disabled(False)
    assert output.keras_verbose("auto", True) == 1 and output.keras_verbose(2, True) == 2


def test_usage_lines_name_the_command_as_it_was_run(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/venv/bin/hpa-infer", "--help"])
    assert output.prog("infer.py") == "hpa-infer"
    monkeypatch.setattr("sys.argv", ["infer.py", "--help"])
    assert output.prog("infer.py") == "python infer.py"
    assert output.prog("-m hpa_tf.data.prepare") == "python -m hpa_tf.data.prepare"
