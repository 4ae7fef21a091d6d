"""The notify hook (issue 21, part 7): its script, with a stand-in journalctl, and its unit files.

The real systemd runs it in tests/e2e/test_notify.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "units/motorcade-leadgen-notify"
UNIT = REPO / "units/motorcade-leadgen-notify@.service"
WATCHDOG_UNIT = REPO / "units/motorcade-leadgen-watchdog.service"
WATCHDOG = "motorcade-leadgen-watchdog.service"
JOURNAL_LINES = "2026-12-06T05:00:00+0000 web1 motorcade-leadgen-watchdog[7]: restart failed; a human is needed"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A journalctl stand-in that records its arguments and prints one line of the failed run."""
    directory = tmp_path / "bin"
    directory.mkdir()
    journalctl = directory / "journalctl"
    journalctl.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>"{tmp_path}/journalctl.args"\necho "{JOURNAL_LINES}"\n')
    journalctl.chmod(0o755)
    return directory


def notify(bin_dir: Path, command: str | None, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **extra}
    if command is not None:
        env["NOTIFY_COMMAND"] = command
    return subprocess.run(["/bin/sh", str(SCRIPT), WATCHDOG], capture_output=True, text=True, env=env, timeout=30)


MONITOR = {
    "MONITOR_UNIT": WATCHDOG,
    "MONITOR_SERVICE_RESULT": "exit-code",
    "MONITOR_EXIT_STATUS": "2",
    "MONITOR_INVOCATION_ID": "0123456789abcdef0123456789abcdef",
}


@pytest.mark.parametrize("command", [None, ""])
def test_no_command_does_nothing_and_succeeds(bin_dir: Path, tmp_path: Path, command: str | None) -> None:
    """NOTIFY_COMMAND unset or empty: one line saying nobody was notified, exit 0, not even the journal read."""
    proc = notify(bin_dir, command, **MONITOR)
    assert proc.returncode == 0
    assert proc.stdout == (
        f"<5>{WATCHDOG} failed; NOTIFY_COMMAND is not set in /etc/motorcade-leadgen/notify.env: nobody notified\n"
    )
    assert not (tmp_path / "journalctl.args").exists()


def test_the_command_gets_the_unit_result_status_host_and_the_failed_runs_lines(bin_dir: Path, tmp_path: Path) -> None:
    """The command's environment names the failure; the lines are the failed invocation's; stdin is the message."""
    out = tmp_path / "out"
    proc = notify(bin_dir, f"env >{out}.env; cat >{out}.stdin", **MONITOR)
    assert proc.returncode == 0, proc.stderr
    env = out.with_suffix(".env").read_text()
    for line in (
        f"LEADGEN_NOTIFY_UNIT={WATCHDOG}",
        "LEADGEN_NOTIFY_RESULT=exit-code",
        "LEADGEN_NOTIFY_EXIT_STATUS=2",
        f"LEADGEN_NOTIFY_HOST={os.uname().nodename}",
        f"LEADGEN_NOTIFY_LINES={JOURNAL_LINES}",
    ):
        assert f"\n{line}\n" in f"\n{env}", line
    stdin = out.with_suffix(".stdin").read_text()
    assert stdin == (
        f"{WATCHDOG} on {os.uname().nodename}: exit-code, exit status 2. Runbook: docs/runbook.md\n{JOURNAL_LINES}\n"
    )
    args = (tmp_path / "journalctl.args").read_text()
    assert args == "--no-pager --quiet --output=short-iso _SYSTEMD_INVOCATION_ID=0123456789abcdef0123456789abcdef\n"


def test_without_monitor_variables_it_reads_the_units_last_lines(bin_dir: Path, tmp_path: Path) -> None:
    """An older systemd (no MONITOR_*): the unit from the instance name, its last 20 lines, the result unknown."""
    out = tmp_path / "env"
    assert notify(bin_dir, f"env >{out}").returncode == 0
    assert f"\nLEADGEN_NOTIFY_UNIT={WATCHDOG}\n" in out.read_text()
    assert "\nLEADGEN_NOTIFY_RESULT=unknown\n" in out.read_text()
    assert (
        tmp_path / "journalctl.args"
    ).read_text() == f"--no-pager --quiet --output=short-iso --unit={WATCHDOG} --lines=20\n"


def test_a_failing_command_fails_this_unit_and_says_so(bin_dir: Path) -> None:
    """The command's exit status is the hook's (its unit shows failed), with one line to the journal."""
    proc = notify(bin_dir, "exit 7", **MONITOR)
    assert proc.returncode == 7
    assert proc.stderr == "<3>NOTIFY_COMMAND exited 7: nobody may have been notified\n"  # kept at -p err


# The units


def test_the_watchdog_fails_into_the_notify_template() -> None:
    """The watchdog's OnFailure= names the notify template with its own name as the instance."""
    assert re.search(r"^OnFailure=motorcade-leadgen-notify@%n\.service$", WATCHDOG_UNIT.read_text(), re.MULTILINE)


def test_the_notify_unit_is_not_bound_to_the_watchdog() -> None:
    """No dependency either way: the hook's failure or slowness never reaches the watchdog."""
    text = UNIT.read_text()
    for key in ("Requires", "BindsTo", "PartOf", "Requisite", "Upholds", "OnFailure", "After", "Before", "Wants"):
        assert not re.search(rf"^{key}=", text, re.MULTILINE), key
    assert "\nType=oneshot\n" in text and "\nTimeoutStartSec=60s\n" in text
    assert "\nEnvironmentFile=-/etc/motorcade-leadgen/notify.env\n" in text


def test_hardening_block_is_alphabetical_and_leaves_the_network_open() -> None:
    """The hardening keys are sorted like the watchdog's; no IPAddressDeny (a webhook may be anywhere)."""
    block = UNIT.read_text().split("# Hardening", 1)[1]
    keys = [line.split("=", 1)[0] for line in block.splitlines() if re.match(r"^[A-Z]\w*=", line)]
    assert keys == sorted(keys)
    assert "IPAddressDeny" not in keys and "PrivateNetwork" not in keys


def test_systemd_analyze_verify_and_security_offline(tmp_path: Path) -> None:
    """`systemd-analyze verify` is silent on the units; the notify unit scores <= 1.5 offline."""
    units = [REPO / "units" / name for name in (WATCHDOG, "motorcade-leadgen-watchdog.timer", UNIT.name)]
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    instance = tmp_path / f"motorcade-leadgen-notify@{WATCHDOG}"
    shutil.copy(UNIT, instance)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(instance)], capture_output=True, text=True
    )
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout).group(1))
    assert score <= 1.5, proc.stdout


def test_shipped_notify_env_sets_nothing() -> None:
    """The template is all comments: a fresh install notifies nobody until the operator sets a command."""
    lines = (REPO / "units/notify.env").read_text().splitlines()
    assert all(line.startswith("#") for line in lines)
    assert any(line.startswith("#NOTIFY_COMMAND=") for line in lines)
