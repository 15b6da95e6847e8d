"""Run by test_fault_injection.py: a command that SIGKILLs itself at a chosen point of its progress, so
that the kill lands at the same point on a fast machine and on a slow one (a kill after a delay does not).

`python kill_at.py in-write K -m MODULE ARGS...`: killed inside its K-th atomic write (hpa_tf.atomic
write_atomic), with the new file complete in its temporary and not yet renamed into place, as a kill
mid-write leaves it; `in-write NAME ...`: inside the write of the file named NAME.
`python kill_at.py log TEXT SCRIPT ARGS...`: killed when the `hpa_tf` logger emits a message holding TEXT.
The command (`-m MODULE` or a script path) then runs as `python -m MODULE ARGS...` / `python SCRIPT ARGS...`.
"""

import logging
import os
import runpy
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: no finally, no atexit, no flush


def _kill_in_write(target: str) -> None:
    """Wrap os.replace, by which write_atomic renames its temporary (`.{name}.XXXXXXXX.tmp...`)."""
    replace, writes = os.replace, [0]

    def killing_replace(source, destination, **kwargs):
        if os.path.basename(source).startswith(".") and ".tmp" in os.path.basename(source):
            writes[0] += 1
            if str(writes[0]) == target or os.path.basename(destination) == target:
                _die()
        return replace(source, destination, **kwargs)

    os.replace = killing_replace


class _KillOnMessage(logging.Handler):
    """Kills the process as a record whose message holds `text` is handled."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            _die()


def main() -> None:
    when, target, command = sys.argv[1], sys.argv[2], sys.argv[3:]
    if when == "in-write":
        _kill_in_write(target)
    elif when == "log":
        logging.getLogger("hpa_tf").addHandler(_KillOnMessage(target))  # output.setup_logging keeps it
    else:
        raise SystemExit(f"unknown kill point {when!r}: in-write or log")
    # sys.path[0] as `python -m MODULE` (the working directory) or `python SCRIPT` (its folder) sets it, not
    # this script's folder: the checkout's hpa_tf, not another one an editable install points to
    sys.path[0] = os.getcwd() if command[0] == "-m" else os.path.dirname(os.path.abspath(command[0]))
    if command[0] == "-m":
        sys.argv = command[1:]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main()
