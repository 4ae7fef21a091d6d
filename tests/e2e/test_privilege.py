"""Least privilege, proven by overreach, on the real systemd and podman, installed
by the real install.sh: the watchdog, as its own user, may restart the API and
clear its failed state and nothing else; without the polkit rule its restart
fails with one line and it escalates; where polkitd is absent it keeps the
sandboxed-root mode; the API container's root is not the host's root. The hang
-> restart chain works in both modes.

One booted machine per mode, shared by the checks of that mode (module-scoped,
run in file order): the unprivileged one, then the root one. The podman
deviations are those of test_podman_systemd.py (README, Tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Iterator

import pytest
from harness import (
    API,
    PROJECT,
    STATE,
    TIMER,
    WATCHDOG,
    wait_for,
    wait_logged,
    wait_runs,
    watchdog_lines,
)
from machine import Machine
from podmanhost import PODMAN_ENV, podman_box
from test_podman_systemd import health, podman

USER = "motorcade-leadgen-watchdog"
RULE = f"/etc/polkit-1/rules.d/50-{USER}.rules"
POLKITD = "/usr/lib/polkit-1/polkitd"
RUNTIME = "/run/motorcade-leadgen-watchdog"
REFUSED = "Interactive authentication required"
DENIED = ("Read-only file system", "Permission denied")

# Run through the watchdog unit itself (a drop-in replaces its ExecStart), so
# every try has the watchdog's identity and sandbox. One line per try: what,
# exit status, the first line of its error output.
OVERREACH = """#!/bin/sh
out=$RUNTIME_DIRECTORY/overreach
: >"$out.part"
try() {
    what=$1
    shift
    err=$("$@" 2>&1 >/dev/null)
    rc=$?
    printf '%s\\t%s\\t%s\\n' "$what" "$rc" "$(printf '%s\\n' "$err" | head -n 1)" >>"$out.part"
}
printf 'identity\\t0\\t%s\\n' "$(id -un)" >>"$out.part"
try "restart the API" systemctl restart motorcade-leadgen-api.service
try "reset-failed the API" systemctl reset-failed motorcade-leadgen-api.service
try "stop the API" systemctl stop motorcade-leadgen-api.service
try "restart another unit" systemctl restart systemd-journald.service
try "mask the API" systemctl mask --runtime motorcade-leadgen-api.service
try "write /etc" touch /etc/overreach
try "write /var/lib" touch /var/lib/overreach
try "write /run" touch /run/overreach
try "write /run/lock" touch /run/lock/overreach
try "write /dev/shm" touch /dev/shm/overreach
try "write /usr/local/sbin" touch /usr/local/sbin/overreach
try "write its runtime directory" touch "$RUNTIME_DIRECTORY/probe"
mv "$out.part" "$out"
"""
OVERREACH_DROPIN = "[Service]\nExecStart=\nExecStart=/bin/sh /opt/overreach.sh\n"
INSTALLED: dict[str, subprocess.CompletedProcess[str]] = {}  # machine name: what install.sh said
WRITES = ("write /etc", "write /var/lib", "write /run", "write /run/lock", "write /dev/shm", "write /usr/local/sbin")


def boot(*, polkitd: bool) -> Iterator[Machine]:
    """A booted systemd with podman, the test image imported, install.sh run; without polkitd when told."""

    def remove_polkitd(box: Machine) -> None:  # a whiteout in the machine's overlay; the host keeps its own
        box.sh(f"rm {POLKITD}")

    with podman_box(None if polkitd else remove_polkitd, timeout=1, grace=2, threshold=2, retry_interval=0) as box:
        box.write("/opt/overreach.sh", OVERREACH)
        INSTALLED[box.name] = box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh")
        yield box


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[Machine]:
    """polkitd present: the watchdog runs as its own user."""
    yield from boot(polkitd=True)


@pytest.fixture(scope="module")
def rootmode() -> Iterator[Machine]:
    """polkitd absent: install.sh keeps the sandboxed-root mode."""
    yield from boot(polkitd=False)


def overreach(box: Machine) -> dict[str, tuple[int, str]]:
    """Run the overreach script as the watchdog (timer stopped); {what: (exit status, first error line)}."""
    box.sh(f"systemctl stop {TIMER}")
    # Stopping the timer does not stop a run it started: `systemctl start` would join that run's start job
    # (a oneshot stays activating while it runs) and never run the overreach script. Let the run finish.
    wait_for("the timer's last run to finish", lambda: not running(box), timeout=60)
    box.write(f"/run/systemd/system/{WATCHDOG}.d/90-overreach.conf", OVERREACH_DROPIN)
    # The 2 s test timer starts the unit up to 5 times in 10 s, systemd's default start limit: one more start
    # now would be refused (start-limit-hit, and the timer fails with it). reset-failed clears the counter.
    box.sh(f"systemctl reset-failed {WATCHDOG}", check=False)
    box.sh(f"systemctl daemon-reload && rm -f {RUNTIME}/overreach && systemctl start {WATCHDOG}", timeout=180)
    results = box.sh(f"cat {RUNTIME}/overreach").stdout
    box.sh(f"rm -r /run/systemd/system/{WATCHDOG}.d && systemctl daemon-reload")
    found = {}
    for row in results.splitlines():
        what, status, detail = row.split("\t")
        found[what] = (int(status), detail)
    print(json.dumps(found, indent=1))  # the README's overreach table
    return found


def running(box: Machine) -> bool:
    return box.show(WATCHDOG, "ActiveState")["ActiveState"] in ("activating", "deactivating", "reloading")


def api_pid1(box: Machine) -> int:
    return json.loads(podman(box, "inspect motorcade-leadgen-api --format json"))[0]["State"]["Pid"]


def host_uid(box: Machine, pid: int) -> int:
    status = box.sh(f"cat /proc/{pid}/status").stdout
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def freeze_and_wait_for_restart(box: Machine) -> None:
    """SIGSTOP the container's server; the watchdog, from its timer, restarts the API; health returns."""
    before = box.show(API, "InvocationID")["InvocationID"]
    init = api_pid1(box)
    server = box.sh(f"cat /proc/{init}/task/{init}/children").stdout.split()[0]
    box.sh(f"kill -STOP {server}")
    wait_for(
        "the watchdog's restart",
        lambda: box.show(API, "InvocationID")["InvocationID"] != before,
        timeout=40,
        every=0.2,
    )
    wait_for("health after the restart", lambda: health(box), timeout=20)
    assert json.loads(health(box)) == {"status": "ok"}


