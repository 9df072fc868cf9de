"""What every section of the benchmark shares: progress on stderr, waiting for a count to reach its
target, and whether the run has been interrupted (a section then stops instead of noting a problem)."""

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

STALL_S = 60.0  # no new CSV row for this long (after publishing ended) = the pipeline is stuck
COUNT_POLL_S = 0.1

_interrupted = threading.Event()


def on_signal(signum: int, _frame: Any) -> None:
    """SIGINT/SIGTERM: stop the run (once), cleaning up as it unwinds."""
    if _interrupted.is_set():
        return  # already stopping: let the clean-up finish
    _interrupted.set()
    raise KeyboardInterrupt(f"signal {signum}")


def interrupted() -> bool:
    return _interrupted.is_set()


def say(message: str) -> None:
    """Progress, on stderr (the tables go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for_progress(
    progress: Callable[[], int], target: int, what: str, stall_s: float = STALL_S, report_every: float = 10.0
) -> bool:
    """Wait until ``progress() >= target``; give up (False) once it has not moved for ``stall_s``."""
    last, last_change, last_report = progress(), time.monotonic(), time.monotonic()
    while last < target:
        time.sleep(COUNT_POLL_S)
        now_value = progress()
        now = time.monotonic()
        if now_value != last:
            last, last_change = now_value, now
        elif now - last_change > stall_s:
            say(f"{what}: stuck at {last}/{target} for {stall_s:.0f}s; giving up")
            return False
        if now - last_report >= report_every:
            say(f"{what}: {last}/{target}")
            last_report = now
    return True
