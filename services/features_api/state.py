"""What features_api keeps across restarts: whether its demo loop is paused.

One small JSON file, ``LOGS_DIR/features_state.json``, rewritten atomically on each change.
LOGS_DIR because it is the one folder every service already has for what it writes (in
containers, the bind-mounted ``logs/``); a file of its own because the pause is features_api's
alone, and other services never read it.
"""

import json
import logging
from pathlib import Path

from services.common.files import atomic_write

log = logging.getLogger(__name__)


class StateFileError(OSError):
    """The state file could not be written; the message names it and says why."""


def load_paused(path: Path) -> bool:
    """Whether the loop was left paused. No file: not paused. A file that cannot be read is
    reported and ignored (the loop runs; the next pause or resume rewrites it)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        log.error("cannot read %s (%s); the demo loop starts unpaused", path, exc)
        return False
    paused = state.get("paused") if isinstance(state, dict) else None
    if not isinstance(paused, bool):
        log.error('%s has no true/false "paused" (%r); the demo loop starts unpaused', path, state)
        return False
    return paused


def save_paused(path: Path, paused: bool) -> None:
    try:
        atomic_write(path, json.dumps({"paused": paused}).encode() + b"\n")
    except OSError as exc:
        raise StateFileError(f"cannot save the pause to {path}: {exc}") from exc
