"""Procedural RGBY cell images for the synthetic dataset: cells, reference stains and 28 protein patterns.

Geometry is drawn in image-relative units, so the same random draws render the same field at any size
(the synthetic TIFFs are the PNG fields rendered at twice the size). Red = microtubules, blue = nucleus,
yellow = ER; green holds one pattern per class, tied to those structures as in HPA images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from hpa_tf.labels import NUM_CLASSES

# Where each point-like class puts its spots, how many per cell, spot size (cell radii) and brightness.
# region: nucleus | cyto | perinuclear | periphery
_SPOTS = {
    2: ("nucleus", (2, 4), 0.09, 1.0),  # Nucleoli: a few big bright spots in the nucleus
    3: ("nucleus", (6, 10), 0.025, 0.9),  # Nucleoli fibrillar center: clusters of tiny dots
    4: ("nucleus", (12, 20), 0.05, 0.55),  # Nuclear speckles: many dim irregular blobs
    5: ("nucleus", (3, 7), 0.03, 1.0),  # Nuclear bodies: a few small bright dots
    8: ("cyto", (25, 40), 0.02, 0.7),  # Peroxisomes: many tiny dots
    9: ("cyto", (10, 18), 0.04, 0.8),  # Endosomes
    10: ("perinuclear", (6, 10), 0.055, 0.9),  # Lysosomes: larger perinuclear dots
    18: ("perinuclear", (1, 1), 0.06, 1.0),  # MTOC: one dot beside the nucleus
    24: ("perinuclear", (1, 1), 0.16, 1.0),  # Aggresome: one big blob
    26: ("cyto", (2, 5), 0.07, 1.0),  # Cytoplasmic bodies: a few medium bright bodies
}
_CYCLE_CLASSES = (16, 17)  # cell-cycle patterns: shown by a few cells of the field only


@dataclass(frozen=True)
class FieldStyle:
    """Look of one antibody's green stain, shared by all its fields: what makes two antibodies with the
    same labels look different in HPA (brightness, the weight of each location, the grain of the stain,
    faint nonspecific staining, how evenly the cells express it)."""

    gain: float  # overall green brightness
    spot_scale: float  # size factor of point-like patterns
    count_scale: float  # count factor of point-like patterns
    texture_phase: float  # phase of the filament textures
    weights: tuple[float, ...] = (1.0,) * NUM_CLASSES  # each class's brightness (main vs additional)
    diffuse: float = 0.0  # faint nonspecific staining of the whole cell ...
    diffuse_nuclear: float = 0.5  # ... and the share of it in the nucleus
    grain: float = 0.0  # contrast of the stain's granularity ...
    grain_size: float = 0.05  # ... and the size of its grains (cell radii)
    spread: float = 0.0  # cell-to-cell variation of expression (0: every cell alike)
    radial: float = 0.0  # enrichment towards the cell's edge (> 0) or its centre (< 0)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> FieldStyle:
        return cls(
            gain=float(rng.uniform(0.45, 1.0)),
            spot_scale=float(rng.uniform(0.8, 1.25)),
            count_scale=float(rng.uniform(0.75, 1.3)),
            texture_phase=float(rng.uniform(0, 2 * np.pi)),
            weights=tuple(float(w) for w in rng.uniform(0.55, 1.0, NUM_CLASSES)),
            diffuse=float(rng.uniform(0.0, 0.08)),
            diffuse_nuclear=float(rng.uniform(0, 1)),
            grain=float(rng.uniform(0.0, 0.35)),
            grain_size=float(rng.uniform(0.05, 0.25)),
            spread=float(rng.uniform(0.0, 0.5)),
            radial=float(rng.uniform(-1.0, 1.0)),
        )


@dataclass(frozen=True)
class CellLine:
    """A cell line's morphology and reference staining, shared by every field of a well: relative to the
    preset's cell layout (density scales the count, size the radius)."""

    name: str
    density: float
    size: float
    aspect: tuple[float, float]  # minor / major axis of the cell
    nucleus: tuple[float, float]  # nucleus radius / cell radius
    fibres: tuple[int, int]  # microtubule bundles
    stains: tuple[float, float, float]  # red, blue, yellow brightness


