"""A small synthetic HPA dataset in the real on-disk layout: the embedded default and the test fixture.

It mimics Kaggle HPA 2018 + HPAv18: 4-channel fields of cells, 28 green patterns with Kaggle's long-tailed
label frequencies, antibody groups that span train/test/HPAv18, HPAv18 RGB JPEGs, full-size TIFFs for a
subset, and planted near-duplicates (train<->HPAv18, test<->test, test<->HPAv18 leaks). The same preset
and seed give byte-identical files, whatever the number of workers.

plan (what to draw), render (one field's files), write (the whole dataset), cache (generate on first
use) and __main__ (the command line):

    python -m hpa_tf.data.synthetic --out DIR [--preset tiny|demo] [--seed N]
"""

from __future__ import annotations

from hpa_tf.data.synthetic.cache import DATA_ENV, default_data_dir, ensure_dataset, ensure_demo
from hpa_tf.data.synthetic.plan import PRESETS, Plan, Preset, make_plan
from hpa_tf.data.synthetic.render import JPEG_PLANE
from hpa_tf.data.synthetic.write import generate

__all__ = ["DATA_ENV", "JPEG_PLANE", "PRESETS", "Plan", "Preset", "default_data_dir", "ensure_dataset",
           "ensure_demo", "generate", "main", "make_plan"]


def __getattr__(name: str):
    """`main` is loaded on first use: importing __main__ here would make `python -m` warn that it is
    already imported when runpy runs it."""
    if name == "main":
        from hpa_tf.data.synthetic.__main__ import main

        globals()["main"] = main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
