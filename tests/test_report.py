"""``mechmon report`` on a real run: one figure per probe family, alert levels and alerts drawn, labelled heatmaps."""

import matplotlib.image
import pytest

from mechmon import InductionProbe, LogitsProbe, MechMonitor, Threshold
from mechmon.report import family_figures
from tests.helpers import TinyLM, make_trainer, mechmon_command, token_loader


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")  # fires at the first evaluation
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe()]
    monitor = MechMonitor(probes=probes, schedule=2, image_schedule=2, rules=[marker])
    make_trainer(root, [monitor], max_steps=6).fit(TinyLM(), token_loader())
    return root / "tb"


def test_each_family_has_its_stats_levels_alerts_and_heatmaps(run):
    figures = family_figures(run)
    assert list(figures) == ["logits", "induction", "prev_token"]  # the family that alerted first
    titles = {ax.get_title(): ax for ax in figures["induction"].axes}
    score = titles["score_max"]
    assert [line.get_ydata()[0] for line in score.lines[1:]] == [pytest.approx(0.3)]  # the emergence level, dashed
    heatmaps = [t for t in titles if t.startswith("head_scores at step")]
    assert [t.splitlines()[0] for t in heatmaps] == [
        "head_scores at step 1",
        "head_scores at step 4",
        "head_scores at step 6",
    ]
    assert all("max " in t and " at L" in t for t in heatmaps)  # the best head, named
    axis = titles[heatmaps[0]]
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("head", "layer")
    norm = {ax.get_title(): ax for ax in figures["logits"].axes}["norm_mean"]
    fired = [line for line in norm.lines if list(line.get_xdata()) == [1, 1]]  # the alert's vertical line at step 1
    assert fired and [t.get_text() for t in norm.texts] == ["marker"]


def test_a_stat_written_per_layer_is_one_line_per_layer_with_a_legend(run):
    from mechmon.events import load_run

    scalars = load_run(run).scalars
    layers = sorted(k.rsplit("/", 1)[1] for k in scalars if k.startswith("mechmon/induction/score_max/L"))
    assert len(layers) == 2  # TinyLM's two layers
    panel = {ax.get_title(): ax for ax in family_figures(run)["induction"].axes}["score_max by scope"]
    assert [t.get_text() for t in panel.get_legend().get_texts()] == layers
    assert len({line.get_color() for line in panel.lines}) == len(layers)  # told apart
    for line, layer in zip(panel.lines, layers, strict=True):
        assert list(line.get_ydata()) == [v for _, v in scalars[f"mechmon/induction/score_max/{layer}"]]
    low, high = panel.get_ylim()
    assert all(low <= v <= high for line in panel.lines for v in line.get_ydata())  # no value clipped


def test_the_report_command_writes_a_png_and_an_html_page(run, tmp_path):
    done = mechmon_command("report", str(run), "-o", str(tmp_path / "report.png"))
    assert done.returncode == 0, done.stderr
    assert matplotlib.image.imread(tmp_path / "report.png").shape[0] > 1000  # three families stacked
    page = mechmon_command("report", str(run), "--html", "-o", str(tmp_path / "report.html"))
    assert page.returncode == 0, page.stderr
    text = (tmp_path / "report.html").read_text()
    assert text.count('<img src="data:image/png;base64,') == 3 and "marker" in text
    missing = mechmon_command("report", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
