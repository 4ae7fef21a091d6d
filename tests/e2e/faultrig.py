"""Helpers for the fault matrix (test_faults.py): a machine that can reboot, journal reads from a cursor.

Kept apart from machine.py and harness.py, which other suites share: nothing
here changes what they do.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time

from harness import WATCHDOG, wait_for
from machine import Machine

REBOOT_STATUS = 133  # systemd-nspawn's exit status when the container asked for a reboot


class RebootableMachine(Machine):
    """A Machine whose container can reboot: nspawn exits 133, and the same root is booted again.

    Like a real reboot: the disk (the overlay) stays, /run and every process go,
    the container gets a new boot id. The kernel and its monotonic clock are the
    host's, as for any container."""

    def reboot(self, timeout: float = 30) -> None:
        assert self.proc is not None
        self.sh("systemctl reboot", check=False)
        self.proc.wait(timeout=timeout)
        if self.proc.returncode != REBOOT_STATUS:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}, not {REBOOT_STATUS}: {self.console()}")
        self.leader = 0
        nspawn = (
            f"systemd-nspawn -q -D {self.root} -M {self.name} --register=no --keep-unit"
            " --private-network --console=read-only -b systemd.unit=e2e.target"
        )
        join = " ".join(f"echo $$ > {group}/cgroup.procs;" for group in self.cgroups)
        with open(self.log, "ab") as console:
            argv = ["setsid", "sh", "-c", f"{join} exec {nspawn}"]
            self.proc = subprocess.Popen(argv, stdout=console, stderr=console, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.leader:
            self._check_alive(deadline)
            found = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "systemd"], capture_output=True, text=True)
            self.leader = int(found.stdout.split()[0]) if found.stdout.split() else 0
            time.sleep(0.05)
        while self.sh("systemctl is-system-running", check=False).stdout.strip() not in ("running", "degraded"):
            self._check_alive(deadline)
            time.sleep(0.1)
        if self.writable_cgroups:
            self._make_cgroups_writable()


def cursor(box: Machine) -> str:
    """The journal's current end: entries after it are what a row caused."""
    out = box.sh("journalctl --no-pager -o json -n 1").stdout.strip()
    return json.loads(out.splitlines()[-1])["__CURSOR"] if out else ""


def entries(box: Machine, after: str, *units: str) -> list[dict]:
    """Journal entries after the cursor, of the given units (systemd's lines about them included)."""
    which = " ".join(f"-u {shlex.quote(unit)}" for unit in units)
    since = f"--after-cursor={shlex.quote(after)}" if after else ""
    out = box.sh(f"journalctl --no-pager -o json {since} {which}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def said(box: Machine, after: str) -> list[dict]:
    """What the watchdog itself logged after the cursor (not systemd's lines about it)."""
    return [e for e in entries(box, after, WATCHDOG) if e.get("SYSLOG_IDENTIFIER") == "motorcade-leadgen-watchdog"]


def said_through(box: Machine, after: str, last: str, timeout: float = 10.0) -> list[dict]:
    """said(), read once the line starting with `last` is in: journald may write a run's lines seconds late.

    A service's stdout reaches the journal through a stream journald reads in
    its own time; under load the API is healthy again before the run's last
    lines are on disk."""

    def through() -> list[dict]:
        lines = said(box, after)
        return lines if any(text(e).startswith(last) for e in lines) else []

    return wait_for(f"the watchdog's {last!r} line in the journal", through, timeout)


def text(entry: dict) -> str:
    return str(entry.get("MESSAGE", ""))


def at(entry: dict) -> float:
    """When journald received the entry, on CLOCK_MONOTONIC (the host's: a container has no clock of its own)."""
    return int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6
