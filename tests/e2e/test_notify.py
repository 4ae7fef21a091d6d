"""The notify hook and the metrics wiring on the real systemd (issue 21, parts 1 and 7).

Run by file: LEADGEN_REQUIRE_E2E=1 python3 -m pytest -q -n 0 tests/e2e/test_notify.py
"""

from __future__ import annotations

from harness import INTERVAL, WATCHDOG, set_mode, wait_for, wait_runs
from machine import Machine

NOTIFY = f"motorcade-leadgen-notify@{WATCHDOG}.service"  # OnFailure=...@%n.service
NOTIFY_ENV = "/etc/motorcade-leadgen/notify.env"
TEXTFILE_LINK = "/var/lib/prometheus/node-exporter/motorcade-leadgen.prom"
RUNTIME = "/run/motorcade-leadgen-watchdog"


def notify_runs(box: Machine) -> list[list[str]]:
    """The hook's runs, in order: each starts with the script's own line, then what the command printed.

    (Grouped by that line, not by invocation ID: a line from a child that has already exited may reach
    journald without its unit's metadata.)"""
    runs: list[list[str]] = []
    for entry in box.journal(NOTIFY):
        if entry.get("SYSLOG_IDENTIFIER") != "motorcade-leadgen-notify":
            continue
        message = str(entry["MESSAGE"])
        if message.startswith(f"{WATCHDOG} failed"):
            runs.append([])
        if runs:
            runs[-1].append(message)
    return runs


def incident_open(box: Machine) -> bool:
    return "leadgen_watchdog_incident 1\n" in box.sh(f"cat {TEXTFILE_LINK}", check=False).stdout


def check_metrics_wiring(box: Machine) -> None:
    """The metrics drop-in applies (a 0711 runtime directory) and node_exporter's link resolves to the file."""
    wait_runs(box, 1, timeout=4 * INTERVAL + 5)
    assert box.sh(f"stat -c %a {RUNTIME}").stdout.strip() == "711"
    assert box.sh(f"stat -c %a {RUNTIME}/state.json").stdout.strip() == "600"
    assert box.sh(f"readlink {TEXTFILE_LINK}").stdout.strip() == f"{RUNTIME}/leadgen.prom"
    assert "leadgen_watchdog_last_run_timestamp_seconds " in box.sh(f"cat {TEXTFILE_LINK}").stdout


def test_one_incident_is_one_hook_run_with_the_failure_in_its_environment(machine: Machine, installed) -> None:
    """An incident runs NOTIFY_COMMAND once, with unit, result, status and the failed run's lines; then a
    failing command leaves the watchdog running; and metrics reach node_exporter's directory through the link."""
    machine.sh(f"mkdir -p {TEXTFILE_LINK.rsplit('/', 1)[0]}")  # as prometheus-node-exporter leaves it
    # Pages are rate-limited per unit across incidents (--remind): 20 s lets the second and third incidents page.
    box = installed(threshold=1, max_restarts=0, remind="20s")
    box.write(NOTIFY_ENV, "NOTIFY_COMMAND=env; echo ---; cat\n")

    check_metrics_wiring(box)

    # One incident: the budget (0) withholds the restart, the run exits 2 once.
    set_mode(box, "503")
    wait_for("the hook's run", lambda: notify_runs(box), timeout=6 * INTERVAL + 10)
    wait_runs(box, 4, timeout=10 * INTERVAL + 10)
    assert incident_open(box)
    runs = notify_runs(box)
    assert len(runs) == 1, runs
    (lines,) = runs
    env = dict(line.split("=", 1) for line in lines[: lines.index("---")] if "=" in line)
    assert env["LEADGEN_NOTIFY_UNIT"] == WATCHDOG
    assert env["LEADGEN_NOTIFY_RESULT"] == "exit-code"
    assert env["LEADGEN_NOTIFY_EXIT_STATUS"] == "2"
    assert env["LEADGEN_NOTIFY_HOST"] == box.sh("uname -n").stdout.strip()
    failed_run = [
        str(e["MESSAGE"])
        for e in box.journal(WATCHDOG)
        if e.get("_SYSTEMD_INVOCATION_ID") == env["MONITOR_INVOCATION_ID"]
        and e.get("SYSLOG_IDENTIFIER") == "motorcade-leadgen-watchdog"
    ]
    assert any("a human is needed" in message for message in failed_run), failed_run
    text = "\n".join(lines)
    for message in failed_run:
        assert message in text, message
    stdin = lines[lines.index("---") + 1 :]
    assert stdin[0].startswith(f"{WATCHDOG} on {env['LEADGEN_NOTIFY_HOST']}: exit-code, exit status 2.")
    assert box.show(NOTIFY, "Result")["Result"] == "success"

    # The API recovers; a second incident with a command that fails: the hook's unit fails, the watchdog runs on.
    box.write(NOTIFY_ENV, "NOTIFY_COMMAND=exit 7\n")
    set_mode(box, "healthy")
    wait_for("the incident to close", lambda: not incident_open(box), timeout=6 * INTERVAL + 10)
    set_mode(box, "503")
    wait_for(
        "the failing hook",
        lambda: box.sh(f"systemctl is-failed {NOTIFY}", check=False).stdout.strip() == "failed",
        timeout=20 + 6 * INTERVAL + 10,  # --remind after the first page
    )
    assert box.show(NOTIFY, "ExecMainStatus")["ExecMainStatus"] == "7"
    wait_runs(box, 3, timeout=8 * INTERVAL + 10)
    assert box.show("motorcade-leadgen-watchdog.timer", "ActiveState")["ActiveState"] == "active"
    assert len(notify_runs(box)) == 2

    # No command: the third incident runs the hook, which notifies nobody and succeeds.
    box.write(NOTIFY_ENV, "# nothing set\n")
    box.sh(f"systemctl reset-failed {NOTIFY}")
    set_mode(box, "healthy")
    wait_for("the incident to close", lambda: not incident_open(box), timeout=6 * INTERVAL + 10)
    set_mode(box, "503")
    wait_for("the third hook run", lambda: len(notify_runs(box)) == 3, timeout=20 + 6 * INTERVAL + 10)
    last = notify_runs(box)[-1]
    assert "NOTIFY_COMMAND is not set" in last[0]
    wait_for("the hook to finish", lambda: box.show(NOTIFY, "ActiveState")["ActiveState"] == "inactive", 10)
    assert box.show(NOTIFY, "Result")["Result"] == "success"
