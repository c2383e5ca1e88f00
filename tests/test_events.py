"""Reading a run back (``mechmon.events``): one run per folder, damaged records counted, memory bounded."""

import warnings

import pytest
from torch.utils.tensorboard import SummaryWriter

from mechmon.events import MAX_POINTS, RunError, load_run
from tests.helpers import mechmon_command


def write(folder, steps, key="mechmon/logits/norm_mean", purge_step=None):
    with SummaryWriter(str(folder), purge_step=purge_step) as writer:
        for step in steps:
            writer.add_scalar(key, float(step), step)


def test_two_version_folders_under_one_parent_are_refused_by_name(tmp_path):
    write(tmp_path / "version_0", [1, 2])
    write(tmp_path / "version_1", [1, 2])
    with pytest.raises(RunError, match=r"holds 2 runs \(version_0, version_1\); pass one of them"):
        load_run(tmp_path)
    assert [s for s, _ in load_run(tmp_path / "version_1").scalars["mechmon/logits/norm_mean"]] == [1, 2]
    done = mechmon_command("summary", str(tmp_path))
    assert done.returncode == 2 and "version_0, version_1" in done.stderr


def test_a_folder_reused_by_a_second_run_is_refused_and_a_marked_restart_is_read(tmp_path):
    write(tmp_path / "reused", [1, 2, 3])
    write(tmp_path / "reused", [1, 2])
    with pytest.raises(RunError, match="holds more than one run: .* starts again at step 1, after .* step 3"):
        load_run(tmp_path / "reused")
    write(tmp_path / "resumed", [1, 2, 3, 4])
    write(tmp_path / "resumed", [3, 4, 5], purge_step=3)  # a resume from step 2 that says so
    assert [s for s, _ in load_run(tmp_path / "resumed").scalars["mechmon/logits/norm_mean"]] == [1, 2, 3, 4, 5]


def test_a_run_without_mechmon_data_yet_is_one_line_and_exit_code_2(tmp_path):
    write(tmp_path, [1, 2], key="train/loss")
    for command in ("summary", "report"):
        done = mechmon_command(command, str(tmp_path))
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "holds no mechmon data yet" in done.stderr


def test_damaged_bytes_in_the_middle_are_counted_and_the_records_after_them_read(tmp_path):
    write(tmp_path, range(1, 41))
    path = next(tmp_path.glob("events.out.tfevents.*"))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 5] = b"\xff" * 5
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipped 1 damaged stretch"):
        run = load_run(tmp_path)
    steps = [s for s, _ in run.scalars["mechmon/logits/norm_mean"]]
    assert run.damaged == 1 and 38 <= len(steps) < 40 and steps[-1] == 40  # one or two records lost, not the rest


def test_a_long_series_is_thinned_evenly_keeping_its_first_and_last_point(tmp_path):
    write(tmp_path, range(1, 5 * MAX_POINTS + 2))
    series = load_run(tmp_path).scalars["mechmon/logits/norm_mean"]
    steps = [s for s, _ in series]
    assert MAX_POINTS <= len(steps) <= 2 * MAX_POINTS + 1 and steps[0] == 1 and steps[-1] == 5 * MAX_POINTS + 1
    gaps = {b - a for a, b in zip(steps[:-2], steps[1:-1], strict=True)}
    assert len(gaps) == 1  # even spacing (the last point aside)


def test_tag_names_are_escaped_in_the_html_page(tmp_path):
    write(tmp_path / "run", [1, 2], key="mechmon/<img src=x onerror=alert(1)>/x")
    page = tmp_path / "r.html"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        done = mechmon_command("report", str(tmp_path / "run"), "--html", "-o", str(page))
    assert done.returncode == 0, done.stderr
    assert "<img src=x" not in page.read_text() and "&lt;img src=x onerror=alert(1)&gt;" in page.read_text()


@pytest.mark.parametrize(("args", "needs"), [(["-o", "x.png", "--html"], ".html"), (["-o", "x.svgz"], ".png"),
                                             (["-o", "noext"], ".png")])  # fmt: skip
def test_report_output_names_that_do_not_fit_are_one_line_and_exit_code_2(tmp_path, args, needs):
    write(tmp_path / "run", [1, 2])
    done = mechmon_command("report", str(tmp_path / "run"), *args, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and needs in done.stderr
    assert not (tmp_path / args[1]).exists()
