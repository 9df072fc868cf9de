"""What every section of the benchmark shares: progress on stderr, waiting for a count to reach its
target, and whether the run has been interrupted (a section then stops instead of noting a problem)."""

import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.ensure_broker import unreachable

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


def start(program: str, amqp_url: str, *, starts_one: str = "make bench") -> bool:
    """A benchmark's start: SIGINT/SIGTERM stop it cleanly (``on_signal``); whether RabbitMQ answers at
    ``amqp_url`` (if not, said on stderr, with the command that starts one)."""
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if (reason := unreachable(amqp_url)) is not None:
        print(f"{program}: no RabbitMQ answers at {amqp_url} ({reason}); `{starts_one}` starts one", file=sys.stderr)
        return False
    return True


def finish(program: str, problems: list[str], work: Path | None = None) -> int:
    """A benchmark's exit status: 1 with what is broken said on stderr (and where the services' logs are
    kept), else 0, its work folder removed."""
    if problems:
        print("\n" + "!" * 78, file=sys.stderr)
        print(f"{program.upper()} FOUND SOMETHING BROKEN:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        if work is not None:
            print(f"service logs kept in {work}", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        return 1
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def write_results(out: Path, results: dict[str, Any], stamp: str, prefix: str = "") -> None:
    """``results`` as JSON to ``out/<prefix><stamp>.json`` and ``out/<prefix>latest.json``, said on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(results, indent=2) + "\n"
    (out / f"{prefix}{stamp}.json").write_text(payload)
    (out / f"{prefix}latest.json").write_text(payload)
    print(f"\nWrote {out / f'{prefix}{stamp}.json'} (and {prefix}latest.json); took {results['duration_s']:.0f}s.")
