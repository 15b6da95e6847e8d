"""Console output of the commands: library code logs through `logging` (the commands show INFO, --quiet
WARNING), user errors become one `error:` line, and progress bars (tqdm, Keras' progress bar) appear only
on a terminal, so that logs written to files stay readable (Keras then prints one line per epoch)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hpa_tf.errors import USER_ERRORS

PACKAGE_LOGGER = "hpa_tf"


class _StreamHandler(logging.StreamHandler):
    """Writes to the current sys.stdout (INFO) or sys.stderr (WARNING and above) at each record, so that
    a redirected or captured stream is followed."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        super().emit(record)


def setup_logging(quiet: bool = False) -> None:
    """The commands' logging: the package's messages as plain lines, INFO and up (WARNING and up with
    `quiet`), and only there (not again through a root handler that a library may have set up); calling
    it again replaces the handler."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.propagate = False
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _StreamHandler)]
    handler = _StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def run_or_exit(action: Callable[[], object]) -> int:
    """Run `action()`; a user-facing error (hpa_tf.errors) prints one `error:` line and gives exit status 2;
    anything else is a bug and keeps its traceback."""
    try:
        action()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def on_terminal() -> bool:
    """Whether standard output is an interactive terminal."""
    return sys.stdout.isatty()


def bars_disabled(progress: bool = True) -> bool:
    """tqdm's `disable`: no bar when progress is off or the output is not a terminal."""
    return not (progress and on_terminal())


def keras_verbose(verbose: str | int = "auto", progress: bool = True) -> int:
    """Keras' `verbose`: 0 without progress; for "auto" the bar (1) on a terminal, else one line per
    epoch (2); an explicit 0, 1 or 2 as given."""
    if not progress:
        return 0
    if verbose == "auto":
        return 1 if on_terminal() else 2
    return int(verbose)


def prog(script: str) -> str:
    """A command's name in its usage line: the console script's (hpa-...) when run as one, else
    `python SCRIPT` (e.g. "infer.py", "-m hpa_tf.data.prepare")."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("hpa-") else f"python {script}"
