"""plot_api goes on from its snapshot (services/common/snapshots.py): at start it reads only the rows
appended since, and what it shows is what a read of every row shows (numpy on the CSV); a snapshot
that is damaged, missing or of another file means reading everything again."""

import logging
from pathlib import Path

import numpy as np
import pytest

from services.common.files import METRIC_LOG, PLOT_SNAPSHOT
from services.common.metric_rows import format_row
from services.common.settings import Settings
from services.common.snapshots import Snapshot, read_snapshot, write_snapshot
from services.plot_api.app import PLOT_SNAPSHOT_VERSION, PlotService
from services.plot_api.shards import ShardRowsTail
from services.plot_api.tail import MetricLogTail
from tests.unit.plot_api.test_shards import NOW, expected, make_rows, serve_files, write_csv

ROWS = make_rows(3000, 11, "1700000000.")


def service(logs: Path) -> PlotService:
    plot = PlotService(Settings(LOGS_DIR=logs, METRIC_API_URL="http://127.0.0.1:9", MODEL_API_URL="http://127.0.0.1:9"))
    plot._start_from_snapshot()  # what start() does first, without the refresh loop
    return plot


def assert_shows_the_csv(tail: MetricLogTail, rows_in_csv: int) -> None:
    errors = np.array([row.absolute_error for row in ROWS[:rows_in_csv]])
    assert tail.count == rows_in_csv and tail.last_id == ROWS[rows_in_csv - 1].id
    assert tail.distribution.mean == pytest.approx(errors.mean(), rel=1e-12)
    assert tail.distribution.maximum == errors.max() and tail.distribution.minimum == errors.min()
    assert tail.distribution.median == pytest.approx(np.median(errors), rel=2e-3)  # the buckets' accuracy
    assert list(tail.recent_errors()) == list(errors[-tail.recent :])


def stopped_after(logs: Path, first: int) -> None:
    """plot_api read ``first`` rows and stopped (writing its snapshot); then 500 more rows came."""
    write_csv(logs / METRIC_LOG, ROWS[:first])
    plot = service(logs)
    plot.tail.read_new()
    plot.write_snapshot()
    with (logs / METRIC_LOG).open("a") as f:
        f.write("".join(map(format_row, ROWS[first : first + 500])))


def test_plot_api_goes_on_from_its_snapshot_and_reads_only_what_came_since(tmp_path: Path) -> None:
    stopped_after(tmp_path, 2500)
    plot = service(tmp_path)
    assert plot.tail.count == 2500  # from the snapshot, before any read
    assert plot.tail.read_new() == 500  # only the new rows are read
    assert_shows_the_csv(plot.tail, 3000)


@pytest.mark.parametrize("damage", ["delete", "cut", "other file"])
def test_without_a_usable_snapshot_every_row_is_read_again(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    stopped_after(tmp_path, 2500)
    snapshot = tmp_path / PLOT_SNAPSHOT
    if damage == "delete":
        snapshot.unlink()
    elif damage == "cut":
        snapshot.write_bytes(snapshot.read_bytes()[:-10])
    else:
        csv = tmp_path / METRIC_LOG
        rows = make_rows(3000, 12, "1700000001.")
        csv.unlink()
        write_csv(csv, rows)  # another file (its inode number may well be the old one's)
    caplog.set_level(logging.WARNING)
    plot = service(tmp_path)
    assert plot.tail.count == 0
    assert plot.tail.read_new() == 3000
    if damage != "other file":
        assert_shows_the_csv(plot.tail, 3000)
    if damage != "delete":
        assert "cannot start from the snapshot" in caplog.text


def test_the_shards_union_goes_on_from_its_snapshot(tmp_path: Path) -> None:
    a, b = make_rows(300, 5, "a"), make_rows(200, 6, "b")
    files = {"s0": tmp_path / "a.csv", "s1": tmp_path / "b.csv"}
    write_csv(files["s0"], a[:200])
    write_csv(files["s1"], b)
    tail = ShardRowsTail(["http://s0", "http://s1"], transport=serve_files(files, max_bytes=1 << 20))
    tail.read_new()
    snapshot = Snapshot({})
    tail.save(snapshot)
    write_snapshot(tmp_path / "s.snapshot", PLOT_SNAPSHOT_VERSION, snapshot)
    with files["s0"].open("a") as f:
        f.write("".join(map(format_row, a[200:])))

    again = ShardRowsTail(["http://s0", "http://s1"], transport=serve_files(files, max_bytes=1 << 20))
    again.load(read_snapshot(tmp_path / "s.snapshot", PLOT_SNAPSHOT_VERSION))
    assert again.read_new() == 100  # s0's new rows only
    union, want = again.union_summary(NOW)["windows"]["all"], expected(a + b, 0.0)
    assert union["count"] == 500
    assert union["mae"] == pytest.approx(want["mae"]) and union["p95_ae"] == pytest.approx(want["p95_ae"])
    assert union["r2"] == pytest.approx(want["r2"])
