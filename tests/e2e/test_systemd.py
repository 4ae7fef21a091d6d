"""End to end on a real systemd: install.sh, the timer, the probe, the restart.

The API is the shipped unit with its ExecStart replaced by standin.py (a
drop-in); the timer runs every 2 s (a drop-in). Everything else is what
install.sh installs. Assertions read systemd's own view: systemctl show,
journalctl -o json, InvocationID, and the watchdog's state file.
"""

from __future__ import annotations

import time

from harness import (
    API,
    INTERVAL,
    PROJECT,
    STATE,
    TIMER,
    WATCHDOG,
    set_mode,
    wait_for,
    wait_logged,
    wait_runs,
    watchdog_lines,
)
from machine import Machine

THRESHOLD = 3
TIMEOUT = 1.0


def api_invocation(box: Machine) -> str:
    return box.show(API, "InvocationID")["InvocationID"]


def messages(lines: list[dict]) -> list[str]:
    return [str(entry.get("MESSAGE", "")) for entry in lines]


def test_install_on_a_clean_systemd_then_rerun_changes_nothing(standin_api: Machine) -> None:
    """Units load, the timer is active and listed; a second run reloads, enables and restarts nothing."""
    box = standin_api
    first = box.sh(f"{PROJECT}/install.sh")
    assert "+ systemctl enable --now motorcade-leadgen-watchdog.timer" in first.stdout
    assert f"LEADGEN_IMAGE is empty in /etc/motorcade-leadgen/api.env: {API} left as it is." in first.stderr
    for unit in (API, WATCHDOG, TIMER):
        assert box.show(unit, "LoadState")["LoadState"] == "loaded", unit
    timer = box.show(TIMER, "ActiveState", "UnitFileState", "ActiveEnterTimestampMonotonic")
    assert (timer["ActiveState"], timer["UnitFileState"]) == ("active", "enabled")
    assert TIMER in box.sh("systemctl list-timers --all --no-pager").stdout
    reloads = box.sh("journalctl --no-pager -o cat _PID=1 | grep -c '^Reloading' || true").stdout
    api_before = api_invocation(box)

    second = box.sh(f"{PROJECT}/install.sh")
    assert "nothing to change" in second.stdout
    assert "+ " not in second.stdout.replace("+ /usr/local/sbin/leadgen-watchdog check", "")
    assert box.sh("journalctl --no-pager -o cat _PID=1 | grep -c '^Reloading' || true").stdout == reloads
    after = box.show(TIMER, "ActiveEnterTimestampMonotonic")
    assert after["ActiveEnterTimestampMonotonic"] == timer["ActiveEnterTimestampMonotonic"]
    assert api_invocation(box) == api_before


def test_api_unit_is_left_alone_while_its_image_is_missing(standin_api: Machine) -> None:
    """api.env naming an image podman does not have: the running API unit is not touched."""
    box = standin_api
    box.write_host("/etc/motorcade-leadgen/api.env", "LEADGEN_IMAGE=localhost/not-loaded:1\n")
    running = box.sh(f"systemctl cat {API}").stdout
    before = api_invocation(box)
    out = box.sh(f"sed -i 's/^Description=.*/Description=changed/' {PROJECT}/units/{API} && {PROJECT}/install.sh")
    assert "image localhost/not-loaded:1 (LEADGEN_IMAGE in /etc/motorcade-leadgen/api.env) is not present" in out.stderr
    assert box.sh(f"systemctl cat {API}").stdout == running
    assert api_invocation(box) == before
    assert box.show(TIMER, "ActiveState")["ActiveState"] == "active"


def test_healthy_api_over_many_runs_is_silent(installed) -> None:
    """Healthy: no restart, one notice for the first run since boot and nothing else, healthy checks saved."""
    box = installed()
    api_before = api_invocation(box)
    wait_runs(box, 5, timeout=8 * INTERVAL)
    assert api_invocation(box) == api_before
    assert box.show(API, "NRestarts")["NRestarts"] == "0"
    said = messages(watchdog_lines(box))
    assert [m.split(" state=")[0] for m in said] == ["no state yet (first run since boot), starting fresh"]
    state = box.read_json(STATE)
    assert state["last_check"]["ok"] is True and state["failures"] == 0
    assert time.time() - state["last_check"]["wall"] < 3 * INTERVAL


