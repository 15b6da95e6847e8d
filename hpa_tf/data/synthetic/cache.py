"""Where the embedded default dataset lives, and the policy of generating (and preparing) it on first use."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpa_tf.data.synthetic.write import generate
from hpa_tf.layout import DataLayout

log = logging.getLogger(__name__)

DATA_ENV = "HPA_TF_DATA"


def default_data_dir(preset: str = "demo", seed: int = 0) -> Path:
    """Where the embedded default dataset lives: $HPA_TF_DATA or ~/.cache/hpa_tf, per preset and seed."""
    base = Path(os.environ.get(DATA_ENV, Path.home() / ".cache" / "hpa_tf"))
    return base / f"synthetic-{preset}-seed{seed}"


def ensure_dataset(preset: str = "demo", seed: int = 0, root: str | Path | None = None,
                   progress: bool = True) -> Path:
    """The synthetic dataset's folder, generated on first use (what the CLIs use with no --data-dir)."""
    path = Path(root) if root is not None else default_data_dir(preset, seed)
    if not (path / "raw" / "synthetic_info.json").exists():
        log.info(f"generating the synthetic {preset} dataset in {path} (first use)")
        generate(path, preset=preset, seed=seed, overwrite=True, progress=progress)
    return path


def ensure_demo(img_size: int, progress: bool = True) -> Path:
    """The embedded demo dataset, generated and prepared at `img_size` on first use (what training and
    inference read when no --data-dir is given)."""
    from hpa_tf.data.prepare import prepare

    root = ensure_dataset("demo", seed=0, progress=progress)
    layout = DataLayout(root)
    if not layout.cache_manifest(img_size).is_file() or not layout.stats_json.is_file():
        log.info(f"preparing {root} at {img_size} px (first use)")
        prepare(root, sizes=[img_size], progress=progress)
    return root