# --- the API container: its own user namespace ------------------------------------------


def test_the_api_containers_root_is_an_unprivileged_host_uid(unprivileged: Machine) -> None:
    """--userns=auto: PID 1 of the container and a file it makes in /tmp belong to a host uid other than 0;
    the published port answers and /tmp is still the private, bounded, world-writable tmpfs."""
    box = unprivileged
    assert "containers:2147483647:2147483648" in box.sh("cat /etc/subuid /etc/subgid").stdout
    assert json.loads(health(box)) == {"status": "ok"}
    pid = api_pid1(box)
    assert host_uid(box, pid) >= 2147483647, box.sh(f"grep -E '^(Uid|Gid)' /proc/{pid}/status").stdout
    podman(box, "exec motorcade-leadgen-api busybox touch /tmp/made-inside")
    owner = box.sh(f"stat -c '%u %g' /proc/{pid}/root/tmp/made-inside").stdout.split()
    assert int(owner[0]) >= 2147483647 and int(owner[1]) >= 2147483647, owner
    assert box.sh(f"stat -c %a /proc/{pid}/root/tmp").stdout.strip() == "1777"
    mount = next(line for line in box.sh(f"cat /proc/{pid}/mounts").stdout.splitlines() if " /tmp " in line)
    assert mount.startswith("tmpfs /tmp tmpfs ") and "size=65536k" in mount, mount


# --- the watchdog as its own user ---------------------------------------------------------


def test_the_watchdog_runs_as_its_own_user_and_restarts_a_hung_api(unprivileged: Machine) -> None:
    """polkitd present: no root-mode drop-in, the runs are the user's (it owns the state), a hang is restarted."""
    box = unprivileged
    assert "polkitd not found" not in INSTALLED[box.name].stderr
    assert box.sh(f"test -e /etc/systemd/system/{WATCHDOG}.d/50-root-mode.conf", check=False).returncode == 1
    assert box.show(WATCHDOG, "User")["User"] == USER
    wait_runs(box, 1, timeout=15)
    assert box.sh(f"stat -c %U {RUNTIME} {STATE}").stdout.split() == [USER, USER]
    freeze_and_wait_for_restart(box)
    wait_logged(box, "restart done unit=motorcade-leadgen-api.service")


def test_as_the_watchdog_only_restart_and_reset_failed_of_the_api_are_allowed(unprivileged: Machine) -> None:
    """Inside its sandbox, as its user: restart and reset-failed of the API work; stop, another unit, mask and
    every write outside its runtime directory are refused."""
    box = unprivileged
    found = overreach(box)
    assert found["identity"] == (0, USER)
    assert found["restart the API"][0] == 0 and found["reset-failed the API"][0] == 0
    for what in ("stop the API", "restart another unit", "mask the API"):
        status, detail = found[what]
        assert status != 0 and REFUSED in detail, (what, found[what])
    for what in WRITES:
        assert found[what][0] != 0 and found[what][1].endswith(DENIED), (what, found[what])
    assert found["write its runtime directory"][0] == 0
    assert box.show(API, "ActiveState", "UnitFileState") == {"ActiveState": "active", "UnitFileState": "enabled"}
    assert box.sh("test -e /etc/overreach || test -e /var/lib/overreach", check=False).returncode == 1


