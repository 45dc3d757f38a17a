"""What `quax doctor` prints: one line per check (ok / warn / fail, or skip when it could not be
checked here), the fix under each one that is not ok, as text or JSON, and the exit code; and
running a probe with a deadline, so that no check can hang the command."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
EXIT_CODE = {OK: 0, SKIP: 0, WARN: 1, FAIL: 2}
"""The exit code of `quax doctor` is that of its worst line; skip (not checkable here) counts as ok."""


@dataclass(frozen=True)
class Check:
    name: str
    """What was checked: `broker`, `topic slices`, `worker 1`, `port 5006`, ..."""
    status: str
    """ok, warn, fail or skip."""
    message: str
    """What was found, with the numbers."""
    fix: str = ""
    """What to do about it (empty when ok)."""


def exit_code(checks: Iterable[Check]) -> int:
    return max((EXIT_CODE[c.status] for c in checks), default=0)


def format_text(checks: list[Check]) -> str:
    """One line per check, `status  name  message`, the fix indented under it."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.message}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    worst = exit_code(checks)
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL, SKIP)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail, {counts[SKIP]} skipped: "
                 f"exit {worst} (docs/troubleshooting.md)")
    return "\n".join(lines)


def format_json(checks: list[Check]) -> str:
    return json.dumps({"exit_code": exit_code(checks), "checks": [asdict(c) for c in checks]}, indent=1)


class Step:
    """Where a probe is: a timed-out probe reports the step it was stuck in."""

    def __init__(self) -> None:
        self.now = "starting"

    def __call__(self, what: str) -> None:
        self.now = what


class TimedOut(Exception):
    """A probe did not finish within its deadline (str: which probe, how long, at which step)."""


class Failed(Exception):
    """A probe raised (str: the probe and the error)."""


def start_probe(name: str, probe: Callable[[Step], Any], timeout_s: float) -> Callable[[], Any]:
    """Run ``probe(step)`` in a daemon thread now; the returned function waits for its result until
    ``timeout_s`` after the start and raises TimedOut (naming the probe and its step) or Failed.
    Daemon threads: a probe stuck in a system call cannot keep the command from exiting."""
    step, box = Step(), {}
    started = time.monotonic()

    def run() -> None:
        try:
            box["value"] = probe(step)
        except BaseException as exc:  # noqa: BLE001 - handed over to the waiting side
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"doctor-{name}", daemon=True)
    thread.start()

    def result() -> Any:
        thread.join(max(0.0, started + timeout_s - time.monotonic()))
        if thread.is_alive():
            raise TimedOut(f"{name} timed out after {timeout_s:g} s ({step.now})")
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, TimedOut):
                raise exc
            plain = isinstance(exc, (RuntimeError, OSError, ValueError)) and str(exc)  # ours say what happened
            raise Failed(str(exc) if plain else f"{name}: {type(exc).__name__}: {exc}")
        return box["value"]

    return result