def test_hung_api_is_restarted_once_after_threshold_failures(installed) -> None:
    """A hang: failures 1..3 at priority 4, one restart from the sandboxed unit, then healthy; never `failed`."""
    box = installed(threshold=THRESHOLD, timeout=TIMEOUT)
    before = api_invocation(box)
    wait_for("a healthy check", lambda: (box.read_json(STATE) or {}).get("last_check", {}).get("ok"), 4 * INTERVAL)
    set_mode(box, "hang-until-restart")
    hung_at = time.monotonic()
    watchdog_states = set()

    def restarted() -> bool:
        watchdog_states.add(box.show(WATCHDOG, "ActiveState")["ActiveState"])
        return api_invocation(box) != before

    wait_for("the API restart", restarted, timeout=30, every=0.1)
    hang_to_restart = time.monotonic() - hung_at
    print(f"hang-to-restart: {hang_to_restart:.1f}s")
    assert hang_to_restart <= THRESHOLD * INTERVAL + TIMEOUT + 2

    after = api_invocation(box)
    wait_for("a healthy check after the restart", lambda: box.read_json(STATE)["last_check"]["ok"], 5 * INTERVAL)
    time.sleep(2 * INTERVAL)
    assert api_invocation(box) == after, "restarted more than once"
    assert "failed" not in watchdog_states
    assert box.sh(f"systemctl is-failed {WATCHDOG}", check=False).stdout.strip() != "failed"

    lines = watchdog_lines(box)
    failures = [e for e in lines if str(e["MESSAGE"]).startswith("health check failed ")]
    assert [str(e["MESSAGE"]).split("failures=")[1].split()[0] for e in failures] == ["1/3", "2/3", "3/3"]
    assert {e["PRIORITY"] for e in failures} == {"4"}
    assert all("reason=timeout" in str(e["MESSAGE"]) for e in failures)
    warned = box.sh(f"journalctl --no-pager -o cat -u {WATCHDOG} -p warning").stdout
    assert warned.count("health check failed") == 3
    assert any(m.startswith("restarting unit after 3 consecutive failures") for m in messages(lines))
    assert any(m.startswith("restart done") for m in messages(lines))
    assert any(m.startswith("health check recovered") for m in messages(lines))


def test_counter_persists_between_runs(installed) -> None:
    """The runtime directory survives each oneshot run: the state file counts 1, 2, 3."""
    box = installed(threshold=5)
    set_mode(box, "503")
    seen: list[int] = []

    def counted_to_three() -> bool:
        state = box.read_json(STATE) or {}
        value = state.get("failures", 0)
        if value and (not seen or seen[-1] != value):
            seen.append(value)
        return value >= 3

    wait_for("three counted failures", counted_to_three, timeout=6 * INTERVAL + 5, every=0.1)
    assert seen == [1, 2, 3]
    assert box.sh(f"stat -c %a {STATE}").stdout.strip() == "600"


def test_api_that_never_recovers_exhausts_the_budget_then_resumes(installed) -> None:
    """Restarts stop at the budget (exit 2: the unit is `failed`, listed by --failed); after the window they resume."""
    window = 16
    box = installed(threshold=2, max_restarts=2, restart_window=window)
    set_mode(box, "503")
    invocations = [api_invocation(box)]

    def new_invocation(count: int):
        def check() -> bool:
            current = api_invocation(box)
            if current != invocations[-1]:
                invocations.append(current)
            return len(invocations) > count

        return check

    wait_for("two restarts", new_invocation(2), timeout=6 * INTERVAL + 10)
    second_restart = time.monotonic()
    wait_for(
        "the watchdog unit to fail",
        lambda: box.sh(f"systemctl is-failed {WATCHDOG}", check=False).stdout.strip() == "failed",
        timeout=4 * INTERVAL + 4,
    )
    assert WATCHDOG in box.sh("systemctl --failed --no-legend --no-pager").stdout
    assert box.show(WATCHDOG, "Result")["Result"] == "exit-code"
    wait_logged(box, "NOT restarting: restart budget exhausted (2 in the last 16s)")
    assert len(invocations) == 3
    wait_for("a restart after the window", new_invocation(3), timeout=window + 4 * INTERVAL)
    assert time.monotonic() - second_restart > 2 * INTERVAL


