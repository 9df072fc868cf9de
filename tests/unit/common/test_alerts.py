"""The alert board: one path, one payload shape, one POST per change of state."""

import asyncio

from prometheus_client import REGISTRY

from services.common.alerts import AlertBoard
from tests.unit.common.test_webhook import Receiver


def raised_gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("monitor_alert_raised", {"alert": name})


def test_only_changes_of_state_are_posted_in_one_shape() -> None:
    async def run() -> tuple[list[dict], dict]:
        async with Receiver() as receiver:
            board = AlertBoard("some_api", f"http://127.0.0.1:{receiver.port}/hook")
            board.declare("board-test/a")
            assert board.set("board-test/a", True, 10.0, "too wrong", {"mae": 50.0})
            assert not board.set("board-test/a", True, 11.0, "still too wrong", {"mae": 51.0})
            assert board.set("board-test/a", False, 12.0, "fine again", {"mae": 40.0})
            assert not board.set("board-test/a", False, 13.0, "fine", {"mae": 39.0})
            shown = board.to_json()
            await board.close()
            return receiver.bodies, shown

    bodies, shown = asyncio.run(run())
    assert bodies == [
        {"alert": "board-test/a", "service": "some_api", "at": 10.0, "state": "raised", "since": 10.0,
         "summary": "too wrong", "details": {"mae": 50.0}},
        {"alert": "board-test/a", "service": "some_api", "at": 12.0, "state": "cleared", "since": 12.0,
         "summary": "fine again", "details": {"mae": 40.0}},
    ]  # fmt: skip
    # The board shows the rule's latest word, and the time of the last change.
    assert shown == {"board-test/a": {"state": "cleared", "since": 12.0, "summary": "fine", "details": {"mae": 39.0}}}


def test_a_declared_alert_is_visible_before_it_fires_and_the_gauge_follows() -> None:
    board = AlertBoard("some_api")  # no webhook: the board still keeps and shows the state
    board.declare("board-test/b", "not judged yet")
    assert board.to_json()["board-test/b"]["state"] == "cleared"
    assert raised_gauge("board-test/b") == 0
    board.set("board-test/b", True, 5.0, "up")
    assert raised_gauge("board-test/b") == 1 and board.raised == ["board-test/b"]
    before = board.key()
    board.set("board-test/b", True, 6.0, "up, still")
    assert board.key() == before  # the same state: a summary cache stays valid
    board.forget("board-test/b")
    assert raised_gauge("board-test/b") is None and board.raised == []
