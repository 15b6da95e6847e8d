"""The user-facing errors: one base class and one subclass per stage. The CLIs print any of them as one
`error: ...` line and exit 2; every other exception is a bug and keeps its traceback.

They derive from ValueError as well, so callers that caught ValueError before the family existed still do.
"""

from __future__ import annotations


class HpaTfError(ValueError):
    """A problem with the user's input, files or settings, with a message that names the file or row."""


class ConfigError(HpaTfError):
    """An unknown profile or setting, or settings that contradict each other."""


class DataError(HpaTfError):
    """Raw or prepared data that is missing, unreadable or malformed (a file, a CSV row, an image)."""


class ModelError(HpaTfError):
    """An unknown backbone, an option it does not support, or a checkpoint that does not load."""


class TrainingSetupError(HpaTfError):
    """Missing prepared data or an impossible setting, found before training starts."""


class RunFolderError(HpaTfError):
    """A run folder without the file asked for (config.json, a checkpoint), or another kind of run."""


class EmbeddingFileError(HpaTfError):
    """An embedding file that is missing, malformed or inconsistent."""


class InferenceError(HpaTfError):
    """A missing checkpoint, embedding or image file, or inputs that do not match."""


# What a CLI reports as one `error:` line: the family, and the file system's refusals (a missing or
# unwritable path), whose messages name the path.
USER_ERRORS = (HpaTfError, FileNotFoundError, PermissionError)
