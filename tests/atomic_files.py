"""What the tests look for after hpa_tf.atomic's writes, shared by the modules that kill or break runs."""

from __future__ import annotations

from pathlib import Path


def temporaries(root: Path) -> list[Path]:
    """Hidden temp files of hpa_tf.atomic.write_atomic (`.{name}.XXXXXXXX.tmp{suffix}`) under root."""
    return [p for p in root.rglob(".*") if ".tmp" in p.name]