# Names of HPA v18's cell lines; the numbers are a plausible morphology each (U-2 OS large and flat, A-431
# small epithelial in clusters, U-251 MG elongated, ...), not measurements. The first three are the lines
# HPA used most.
CELL_LINES = (
    CellLine("U-2 OS", 0.8, 1.2, (0.75, 1.0), (0.35, 0.45), (20, 30), (1.0, 0.9, 0.9)),
    CellLine("A-431", 1.5, 0.8, (0.8, 1.0), (0.5, 0.6), (14, 20), (0.7, 1.0, 1.0)),
    CellLine("U-251 MG", 1.0, 1.05, (0.45, 0.65), (0.4, 0.5), (18, 26), (0.9, 0.8, 0.7)),
    CellLine("HeLa", 1.2, 0.95, (0.7, 0.9), (0.45, 0.55), (16, 24), (0.8, 1.0, 0.8)),
    CellLine("MCF7", 1.6, 0.75, (0.85, 1.0), (0.5, 0.62), (12, 18), (0.6, 0.95, 1.0)),
    CellLine("CACO-2", 1.8, 0.7, (0.85, 1.0), (0.45, 0.55), (12, 16), (0.65, 0.85, 0.9)),
    CellLine("HEK 293", 1.7, 0.7, (0.8, 1.0), (0.55, 0.65), (12, 18), (0.55, 1.0, 0.75)),
    CellLine("SH-SY5Y", 1.3, 0.75, (0.4, 0.6), (0.55, 0.65), (10, 16), (0.9, 1.0, 0.6)),
    CellLine("BJ", 0.7, 1.25, (0.3, 0.45), (0.3, 0.4), (24, 32), (1.0, 0.75, 0.85)),
    CellLine("A549", 1.1, 1.0, (0.65, 0.85), (0.42, 0.52), (16, 24), (0.85, 0.9, 1.0)),
    CellLine("Hep G2", 1.6, 0.8, (0.8, 1.0), (0.45, 0.55), (14, 20), (0.7, 0.95, 0.95)),
    CellLine("PC-3", 1.0, 1.0, (0.6, 0.8), (0.4, 0.5), (16, 22), (0.95, 0.85, 0.8)),
)


@dataclass(frozen=True)
class Cell:
    """One cell: an ellipse with an elliptical nucleus, in image-relative units."""

    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float
    nucleus: float  # nucleus radius / cell radius
    intensity: float
    n_fibres: int
    neighbour: tuple[float, float]  # direction (unit vector) to the nearest other cell


@dataclass(frozen=True)
class CellLayout:
    """Cell count and size ranges of a preset (image-relative radius)."""

    count: tuple[int, int]
    radius: tuple[float, float]


def draw_cells(rng: np.random.Generator, layout: CellLayout, line: CellLine) -> list[Cell]:
    """Place non-overlapping-ish cells of a cell line with rejection sampling."""
    low = max(1, round(layout.count[0] * line.density))
    target = int(rng.integers(low, max(low, round(layout.count[1] * line.density)) + 1))
    centres, radii = [], []
    for _ in range(target * 30):
        if len(centres) == target:
            break
        radius = rng.uniform(*layout.radius) * line.size
        centre = rng.uniform(0.05, 0.95, size=2)
        if all(np.hypot(*(centre - c)) > 1.35 * max(radius, r) for c, r in zip(centres, radii, strict=True)):
            centres.append(centre)
            radii.append(radius)
    cells = []
    for i, (centre, radius) in enumerate(zip(centres, radii, strict=True)):
        others = [c for j, c in enumerate(centres) if j != i]
        if others:
            nearest = min(others, key=lambda c: np.hypot(*(c - centre)))
            direction = (nearest - centre) / max(np.hypot(*(nearest - centre)), 1e-6)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)])
        cells.append(
            Cell(
                cx=float(centre[0]),
                cy=float(centre[1]),
                radius=float(radius),
                aspect=float(rng.uniform(*line.aspect)),
                angle=float(rng.uniform(0, np.pi)),
                nucleus=float(rng.uniform(*line.nucleus)),
                intensity=float(rng.uniform(0.6, 1.0)),
                n_fibres=int(rng.integers(line.fibres[0], line.fibres[1] + 1)),
                neighbour=(float(direction[0]), float(direction[1])),
            )
        )
    return cells