def test_without_the_polkit_rule_the_restart_fails_with_one_line_and_escalates_once(unprivileged: Machine) -> None:
    """Rule removed: the watchdog's restart of a hung API is refused; one line at priority crit names the refusal
    (after the `+ systemctl restart` line), the run exits 2 once, later runs do not repeat it."""
    box = unprivileged
    box.sh(f"rm {RULE}")
    time.sleep(1)  # polkitd rereads its rules on an inotify event
    found = overreach(box)  # the same tries: without the rule, nothing is allowed
    assert found["restart the API"][0] != 0 and REFUSED in found["restart the API"][1]
    assert found["reset-failed the API"][0] != 0
    seen = len(watchdog_lines(box))
    exited_2 = len([e for e in box.journal(WATCHDOG) if "status=2/" in str(e["MESSAGE"])])
    before = box.show(API, "InvocationID")["InvocationID"]
    box.sh(f"systemctl start {TIMER}")
    init = api_pid1(box)
    box.sh(f"kill -STOP $(cat /proc/{init}/task/{init}/children)")

    def urgent() -> list[dict]:
        return [e for e in watchdog_lines(box)[seen:] if int(e["PRIORITY"]) <= 2]  # crit: a human is needed

    wait_for("the watchdog's human-needed line", urgent, timeout=30)
    wait_runs(box, 3, timeout=30)  # three more runs: two more refused restarts, no second alert
    lines = watchdog_lines(box)[seen:]
    alerts = urgent()
    assert len(alerts) == 1, [(e["PRIORITY"], e["MESSAGE"]) for e in alerts]
    (alert,) = alerts
    message = str(alert["MESSAGE"])
    assert alert["PRIORITY"] == "2" and message.startswith("restart failed") and REFUSED in message, message
    assert "; a human is needed" in message
    index = lines.index(alert)
    assert str(lines[index - 1]["MESSAGE"]).startswith(f"+ systemctl restart {API}")
    exits = [e for e in box.journal(WATCHDOG) if "status=2/" in str(e["MESSAGE"])]
    assert len(exits) == exited_2 + 1, [e["MESSAGE"] for e in exits]
    assert box.show(API, "InvocationID")["InvocationID"] == before  # the refused restart changed nothing


# --- the sandboxed-root mode, where polkitd is absent --------------------------------------


def test_without_polkitd_the_watchdog_keeps_the_root_mode_and_restarts_a_hung_api(rootmode: Machine) -> None:
    """No polkitd: install.sh says so once and installs the root-mode drop-in; a hang is restarted as before."""
    box = rootmode
    assert INSTALLED[box.name].stderr.count("polkitd not found") == 1
    assert box.sh(f"test -e {RULE}", check=False).returncode == 1
    assert box.show(WATCHDOG, "User")["User"] == ""
    freeze_and_wait_for_restart(box)
    wait_runs(box, 1, timeout=15)
    assert box.sh(f"stat -c %U {RUNTIME} {STATE}").stdout.split() == ["root", "root"]


def test_as_root_in_its_sandbox_the_watchdog_could_do_more(rootmode: Machine) -> None:
    """The root mode's overreach, for the README's table: any verb on any unit works; writes are still refused."""
    box = rootmode
    found = overreach(box)
    box.sh(f"systemctl unmask --runtime {API} && systemctl start {API}", timeout=120)
    assert found["identity"] == (0, "root")
    for what in ("restart the API", "reset-failed the API", "stop the API", "restart another unit", "mask the API"):
        assert found[what][0] == 0, (what, found[what])
    for what in WRITES:
        assert found[what][0] != 0, (what, found[what])


def test_switching_to_the_user_mode_keeps_the_root_modes_state_usable(rootmode: Machine) -> None:
    """polkitd installed later: install.sh removes the drop-in; the user's runs read and update root's state."""
    box = rootmode
    shutil.copy2(POLKITD, box.root / POLKITD.lstrip("/"))
    box.sh(f"systemctl start {TIMER}")
    wait_runs(box, 1, timeout=15)
    restarts = box.read_json(STATE)["restarts_ok"]  # type: ignore[index]
    assert restarts >= 1
    out = box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh").stdout
    assert f"now runs as {USER}" in out
    seen = len(watchdog_lines(box))
    wait_runs(box, 2, timeout=15)
    assert box.sh(f"stat -c %U {RUNTIME} {STATE}").stdout.split() == [USER, USER]
    assert box.read_json(STATE)["restarts_ok"] == restarts  # type: ignore[index]
    for entry in watchdog_lines(box)[seen:]:  # no state problem, nothing urgent
        assert "starting fresh" not in str(entry["MESSAGE"]) and int(entry["PRIORITY"]) > 3, entry["MESSAGE"]
