import numpy as np

from mechmon.writers import heatmap_rgb, scalar_layout


def test_layout_groups_scopes_under_one_chart_per_stat():
    layout = scalar_layout(
        [
            "mechmon/induction/score_max",
            "mechmon/induction/score_max/L01",
            "mechmon/prev_token/score_max",
            "mechmon/alerts/induction_emergence",
        ]
    )
    assert set(layout) == {"mechmon/induction", "mechmon/prev_token", "mechmon/alerts"}
    chart = layout["mechmon/induction"]["induction: score_max"]
    assert chart[0] == "Multiline" and len(layout["mechmon/induction"]) == 1
    import re

    assert re.match(chart[1][0], "mechmon/induction/score_max/L01")
    assert not re.match(chart[1][0], "mechmon/induction/score_max_other")


def test_heatmap_shape_colors_and_nan():
    img = heatmap_rgb(np.array([[0.0, 1.0], [np.nan, 2.0]]), cell=3)
    assert img.shape == (6, 6, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (68, 1, 84) and tuple(img[0, 3]) == (253, 231, 37)
    assert tuple(img[3, 0]) == (128, 128, 128) and tuple(img[3, 3]) == (253, 231, 37)  # clipped to vmax