def test_operator_stop_is_respected_and_pause_resume_work(installed) -> None:
    """A stopped API is not started again; a pause stops counting; resume lets the restart happen."""
    box = installed(threshold=2)
    box.sh(f"systemctl stop {API}")
    wait_runs(box, 3, timeout=6 * INTERVAL)
    assert box.show(API, "ActiveState")["ActiveState"] == "inactive"
    assert box.read_json(STATE)["last_check"]["note"].startswith("unit is inactive")
    assert box.read_json(STATE)["failures"] == 0

    box.sh(f"systemctl start {API}")
    before = api_invocation(box)
    box.sh("/usr/local/sbin/leadgen-watchdog pause 2m")
    set_mode(box, "503")
    wait_runs(box, 3, timeout=6 * INTERVAL)
    assert api_invocation(box) == before
    assert "paused:       yes" in box.sh("/usr/local/sbin/leadgen-watchdog status").stdout
    wait_logged(box, "not counted: watchdog paused")

    box.sh("/usr/local/sbin/leadgen-watchdog resume")
    wait_for("the restart after resume", lambda: api_invocation(box) != before, timeout=4 * INTERVAL + 4)


def test_installed_watchdog_unit_is_hardened_and_still_restarts(installed) -> None:
    """systemd-analyze security on the live unit scores <= 1.5; its sandbox still lets systemctl restart."""
    box = installed(threshold=1)
    out = box.sh(f"systemd-analyze security --no-pager {WATCHDOG}").stdout
    score = float(out.split("Overall exposure level for")[1].split(":")[1].split()[0])
    print(f"security score (installed, live): {score}")
    assert score <= 1.5
    before = api_invocation(box)
    set_mode(box, "503-until-restart")
    wait_for("a restart from the sandbox", lambda: api_invocation(box) != before, timeout=4 * INTERVAL + 4)
    wait_logged(box, "restart done unit=motorcade-leadgen-api.service")
    props = box.show(WATCHDOG, "ProtectSystem", "NoNewPrivileges", "CapabilityBoundingSet", "PrivateUsers")
    assert props == {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "PrivateUsers": "yes",
    }


def test_rollback_and_uninstall_on_the_live_system(installed) -> None:
    """--rollback restores the previous unit and systemd sees it; --uninstall removes the watchdog only."""
    box = installed()
    timer_file = f"{PROJECT}/units/{TIMER}"
    box.sh(f"sed -i 's/^Description=.*/Description=watchdog timer v2/' {timer_file}")
    box.sh(f"{PROJECT}/install.sh")
    assert box.show(TIMER, "Description")["Description"] == "watchdog timer v2"

    box.sh(f"{PROJECT}/install.sh --rollback")
    assert box.show(TIMER, "Description")["Description"] == "Run the Motorcade LeadGen API health watchdog every 30 s"
    assert "watchdog timer v2" not in box.sh(f"systemctl cat {TIMER}").stdout
    assert box.sh(f"systemctl is-enabled {TIMER}").stdout.strip() == "enabled"
    assert box.show(TIMER, "ActiveState")["ActiveState"] == "active"

    box.sh(f"{PROJECT}/install.sh --uninstall")
    assert box.show(TIMER, "LoadState")["LoadState"] == "not-found"
    assert box.show(WATCHDOG, "LoadState")["LoadState"] == "not-found"
    assert box.sh(f"systemctl is-enabled {TIMER}", check=False).returncode != 0
    assert box.show(API, "LoadState", "ActiveState") == {"LoadState": "loaded", "ActiveState": "active"}
    assert (
        box.sh("test -f /etc/motorcade-leadgen/api.env && test -f /etc/motorcade-leadgen/watchdog.env").returncode == 0
    )
    assert box.sh("test -e /run/motorcade-leadgen-watchdog", check=False).returncode != 0
