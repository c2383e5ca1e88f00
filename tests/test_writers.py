import re

import numpy as np

from mechmon.figures import best_cell, heatmap_image
from mechmon.writers import heatmap_rgb, scalar_layout, tensorboard_order

KEYS = [
    "mechmon/induction/score_max",
    "mechmon/induction/score_max/alert_level",
    "mechmon/induction/score_max/L01",
    "mechmon/induction/loss_gap_nats",
    "mechmon/prev_token/score_max",
    "mechmon/alerts/induction_emergence",
]


def test_layout_opens_on_an_overview_draws_levels_and_keeps_scopes_and_alerts_apart():
    levels = {KEYS[0]: 0.3}
    layout = scalar_layout(KEYS, headlines=[KEYS[0]], levels=levels)
    assert list(layout) == [
        "mechmon overview",
        "mechmon/induction",
        "mechmon/induction by scope",
        "mechmon/prev_token",
        "mechmon/alerts",
    ]
    title = "induction: score_max (alert level 0.3: shaded past it)"
    beyond = f"{KEYS[0]}/beyond_level"  # the band: from the level to the value, only where it passed the level
    assert layout["mechmon overview"] == {title: ["Margin", [KEYS[0], KEYS[1], beyond]]}
    induction = layout["mechmon/induction"]
    assert list(induction) == ["induction: loss_gap_nats", title]
    assert induction["induction: loss_gap_nats"] == ["Margin", [KEYS[3]] * 3]  # a line alone
    [scoped] = layout["mechmon/induction by scope"]["induction: score_max by scope (hover a line for its layer)"][1]
    assert re.match(scoped, "mechmon/induction/score_max/L01") and not re.match(scoped, KEYS[1])
    assert not re.match(scoped, beyond)
    assert layout["mechmon/alerts"] == {
        "alerts fired at each step (count)": ["Multiline", ["^mechmon/alerts/count$"]],
        "alerts by rule (1 at the step)": ["Multiline", ["^mechmon/alerts/(?!count$)"]],
    }
    per_group = scalar_layout(["mechmon/moe_pathway/edit_dist/json"])
    hover = "moe_pathway: edit_dist by scope (hover a line for its layer)"
    assert list(per_group["mechmon/moe_pathway by scope"]) == [hover]
    written = tensorboard_order(layout)  # margin charts reversed: TensorBoard draws them last-written first
    assert list(written["mechmon/induction"]) == [title, "induction: loss_gap_nats"]
    assert written["mechmon/induction by scope"] == layout["mechmon/induction by scope"]


def test_heatmap_cells_colours_and_nan():
    img = heatmap_rgb(np.array([[0.0, 1.0], [np.nan, 2.0]]), cell=3)
    assert img.shape == (6, 6, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (68, 1, 84) and tuple(img[0, 3]) == (253, 231, 37)
    assert tuple(img[3, 0]) == (128, 128, 128) and tuple(img[3, 3]) == (253, 231, 37)  # clipped to vmax


def test_labelled_heatmap_is_a_figure_and_names_the_best_head():
    matrix = np.array([[0.1, 0.2, 0.3, 0.05], [0.9, np.nan, 0.4, 0.0]])
    assert best_cell(matrix) == (1, 0, 0.9)
    assert best_cell(np.full((2, 2), np.nan)) is None
    img = heatmap_image(matrix, "induction/head_scores")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] > 100 and img.shape[1] > 200  # a figure with axes and a colour bar, not 2 x 4 cells
