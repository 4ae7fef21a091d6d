"""Helpers for the end-to-end suites: settings, drop-ins, polling, journal readers."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import pytest
from machine import Machine

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROJECT = "/opt/leadgen"  # the checkout install.sh runs from, inside the container
API = "motorcade-leadgen-api.service"
WATCHDOG = "motorcade-leadgen-watchdog.service"
TIMER = "motorcade-leadgen-watchdog.timer"
INTERVAL = 2.0  # the test timer's OnUnitActiveSec=
STATE = "/run/motorcade-leadgen-watchdog/state.json"

# Test-only: a 2 s timer instead of 30 s. The shipped unit is not edited. One
# empty assignment resets every monotonic setting of the timer, not one key.
FAST_TIMER = f"""[Timer]
OnBootSec=
OnBootSec=1s
OnUnitActiveSec={INTERVAL:g}s
AccuracySec=100ms
"""

# Test-only: the API's ExecStart is a small Python health server (standin.py).
STANDIN = f"""[Service]
EnvironmentFile=
ExecStartPre=
ExecStart=
ExecStart=/usr/bin/python3 {PROJECT}/tests/e2e/standin.py
ExecStop=
ExecStopPost=
"""


def require_or_skip(reason: str) -> None:
    """Skip with a reason; in CI (LEADGEN_REQUIRE_E2E=1) a skip is a failure."""
    if os.environ.get("LEADGEN_REQUIRE_E2E") == "1":
        pytest.fail(f"end-to-end suite cannot run here, and CI requires it: {reason}", pytrace=False)
    pytest.skip(reason)


def copy_project(box: Machine) -> None:
    target = box.root / PROJECT.lstrip("/")
    target.mkdir(parents=True)
    for name in ("install.sh", "leadgen_watchdog.py", "README.md"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(REPO / "units", target / "units")
    shutil.copytree(REPO / "docs", target / "docs")
    shutil.copytree(HERE, target / "tests/e2e", ignore=shutil.ignore_patterns("__pycache__"))


def watchdog_env(**settings: object) -> str:
    """watchdog.env for a test: a 2 s timer makes every period short, so a restart needs no --min-outage and
    an incident ends at the first healthy probe (issue 18's defaults, 20s and 60s, unless a test sets them)."""
    settings = {"min_outage": 0, "recovered_after": 0, **settings}
    return "".join(f"LEADGEN_WATCHDOG_{key.upper()}={value}\n" for key, value in settings.items())


def set_mode(box: Machine, mode: str) -> None:
    box.write("/run/standin/mode", mode + "\n")


def wait_for(what: str, predicate: Callable[[], object], timeout: float, every: float = 0.2) -> object:
    """Poll until predicate() is truthy; its value, or an AssertionError naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def watchdog_lines(box: Machine) -> list[dict]:
    """What the watchdog itself logged (not systemd's lines about it)."""
    return [entry for entry in box.journal(WATCHDOG) if entry.get("SYSLOG_IDENTIFIER") == "motorcade-leadgen-watchdog"]


def last_check_wall(box: Machine) -> float | None:
    state = box.read_json(STATE) or {}
    return (state.get("last_check") or {}).get("wall")


def wait_runs(box: Machine, count: int, timeout: float) -> None:
    """Wait for `count` more watchdog runs, each seen as a new last check in the state file.

    (systemd's own Starting/Finished lines are at info, which LogLevelMax=notice drops.)"""
    before = last_check_wall(box)
    seen: set[float] = set()

    def enough() -> bool:
        wall = last_check_wall(box)
        if wall is not None and wall != before:
            seen.add(wall)
        return len(seen) >= count

    wait_for(f"{count} watchdog runs", enough, timeout, every=0.1)


def wait_logged(box: Machine, text: str, timeout: float = 10) -> None:
    """Wait until the watchdog has logged a line containing text (journald takes it a moment after the write)."""
    wait_for(
        f"the watchdog to log {text!r}", lambda: any(text in str(e["MESSAGE"]) for e in watchdog_lines(box)), timeout
    )
