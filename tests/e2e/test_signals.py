"""What operators see on the real systemd: errors at their priority, one alert per incident, retries within a run."""

from __future__ import annotations

import time

from harness import API, INTERVAL, STATE, WATCHDOG, set_mode, wait_for, wait_logged, watchdog_lines
from machine import Machine

NOTIFIER = """[Unit]
Description=Test notifier: one line per OnFailure= of the watchdog

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'date +%%s.%%N >> /var/lib/notifications'
"""
ON_FAILURE = """[Unit]
OnFailure=test-notify.service
"""


def test_bad_watchdog_env_reason_is_in_the_journal_at_priority_err(installed) -> None:
    """A bad value in watchdog.env: the unit fails and `journalctl -u ... -p err` shows the one-line reason."""
    box: Machine = installed()
    box.write("/etc/motorcade-leadgen/watchdog.env", "LEADGEN_WATCHDOG_THRESHOLD=zero\n")
    wait_for(
        "the watchdog unit to fail",
        lambda: box.sh(f"systemctl is-failed {WATCHDOG}", check=False).stdout.strip() == "failed",
        timeout=6 * INTERVAL,
    )
    expected = "LEADGEN_WATCHDOG_THRESHOLD must be an integer from 1 to 1000, got 'zero'"
    wait_for(
        "the reason at priority err",
        lambda: expected in box.sh(f"journalctl --no-pager -o cat -u {WATCHDOG} -p err").stdout,
        timeout=10,
    )


def test_one_notification_per_incident_then_reminders(installed) -> None:
    """An API that never recovers, budget 1, remind 8s: OnFailure= fires once plus once per reminder, not per run."""
    remind = 8
    box: Machine = installed(threshold=1, max_restarts=1, restart_window=3600, remind=f"{remind}s")
    box.write_host("/etc/systemd/system/test-notify.service", NOTIFIER)
    box.write_host(f"/etc/systemd/system/{WATCHDOG}.d/60-notify.conf", ON_FAILURE)
    box.sh("systemctl daemon-reload")
    set_mode(box, "503")
    wait_logged(box, "a human is needed", timeout=10 * INTERVAL)
    first = time.monotonic()
    time.sleep(3 * remind + 1)
    box.sh(f"systemctl stop {WATCHDOG.replace('.service', '.timer')}")  # no run after the count below
    wait_for(  # and its OnFailure= notifier, a job of its own
        "the last run and its notifier to end",
        lambda: (
            box.show(WATCHDOG, "ActiveState")["ActiveState"] != "activating"
            and not box.sh("systemctl list-jobs --no-legend").stdout.strip()
        ),
        30,
    )
    elapsed = time.monotonic() - first
    notified = box.sh("cat /var/lib/notifications", check=False).stdout.split()

    def alerted() -> list[str]:
        return [m for m in map(lambda e: str(e["MESSAGE"]), watchdog_lines(box)) if "a human is needed" in m]

    # A run's notifier may write before journald has read that run's line: it reads a service's stdout in its
    # own time, seconds late on a loaded host. Wait for the lines the notifications stand for, then compare.
    wait_for("an alert line for every notification", lambda: len(alerted()) >= len(notified), 15)
    runs_alerted = alerted()
    held_back = [
        m for m in map(lambda e: str(e["MESSAGE"]), watchdog_lines(box)) if "alerted" in m and "reminder in" in m
    ]
    print(f"notifications: {len(notified)} in {elapsed:.0f}s; alerts {len(runs_alerted)}; held back {len(held_back)}")
    assert len(notified) == len(runs_alerted)
    assert 1 + int(elapsed // remind) - 1 <= len(notified) <= 1 + int(elapsed // remind)
    assert len(held_back) >= len(notified)  # most runs in between exit 1 instead
    state = box.read_json(STATE)
    assert state["human_needed"] is True and state["restarts_withheld"] >= 3


def test_retries_within_one_run_restart_and_honour_a_pause(installed) -> None:
    """--retry-interval 2s: three failures and the restart inside one run; a pause mid-run stops the count."""
    box: Machine = installed(threshold=3, retry_interval="2s")
    box.sh(f"systemctl stop {WATCHDOG.replace('.service', '.timer')}")  # this test starts each run itself
    before = box.show(API, "InvocationID")["InvocationID"]
    set_mode(box, "503")
    box.sh("sleep 2")  # past the API's 1 s grace
    box.sh(f"systemctl start {WATCHDOG}", timeout=60)  # one run, to its end
    wait_logged(box, "restart done")  # its last line: journald reads a service's stdout in its own time
    lines = [str(e["MESSAGE"]) for e in watchdog_lines(box)]
    assert box.show(API, "InvocationID")["InvocationID"] != before, lines
    counts = [m.split("failures=")[1].split()[0] for m in lines if m.startswith("health check failed ")]
    assert counts == ["1/3", "2/3", "3/3"]
    assert box.read_json(STATE)["restarts_ok"] == 1
    # A pause issued while a run waits to re-probe takes effect at its next probe.
    box.sh("sleep 2")  # past the 1 s grace of the restarted API
    box.sh(f"systemctl start --no-block {WATCHDOG}")
    wait_for("a counted failure", lambda: (box.read_json(STATE) or {}).get("failures") == 1, timeout=20, every=0.05)
    box.sh("/usr/local/sbin/leadgen-watchdog pause 5m")
    wait_for("the run to end", lambda: box.show(WATCHDOG, "ActiveState")["ActiveState"] != "activating", timeout=30)
    wait_logged(box, "not counted: watchdog paused")
    state = box.read_json(STATE)
    assert state["failures"] == 0 and state["restarts_ok"] == 1
