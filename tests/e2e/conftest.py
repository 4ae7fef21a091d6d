"""Fixtures for the end-to-end suites: a booted systemd, the project installed into it."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from harness import API, FAST_TIMER, PROJECT, REPO, STANDIN, TIMER, copy_project, require_or_skip, watchdog_env
from machine import Machine, unavailable


@pytest.fixture
def machine() -> Iterator[Machine]:
    """A freshly booted systemd over a throw-away overlay, torn down even when the test fails."""
    reason = unavailable()
    if reason:
        require_or_skip(reason)
    box = Machine()
    try:
        box.boot()
        copy_project(box)
        yield box
    finally:
        box.close()


@pytest.fixture
def standin_api(machine: Machine) -> Machine:
    """The shipped API unit with its ExecStart replaced by the stand-in, running healthy."""
    machine.write_host(f"/etc/systemd/system/{API}", (REPO / "units" / API).read_text())
    machine.write_host(f"/etc/systemd/system/{API}.d/50-standin.conf", STANDIN)
    machine.write("/run/standin/mode", "healthy\n")
    machine.sh(f"systemctl daemon-reload && systemctl start {API}")
    return machine


@pytest.fixture
def installed(standin_api: Machine) -> Callable[..., Machine]:
    """Run the real install.sh, then give the watchdog a fast timer and the test's settings."""

    def install(**settings: object) -> Machine:
        box = standin_api
        box.write_host(f"/etc/systemd/system/{TIMER}.d/50-fast.conf", FAST_TIMER)
        box.sh(f"{PROJECT}/install.sh")
        defaults = {"timeout": 1, "grace": 1, "threshold": 3, "retry_interval": 0}  # retry tests set their own
        box.write_host("/etc/motorcade-leadgen/watchdog.env", watchdog_env(**{**defaults, **settings}))
        return box

    return install
