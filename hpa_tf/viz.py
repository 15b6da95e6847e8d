"""Pictures for people: RGBY composites, class activation maps over them, tile galleries with coloured
captions (nearest annotated images, the label-noise report), the per-class F1 bar chart and training curves
from a run's CSV log.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed); every PNG is
written atomically and has an exact, predictable pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from hpa_tf.atomic import write_atomic
from hpa_tf.labels import LABEL_NAMES

DPI = 100
TILE_PX = 192  # image side of a gallery tile
LINE_PX = 12  # one caption line
CAPTION_LINES = 8  # caption rows under each tile (longer captions are cut with "...")
FONT_PT = 7
HEATMAP, HEAT_OPACITY = "jet", 0.6  # class activation maps: colour map, opacity where the map is highest
# caption colours: a label both true and predicted / only true (missed) / only predicted (wrongly added)
CORRECT, MISSED, ADDED, PLAIN = "#1a7f37", "#cf222e", "#d4760a", "#202020"


def rgby_to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] (R, G, B, Y) -> uint8 [H, W, 3] as HPA shows it: red microtubules, green protein,
    blue nucleus, and the yellow ER added half to red and half to green (yellow = red + green)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 4:
        raise ValueError(f"expected an [H, W, 4] RGBY image, got shape {image.shape}")
    red, green, blue, yellow = np.moveaxis(image, -1, 0)
    rgb = np.stack([red + yellow / 2, green + yellow / 2, blue], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map [h, w] resized (bilinear, pixel centres aligned) to size (height, width): float32."""
    image = Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32))
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def heatmap_overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: a class activation map [h, w] (>= 0) scaled to its maximum, upsampled to the
    image and coloured (HEATMAP) over it, opaque in proportion to the map: where it is 0, the image as is."""
    heat = upsample(heat, rgb.shape[:2])
    peak = float(heat.max())
    heat = np.clip(heat / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heat)
    colour = matplotlib.colormaps[HEATMAP](heat)[..., :3] * 255.0
    alpha = HEAT_OPACITY * heat[..., None]
    return np.round((1.0 - alpha) * rgb + alpha * colour).astype(np.uint8)


def label_lines(true: list[int] | None, predicted: list[int] | None,
                words: tuple[str, str] = ("missed", "added")) -> list[tuple[str, str]]:
    """Caption lines (text, colour) of an image's labels: with both sets known, each class of either set,
    green when in both, red "missed" when only true, orange "added" when only predicted."""
    if true is None and predicted is None:
        return []
    if predicted is None:
        return [(f"true: {LABEL_NAMES[c]}", PLAIN) for c in sorted(true)]
    if true is None:
        return [(f"pred: {LABEL_NAMES[c]}", PLAIN) for c in sorted(predicted)]
    lines = []
    for c in sorted(set(true) | set(predicted)):
        if c in true and c in predicted:
            lines.append((LABEL_NAMES[c], CORRECT))
        elif c in true:
            lines.append((f"{words[0]}: {LABEL_NAMES[c]}", MISSED))
        else:
            lines.append((f"{words[1]}: {LABEL_NAMES[c]}", ADDED))
    return lines


def short_id(image_id: str, width: int = 18) -> str:
    """An Id that fits a caption: Kaggle UUIDs cut to their first 13 characters."""
    return image_id if len(image_id) <= width else image_id[:13] + "..."


@dataclass
class Tile:
    """One image of a gallery with its caption lines (text, colour)."""

    image: np.ndarray  # uint8 [H, W, 3]
    lines: list[tuple[str, str]] = field(default_factory=list)


def gallery_size(columns: int, rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a gallery of rows x columns tiles with their captions."""
    return columns * TILE_PX, rows * (TILE_PX + CAPTION_LINES * LINE_PX)


def _save(figure: Figure, path: str | Path) -> Path:
    """Write a figure as PNG at DPI, atomically."""
    FigureCanvasAgg(figure)
    return write_atomic(path, lambda temporary: figure.savefig(temporary, format="png", dpi=DPI))


def render_gallery(rows: list[list[Tile]], path: str | Path) -> Path:
    """A PNG with one row of tiles per list (left-aligned), each tile's caption underneath."""
    if not rows or not any(rows):
        raise ValueError("a gallery needs at least one tile")
    columns = max(len(row) for row in rows)
    width, height = gallery_size(columns, len(rows))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    row_px = TILE_PX + CAPTION_LINES * LINE_PX
    for r, row in enumerate(rows):
        top = height - r * row_px
        for c, tile in enumerate(row):
            axes = figure.add_axes((c * TILE_PX / width, (top - TILE_PX) / height, TILE_PX / width,
                                    TILE_PX / height))
            axes.imshow(tile.image, interpolation="bilinear")
            axes.set_axis_off()
            lines = tile.lines
            if len(lines) > CAPTION_LINES:
                lines = lines[:CAPTION_LINES - 1] + [("...", PLAIN)]
            for n, (text, colour) in enumerate(lines):
                figure.text((c * TILE_PX + 4) / width, (top - TILE_PX - 2 - n * LINE_PX) / height, text,
                            color=colour, fontsize=FONT_PT, va="top", ha="left", clip_on=True)
    return _save(figure, path)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """An RGBY uint8 image as an RGB composite of at most TILE_PX pixels a side."""
    rgb = Image.fromarray(rgby_to_rgb(image))
    if max(rgb.size) > TILE_PX:
        rgb = rgb.resize((TILE_PX, TILE_PX), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def f1_bar_chart(scores: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of per-class F1, one bar per series in `scores` (name -> [28]), macro in the legend."""
    figure = Figure(figsize=(8, 9), dpi=DPI, facecolor="white")
    axes = figure.add_axes((0.3, 0.06, 0.66, 0.86))
    y = np.arange(len(LABEL_NAMES))
    height = 0.8 / max(1, len(scores))
    for n, (name, values) in enumerate(scores.items()):
        values = np.asarray(values, dtype=float)
        axes.barh(y + n * height, np.nan_to_num(values), height,
                  label=f"{name} (macro {np.nanmean(values):.3f})")
    axes.set_yticks(y + height * (len(scores) - 1) / 2, LABEL_NAMES, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("F1")
    figure.suptitle(title, fontsize=10)
    axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def curve_panels(columns: list[str]) -> list[list[str]]:
    """Log columns grouped into panels: each metric with its `val_` twin, the rest one per panel (the epoch
    and the best-so-far bookkeeping columns left out)."""
    names = [c for c in columns if c != "epoch" and not c.startswith("best_")]
    panels, seen = [], set()
    for name in names:
        if name in seen:
            continue
        twin = f"val_{name}"
        panel = [name, twin] if twin in names else [name]
        seen.update(panel)
        panels.append(panel)
    return panels


def training_curves(log_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """One panel per logged metric (train and val together) against the epoch, from a Keras CSVLogger file."""
    log = pd.read_csv(log_csv)
    if log.empty or "epoch" not in log:
        raise ValueError(f"{log_csv}: no epochs logged")
    epochs = log["epoch"].to_numpy() + 1  # CSVLogger counts from 0, the checkpoints from 1
    panels = curve_panels(list(log.columns))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4 * columns, 2.8 * rows + 0.4), dpi=DPI, facecolor="white")
    figure.suptitle(title, fontsize=10)
    for n, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, n + 1)
        for name in panel:
            axes.plot(epochs, log[name].to_numpy(dtype=float), marker=".", label=name)
        axes.set_xlabel("epoch", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
        if panel[0] in ("lr", "learning_rate"):
            axes.set_yscale("log")
    figure.tight_layout()
    return _save(figure, path)
