"""The demo follows the registration: a new model's files are taken once they are all there."""

import os
import shutil
from pathlib import Path

import pytest

from services.common.reference import reference_path
from services.features_api import demo
from services.features_api.demo import RegistrationWatch
from services.model_api.train import train


def check_now(watch: RegistrationWatch, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(watch, "_checked", -demo.CHECK_INTERVAL_S)  # the next changed() looks now
    return watch.changed()


def test_a_sidecar_copied_before_its_reference_keeps_the_rows_until_the_reference_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    serving = tmp_path / "model" / "serving.pkl"
    serving.parent.mkdir()
    train(serving)
    forest = tmp_path / "forest.pkl"
    train(forest, model="random_forest")
    watch = RegistrationWatch(serving, seed=1)
    first = watch.current
    assert first.sampler is not None

    # The model and its sidecar are copied; its reference (forest.pkl.reference.parquet) not yet.
    shutil.copyfile(forest, serving)
    shutil.copyfile(f"{forest}.json", f"{serving}.json")
    os.utime(f"{serving}.json", ns=(1, 1))  # a stamp surely unlike the one read
    assert check_now(watch, monkeypatch)
    watch.use(watch.reload())
    assert watch.current is first and watch.current.sampler is not None  # still drawing
    assert "forest.pkl.reference.parquet" in caplog.text
    assert check_now(watch, monkeypatch)  # read again at the next check

    shutil.copyfile(reference_path(forest), serving.with_name(reference_path(forest).name))
    watch.use(watch.reload())
    assert watch.current is not first and watch.current.sampler is not None
    assert watch.current.source.endswith("forest.pkl.reference.parquet")
    assert not check_now(watch, monkeypatch)


def test_a_new_schema_without_its_reference_stops_the_demo_with_the_reason(tmp_path: Path) -> None:
    serving = tmp_path / "serving.pkl"
    train(serving)
    watch = RegistrationWatch(serving, seed=1)
    sidecar = Path(f"{serving}.json")
    sidecar.write_text(sidecar.read_text().replace('"name": "bmi"', '"name": "body_mass"'))
    watch.use(watch.reload())
    # Rows of the old schema would be refused by the model: none are drawn, and the reason is given.
    assert watch.current.sampler is None and watch.current.unavailable