def _local_to_image(cell: Cell, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell-local coordinates (cell radii, rotated frame) -> image-relative x, y."""
    ca, sa = np.cos(cell.angle), np.sin(cell.angle)
    u = u * cell.radius
    v = v * cell.radius * cell.aspect
    return cell.cx + ca * u - sa * v, cell.cy + sa * u + ca * v


class _Canvas:
    """Full-size float planes plus helpers to paint cell-local fields and blurred spots."""

    def __init__(self, size: int):
        self.size = size
        self.planes = {name: np.zeros((size, size), np.float32) for name in ("r", "g", "b", "y")}

    def window(self, cell: Cell, margin: float = 1.15):
        """Pixel slice around a cell and its local coordinates (u, v, rho, phi) on that slice."""
        size = self.size
        extent = cell.radius * margin
        x0, x1 = (max(0, int((cell.cx - extent) * size)), min(size, int((cell.cx + extent) * size) + 1))
        y0, y1 = (max(0, int((cell.cy - extent) * size)), min(size, int((cell.cy + extent) * size) + 1))
        if x1 <= x0 or y1 <= y0:
            return None
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / size - cell.cx
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / size - cell.cy
        dx, dy = np.meshgrid(xs, ys)
        ca, sa = np.cos(cell.angle), np.sin(cell.angle)
        u = (ca * dx + sa * dy) / cell.radius
        v = (-sa * dx + ca * dy) / (cell.radius * cell.aspect)
        return (slice(y0, y1), slice(x0, x1)), u, v, np.hypot(u, v), np.arctan2(v, u)

    def paint(self, plane: str, region, values: np.ndarray) -> None:
        target = self.planes[plane][region]
        np.maximum(target, values, out=target)

    def spots(self, xs: np.ndarray, ys: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian spots (sigma image-relative) at image-relative points, peak about `weights`."""
        size = self.size
        impulses = np.zeros((size, size), np.float32)
        ix = np.clip(np.round(xs * size - 0.5).astype(int), 0, size - 1)
        iy = np.clip(np.round(ys * size - 0.5).astype(int), 0, size - 1)
        np.add.at(impulses, (iy, ix), weights)
        sigma_px = max(sigma * size, 0.6)
        return gaussian_filter(impulses, sigma_px) * (2 * np.pi * sigma_px**2)


def _soft(x: np.ndarray, width: float = 0.08) -> np.ndarray:
    """Soft step: 1 well inside (x < -width), 0 outside."""
    return np.clip(0.5 - x / (2 * width), 0.0, 1.0)


def _sharpen(x: np.ndarray, squarings: int) -> np.ndarray:
    """x ** (2 ** squarings) by repeated squaring (much cheaper than a float power): thin ridges."""
    for _ in range(squarings):
        x = x * x
    return x


def _ring(x: np.ndarray, width: float) -> np.ndarray:
    """Gaussian ridge of the given width where x == 0."""
    return np.exp(-((x / width) ** 2))


def _region_points(rng: np.random.Generator, cell: Cell, region: str, n: int):
    """n random image-relative points in a region of a cell."""
    phi = rng.uniform(0, 2 * np.pi, n)
    k = cell.nucleus
    if region == "nucleus":
        rho = k * 0.8 * np.sqrt(rng.uniform(0, 1, n))
    elif region == "perinuclear":
        rho = rng.uniform(k * 1.15, k * 1.45, n)
    elif region == "periphery":
        rho = rng.uniform(0.85, 0.95, n)
    else:  # cytoplasm
        rho = np.sqrt(rng.uniform((k * 1.15) ** 2, 0.9**2, n))
    return _local_to_image(cell, rho * np.cos(phi), rho * np.sin(phi))


def _segments(rng: np.random.Generator, cell: Cell, n: int, length: float, region: str = "cyto"):
    """Points along n short random segments (length in cell radii): tubules and rods."""
    x0, y0 = _region_points(rng, cell, region, n)
    theta = rng.uniform(0, np.pi, n)
    steps = np.linspace(-0.5, 0.5, 7)
    half = length * cell.radius
    xs = x0[:, None] + np.cos(theta)[:, None] * steps * half
    ys = y0[:, None] + np.sin(theta)[:, None] * steps * half
    return xs.ravel(), ys.ravel()


def _ring_points(rng: np.random.Generator, cell: Cell, n: int, radius: float):
    """Points on n small circles (radius in cell radii): lipid droplets, rings."""
    x0, y0 = _region_points(rng, cell, "cyto", n)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    r = radius * cell.radius
    return (x0[:, None] + r * np.cos(angles)).ravel(), (y0[:, None] + r * np.sin(angles)).ravel()


def _reference_stains(canvas: _Canvas, cell: Cell, phase: float, line: CellLine) -> dict[str, np.ndarray]:
    """Paint blue nucleus, red microtubules and yellow ER for one cell at its line's staining; return its
    local fields."""
    win = canvas.window(cell)
    if win is None:
        return {}
    region, u, v, rho, phi = win
    k = cell.nucleus
    rho_n = rho / k
    body = _soft(rho - 1.0)
    nucleus = _soft(rho_n - 1.0, 0.1)
    cyto = body * (1.0 - nucleus)
    fibres = _sharpen(0.5 + 0.5 * np.cos(cell.n_fibres * phi + 2.5 * np.sin(3 * rho + phase)), 3)
    microtubules = cyto * fibres * (1.1 - 0.6 * rho)
    er_net = np.abs(np.sin(11 * u + 4 * v * v + phase) + np.sin(9 * v - 3 * u * u))
    er = cyto * np.exp(-((er_net / 0.45) ** 2) - 1.5 * np.clip(rho - k, 0, None))
    chromatin = 0.85 + 0.15 * np.sin(23 * u + 19 * v * v)
    red, blue, yellow = (cell.intensity * gain for gain in line.stains)
    canvas.paint("b", region, blue * nucleus * chromatin)
    canvas.paint("r", region, red * (0.75 * microtubules + 0.12 * cyto))
    canvas.paint("y", region, yellow * (0.8 * er + 0.1 * cyto))
    return dict(region=region, u=u, v=v, rho=rho, phi=phi, rho_n=rho_n, body=body, nucleus=nucleus,
                cyto=cyto, microtubules=microtubules, er=er)


def _field_pattern(cls: int, f: dict, cell: Cell, style: FieldStyle) -> np.ndarray | None:
    """Green pattern of a class that is a field over the cell (fills, rings, textures), or None."""
    u, v, rho, phi, rho_n = f["u"], f["v"], f["rho"], f["phi"], f["rho_n"]
    if cls == 0:  # Nucleoplasm
        return 0.8 * f["nucleus"]
    if cls == 1:  # Nuclear membrane
        return _ring(rho_n - 1.0, 0.12)
    if cls == 6:  # Endoplasmic reticulum
        return f["er"] * 1.2
    if cls == 7:  # Golgi apparatus: a crescent hugging one side of the nucleus
        side = np.cos(phi - style.texture_phase)
        return _ring(rho_n - 1.3, 0.25) * np.clip(side, 0, None) ** 3 * f["body"]
    if cls == 11:  # Intermediate filaments: long wavy lines through the cytoplasm
        lines = _sharpen(0.5 + 0.5 * np.cos(14 * (u + 0.25 * np.sin(5 * v + style.texture_phase))), 3)
        return 0.9 * lines * f["cyto"]
    if cls == 12:  # Actin filaments: straight parallel stress fibres over the whole cell
        b = style.texture_phase
        return _sharpen(0.5 + 0.5 * np.cos(22 * (u * np.cos(b) + v * np.sin(b))), 4) * f["body"]
    if cls == 13:  # Focal adhesion sites: short dashes at the cell edge
        dashes = (np.cos(14 * phi + style.texture_phase) > 0.6).astype(np.float32)
        return dashes * _ring(rho - 0.9, 0.07)
    if cls == 14:  # Microtubules
        return 1.3 * f["microtubules"]
    if cls == 21:  # Plasma membrane
        return _ring(rho - 0.97, 0.06)
    if cls == 22:  # Cell junctions: membrane on the side facing the neighbour
        toward = np.arctan2(cell.neighbour[1], cell.neighbour[0]) - cell.angle
        facing = np.cos(phi - toward)
        return _ring(rho - 0.97, 0.1) * np.clip(facing, 0, None) ** 4
    if cls == 25:  # Cytosol
        return 0.7 * f["cyto"]
    if cls == 17:  # Mitotic spindle: two cones across the nucleus
        a = np.abs(u / cell.nucleus)
        return (np.abs(v / cell.nucleus) < 0.45 * (1 - a)) * (a < 1.0) * 1.0
    return None


def _spot_pattern(canvas: _Canvas, rng: np.random.Generator, cls: int, cells: list[Cell],
                  expression: list[float], style: FieldStyle) -> np.ndarray | None:
    """Green pattern of a point-like class (spots, tubules, rings, bridges), each cell's at its
    expression, or None."""
    xs, ys, ws, sigma = [], [], [], 0.0
    for cell, level in zip(cells, expression, strict=True):
        if cls in _SPOTS:
            region, (lo, hi), size, _ = _SPOTS[cls]
            n = max(1, int(round(rng.integers(lo, hi + 1) * (style.count_scale if hi > 1 else 1))))
            px, py = _region_points(rng, cell, region, n)
            sigma = size * style.spot_scale * cell.radius
        elif cls == 15:  # Microtubule ends: dots at the tips of the fibres
            phi = np.arange(cell.n_fibres) * 2 * np.pi / cell.n_fibres
            px, py = _local_to_image(cell, 0.9 * np.cos(phi), 0.9 * np.sin(phi))
            sigma = 0.025 * cell.radius
        elif cls == 19:  # Centrosome: a pair of dots beside the nucleus
            px, py = _region_points(rng, cell, "perinuclear", 1)
            px, py = np.r_[px, px + 0.12 * cell.radius], np.r_[py, py + 0.05 * cell.radius]
            sigma = 0.03 * cell.radius
        elif cls == 23:  # Mitochondria: many short tubules
            px, py = _segments(rng, cell, int(18 * style.count_scale), 0.18)
            sigma = 0.02 * cell.radius
        elif cls == 27:  # Rods & rings
            rx, ry = _segments(rng, cell, 2, 0.4)
            cx, cy = _ring_points(rng, cell, 2, 0.08)
            px, py = np.r_[rx, cx], np.r_[ry, cy]
            sigma = 0.02 * cell.radius
        elif cls == 20:  # Lipid droplets: hollow rings
            px, py = _ring_points(rng, cell, int(rng.integers(3, 7)), 0.07 * style.spot_scale)
            sigma = 0.018 * cell.radius
        elif cls == 16:  # Cytokinetic bridge: a thin line towards the neighbouring cell
            t = np.linspace(0.9, 1.9, 16)
            px = cell.cx + cell.neighbour[0] * t * cell.radius
            py = cell.cy + cell.neighbour[1] * t * cell.radius
            sigma = 0.025 * cell.radius
        else:
            return None
        xs.append(px)
        ys.append(py)
        ws.append(np.full(len(px), level, np.float32))
    if not xs:
        return None
    weight = _SPOTS[cls][3] if cls in _SPOTS else 1.0
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    keep = (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
    return weight * canvas.spots(x[keep], y[keep], w[keep], sigma)


def render_field(rng: np.random.Generator, labels: list[int], style: FieldStyle, layout: CellLayout,
                 size: int, line: CellLine = CELL_LINES[0]) -> np.ndarray:
    """One RGBY field of a cell line, float32 (size, size, 4) in [0, 1]: draws cells, stains and the
    antibody's green patterns, then the camera (focus, exposure, noise) that differs field to field."""
    if any(not 0 <= c < NUM_CLASSES for c in labels):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}, got {labels}")
    cells = draw_cells(rng, layout, line)
    canvas = _Canvas(size)
    fields = [_reference_stains(canvas, cell, style.texture_phase, line) for cell in cells]
    expression = [cell.intensity * (1.0 - style.spread * float(rng.uniform())) for cell in cells]
    for f in fields:
        if f:
            f["profile"] = _profile(f, style)  # once a cell: every pattern and the faint staining use it
    green = np.zeros((size, size), np.float32)
    for cls in sorted(labels):
        showing = [True] * len(cells)
        if cls in _CYCLE_CLASSES:  # only a few cells are dividing
            showing = list(rng.uniform(size=len(cells)) < 0.4)
            showing[int(rng.integers(len(cells)))] = True
        shown = [(c, e) for c, e, s in zip(cells, expression, showing, strict=True) if s]
        spots = _spot_pattern(canvas, rng, cls, [c for c, _ in shown], [e for _, e in shown], style)
        if spots is not None:
            np.maximum(green, style.weights[cls] * spots, out=green)
            continue
        for cell, f, level, show in zip(cells, fields, expression, showing, strict=True):
            pattern = _field_pattern(cls, f, cell, style) if f and show else None
            if pattern is not None:
                target = green[f["region"]]
                np.maximum(target, style.weights[cls] * level * pattern * f["profile"], out=target)
    _nonspecific(green, fields, expression, style)
    _granulate(rng, green, cells, style)
    canvas.planes["g"] = np.clip(green, 0, 1) * style.gain
    planes = np.stack([canvas.planes[c] for c in ("r", "g", "b", "y")])  # channel-first while processing
    return np.moveaxis(_camera(rng, planes, size), 0, -1)


def _profile(f: dict, style: FieldStyle) -> np.ndarray:
    """The antibody's radial enrichment over one cell: brighter towards its edge or its centre."""
    return np.clip(1.0 + style.radial * (f["rho"] - 0.5), 0.2, None)


def _nonspecific(green: np.ndarray, fields: list[dict], expression: list[float], style: FieldStyle) -> None:
    """Add the antibody's faint staining of the whole cell (its share in the nucleus its own)."""
    if style.diffuse <= 0:
        return
    for f, level in zip(fields, expression, strict=True):
        if f:
            share = style.diffuse_nuclear * f["nucleus"] + (1 - style.diffuse_nuclear) * f["cyto"]
            green[f["region"]] += style.diffuse * level * share * f["profile"]


def _granulate(rng: np.random.Generator, green: np.ndarray, cells: list[Cell], style: FieldStyle) -> None:
    """Modulate the stain by grains of the antibody's size and contrast (smoothed noise, unit spread)."""
    if style.grain <= 0 or not cells:
        return
    size = green.shape[0]
    sigma = max(style.grain_size * float(np.mean([c.radius for c in cells])) * size, 0.7)
    grains = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    grains *= style.grain / max(float(grains.std()), 1e-6)
    green *= np.clip(1.0 + grains, 0.0, None)


def _blur(planes: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1, 2, 1] / 4 binomial blur of (C, H, W) planes over H and W (edges repeated)."""
    for _ in range(passes):
        for axis in (1, 2):
            src = np.moveaxis(planes, axis, 0)
            out = 0.5 * src
            out[1:] += 0.25 * src[:-1]
            out[:-1] += 0.25 * src[1:]
            out[0] += 0.25 * src[0]
            out[-1] += 0.25 * src[-1]
            planes = np.moveaxis(out, 0, axis)
    return planes


def _uneven_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dim, smooth, per-channel background waves (uneven illumination), (4, size, size).

    Besides realism, it decorrelates the channels' low frequencies, so that unrelated fields rarely
    share all three pHashes."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    fx, fy = (rng.uniform(-1.5, 1.5, size=(2, 4, 1)) * np.pi * 2).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(4, 1)).astype(np.float32)
    half = 0.5 * rng.uniform(0.006, 0.025, size=(4, 1, 1)).astype(np.float32)
    ax, ay = fx * coords, fy * coords + phase  # (4, size) each
    # cos(ay + ax) = cos(ay) cos(ax) - sin(ay) sin(ax): a rank-2 product per channel
    rows = np.stack([np.cos(ay), -np.sin(ay)], axis=-1)  # (4, size, 2)
    cols = np.stack([np.cos(ax), np.sin(ax)], axis=1)  # (4, 2, size)
    return half * (1.0 + rows @ cols)


def _camera(rng: np.random.Generator, planes: np.ndarray, size: int) -> np.ndarray:
    """Optical blur (focus varies by field), per-channel exposure (the green's set per antibody, so it varies
    less), shot noise of varying strength and a dim uneven background on (4, H, W) planes."""
    planes = _blur(planes, passes=max(1, round(size / 256 * rng.uniform(0.6, 2.0))))
    planes *= rng.uniform([0.8, 0.9, 0.8, 0.8], 1.0).astype(np.float32)[:, None, None]
    planes += _uneven_background(rng, size)
    np.maximum(planes, 0.0, out=planes)  # rounding can leave -1e-10 where the wave is 0
    noise = rng.random(planes.shape, dtype=np.float32) - 0.5  # uniform noise: cheap, and enough here
    noise *= np.float32(rng.uniform(0.7, 1.4)) * (0.006 + 0.07 * np.sqrt(planes))
    planes += noise
    return np.clip(planes, 0.0, 1.0, out=planes)
