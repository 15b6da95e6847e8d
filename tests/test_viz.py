"""Pictures: the RGBY composite, caption colours, exact gallery geometry (pixel size and where each tile
lands), charts from a CSV log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpa_tf import viz


def test_rgby_composite_shows_yellow_as_red_plus_green():
    pixels = np.array([[[200, 0, 0, 0], [0, 90, 0, 0], [0, 0, 70, 0], [0, 0, 0, 200], [250, 250, 10, 250]]],
                      dtype=np.uint8)
    rgb = viz.rgby_to_rgb(pixels)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    expected = [[200, 0, 0], [0, 90, 0], [0, 0, 70], [100, 100, 0], [255, 255, 10]]  # last: clipped
    np.testing.assert_array_equal(rgb[0], expected)
    with pytest.raises(ValueError, match="RGBY"):
        viz.rgby_to_rgb(np.zeros((4, 4, 3), np.uint8))


def test_thumbnail_shrinks_large_images_only():
    assert viz.thumbnail(np.zeros((512, 512, 4), np.uint8)).shape == (viz.TILE_PX, viz.TILE_PX, 3)
    assert viz.thumbnail(np.zeros((64, 64, 4), np.uint8)).shape == (64, 64, 3)


def test_label_lines_mark_missed_and_added_labels():
    lines = viz.label_lines(true=[0, 2], predicted=[0, 5])
    assert lines == [("Nucleoplasm", viz.CORRECT), ("missed: Nucleoli", viz.MISSED),
                     ("added: Nuclear bodies", viz.ADDED)]
    assert viz.label_lines([25], None) == [("true: Cytosol", viz.PLAIN)]
    assert viz.label_lines(None, [25]) == [("pred: Cytosol", viz.PLAIN)]
    assert viz.label_lines([1], [2], ("majority only", "only here"))[1] == ("only here: Nucleoli", viz.ADDED)


def test_gallery_has_the_expected_size_and_tiles_where_they_belong(tmp_path):
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]
    tile = [viz.Tile(np.full((64, 64, 3), c, np.uint8), [("caption", viz.PLAIN)] * 12) for c in colours]
    path = viz.render_gallery([tile[:3], tile[3:]], tmp_path / "g.png")
    row = viz.TILE_PX + viz.CAPTION_LINES * viz.LINE_PX
    with Image.open(path) as png:
        assert png.size == viz.gallery_size(3, 2) == (3 * viz.TILE_PX, 2 * row)
        pixels = np.asarray(png.convert("RGB"))
    half = viz.TILE_PX // 2
    for n, colour in enumerate(colours):
        r, c = divmod(n, 3)
        np.testing.assert_allclose(pixels[r * row + half, c * viz.TILE_PX + half], colour, atol=2)
    assert (pixels[row + half, 2 * viz.TILE_PX + half] == 255).all()  # the second row has 2 tiles: white
    assert (pixels[viz.TILE_PX + 1: row, :60] < 128).any()  # caption text under a tile
    with pytest.raises(ValueError, match="at least one tile"):
        viz.render_gallery([[]], tmp_path / "empty.png")


def test_curve_panels_pair_each_metric_with_its_validation_twin():
    columns = ["epoch", "best_epoch", "best_val_focal", "learning_rate", "loss", "val_acc", "val_focal",
               "val_loss"]
    assert viz.curve_panels(columns) == [["learning_rate"], ["loss", "val_loss"], ["val_acc"], ["val_focal"]]


def test_training_curves_and_f1_chart_are_written(tmp_path):
    log = pd.DataFrame({"epoch": [0, 1, 2], "learning_rate": [1e-3, 5e-4, 1e-4], "loss": [2.0, 1.5, 1.2],
                        "val_loss": [2.1, 1.7, 1.6], "val_macro_f1": [0.1, 0.2, 0.25]})
    log.to_csv(tmp_path / "log.csv", index=False)
    path = viz.training_curves(tmp_path / "log.csv", tmp_path / "curves.png", "run")
    with Image.open(path) as png:
        assert png.size == (1200, 320)  # 3 panels in one row: 3 x 4 by 2.8 + 0.4 inches at 100 dpi
    chart = viz.f1_bar_chart({"F1": np.linspace(0, 1, 28)}, tmp_path / "f1.png")
    with Image.open(chart) as png:
        assert png.size == (800, 900)
    pd.DataFrame({"epoch": []}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(ValueError, match="no epochs"):
        viz.training_curves(tmp_path / "empty.csv", tmp_path / "x.png")


def test_upsample_keeps_the_axes_and_a_constant_map():
    assert viz.upsample(np.zeros((2, 3)), (10, 20)).shape == (10, 20)
    np.testing.assert_allclose(viz.upsample(np.full((4, 4), 0.5), (64, 48)), 0.5, rtol=1e-6)
    ramp = viz.upsample(np.array([[0.0, 1.0]]), (1, 8))[0]  # columns, left to right
    assert ramp[0] == 0.0 and ramp[-1] == 1.0 and (np.diff(ramp) >= 0).all()


def test_heatmap_overlay_colours_the_image_only_where_the_map_is_high():
    rgb = np.full((64, 64, 3), 100, np.uint8)
    np.testing.assert_array_equal(viz.heatmap_overlay(rgb, np.zeros((4, 4))), rgb)  # nothing to show
    heat = np.zeros((4, 4))
    heat[0, 3] = 2.0  # the top right cell
    out = viz.heatmap_overlay(rgb, heat)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    changed = (out != rgb).any(axis=-1)
    assert changed[:8, 56:].all() and not changed[24:].any() and not changed[:, :40].any()
    # at the peak: 40 % the image, 60 % the colour map's top (jet: dark red, 0.5, 0, 0)
    np.testing.assert_allclose(out[0, 63], [0.4 * 100 + 0.6 * 127.5, 40, 40], atol=1)
