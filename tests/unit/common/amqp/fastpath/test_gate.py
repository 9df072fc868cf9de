"""fastpath.gate: each fast part is on only while the aiormq functions it relies on are as written for."""

import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiormq.channel
import pytest
from pydantic import ValidationError

from services.common.amqp.fastpath import gate
from services.common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[5]


def test_every_part_holds_on_the_pinned_aiormq() -> None:
    # A bump of aiormq fails here: read what changed in the functions named, then take the new
    # fingerprints from `python -m services.common.amqp.fastpath.gate`.
    assert {part.name: gate.changed(part) for part in gate.PARTS} == {part.name: [] for part in gate.PARTS}


def test_a_part_whose_aiormq_function_changed_is_off_and_the_warning_names_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def _on_deliver_frame(self: object, frame: object) -> None:  # as a later aiormq might have it
        raise NotImplementedError

    monkeypatch.setattr(aiormq.channel.Channel, "_on_deliver_frame", _on_deliver_frame)
    with caplog.at_level(logging.WARNING, logger=gate.__name__):
        usable = gate.usable.__wrapped__(gate.INLINE_DELIVERIES)  # not the cached answer
    assert not usable
    assert gate.changed(gate.INLINE_DELIVERIES) == ["aiormq.channel:Channel._on_deliver_frame"]
    assert "Channel._on_deliver_frame" in caplog.text and "deliveries without a task each is off" in caplog.text
    assert gate.changed(gate.BATCHED_PUBLISH) == []  # the other parts do not rely on it: they stay on


def test_a_function_gone_from_aiormq_turns_its_part_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aiormq.channel.Channel, "_Channel__get_content_header")
    assert gate.fingerprint("aiormq.channel:Channel._Channel__get_content_header") is None
    assert not gate.usable.__wrapped__(gate.INLINE_DELIVERIES)


def test_the_version_number_alone_decides_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "AIORMQ_VERSION", "7.2.5")
    assert all(gate.usable.__wrapped__(part) for part in gate.PARTS)


def test_the_module_prints_the_fingerprints_of_the_aiormq_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.common.amqp.fastpath.gate"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("aiormq ") and "written against 7.2.4" in lines[0]
    assert len(lines) == 1 + len(gate.FINGERPRINTS) and "changed" not in done.stdout
    assert '"aiormq.channel:Channel.basic_publish": "' in done.stdout


@pytest.mark.parametrize("part", gate.PARTS, ids=lambda part: part.key)
def test_fastpath_off_turns_off_the_part_it_names_and_only_it(
    fastpath_off: Callable[[str], None], caplog: pytest.LogCaptureFixture, part: gate.Part
) -> None:
    fastpath_off(part.key)
    with caplog.at_level(logging.WARNING, logger=gate.__name__):
        verdicts = {other.key: gate.usable(other) for other in gate.PARTS}
        gate.usable(part)
    assert verdicts == {other.key: other is not part for other in gate.PARTS}
    # said once, naming the part, however often the parts are asked about
    assert [record.getMessage() for record in caplog.records] == [
        f"FASTPATH_OFF={part.key} turns off {part.key} ({part.name}): the public path is used instead (correct, slower)"
    ]


def test_fastpath_off_all_turns_off_every_part(fastpath_off: Callable[[str], None]) -> None:
    fastpath_off(" All ")
    assert [gate.usable(part) for part in gate.PARTS] == [False] * len(gate.PARTS)


def test_without_fastpath_off_every_part_is_on_and_nothing_is_said(
    fastpath_off: Callable[[str], None], caplog: pytest.LogCaptureFixture
) -> None:
    fastpath_off("")
    with caplog.at_level(logging.INFO, logger=gate.__name__):
        assert all(gate.usable(part) for part in gate.PARTS)
    assert caplog.records == []


def test_a_key_of_fastpath_off_that_names_no_part_is_refused_with_the_keys_that_do() -> None:
    with pytest.raises(ValidationError, match=r"FASTPATH_OFF: 'publsh' is not a part of fastpath; the parts are "):
        Settings(FASTPATH_OFF="publsh,frames")
    # the keys the message lists are the parts' own
    message = "the parts are " + ", ".join(part.key for part in gate.PARTS) + " (or all)"
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(FASTPATH_OFF="fast")
    assert Settings(FASTPATH_OFF="publish, frames").fastpath_off == {"publish", "frames"}
