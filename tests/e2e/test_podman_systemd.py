"""The whole chain with a real podman under a real systemd: the shipped API unit
starts the container and reaches `active` through sd_notify; the watchdog,
from its timer, restarts it when the server process is frozen; health returns.

Deviations from production, test-only, none in the shipped units (also in the README):
- CONTAINERS_CONF and CONTAINERS_STORAGE_CONF, given to the API unit by a
  drop-in (Environment=): runc, explicit ulimits, no keyring (a unit here
  cannot make the session keyring); a vfs store (overlay storage cannot sit
  on the overlay the container runs on).
- The harness remounts the cgroup v1 controllers read-write inside the
  container (nspawn mounts them read-only), in cgroups of its own, so runc
  applies the real memory, pids and CPU limits.
- The timer runs every 2 s (a drop-in), as in the systemd suite.
"""

from __future__ import annotations

import json
import time
from typing import Iterator

import pytest
from harness import (
    API,
    INTERVAL,
    PROJECT,
    TIMER,
    wait_for,
    wait_logged,
    watchdog_lines,
)
from machine import Machine
from podmanhost import PODMAN_ENV, podman_box


@pytest.fixture
def podman_machine() -> Iterator[Machine]:
    """A booted systemd with writable cgroup controllers, the test image imported, the project installed."""
    with podman_box(timeout=1, grace=2, threshold=2, retry_interval=0) as box:
        yield box


def podman(box: Machine, args: str) -> str:
    return box.sh(f"env {PODMAN_ENV} podman {args}").stdout.strip()


def health(box: Machine) -> str:
    return box.sh("curl -sS -m 2 http://127.0.0.1:8000/lead/health", check=False).stdout


def test_real_unit_runs_under_systemd_and_watchdog_restarts_a_frozen_server(podman_machine: Machine) -> None:
    """install.sh installs and starts the real unit; after a unit change every run says the API predates it,
    and --restart-api applies it on a run that changes nothing else; a SIGSTOPped server is restarted."""
    box = podman_machine
    first = box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh")
    assert f"+ systemctl start {API}" in first.stdout and "OK: health check passed" in first.stdout
    assert "the watchdog counts from its next run" not in first.stdout + first.stderr
    started = box.show(API, "ActiveState", "InvocationID")
    assert started["ActiveState"] == "active"

    box.sh(f"sleep 1 && sed -i 's/^Description=.*/Description=LeadGen API v2/' {PROJECT}/units/{API}")
    for run in ("changed", "unchanged"):  # every run says so until it is applied
        out = box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh").stdout
        assert f"{API}: the running API predates the installed unit" in out, run
        assert f"{PROJECT}/install.sh --restart-api" in out and f"+ systemctl restart {API}" not in out, run
    assert box.show(API, "InvocationID") == {"InvocationID": started["InvocationID"]}

    again = box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh --restart-api").stdout
    assert "nothing to change" not in again and "every file is up to date" in again
    for step in (
        "leadgen-watchdog pause --owner install.sh 10m",
        f"systemctl restart {API}",
        "leadgen-watchdog resume --owner install.sh",
    ):
        assert f"+ /usr/local/sbin/{step}" in again or f"+ {step}" in again, step
    assert again.index("install.sh 10m") < again.index("OK: health check passed") < again.index("resume --owner")
    assert "paused:       no" in box.sh("/usr/local/sbin/leadgen-watchdog status").stdout

    unit = box.show(API, "ActiveState", "SubState", "Type", "MainPID", "InvocationID", "FragmentPath")
    assert unit["InvocationID"] != started["InvocationID"]
    assert box.show(API, "Description")["Description"] == "LeadGen API v2"
    assert "predates" not in box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh").stdout
    assert (unit["ActiveState"], unit["SubState"], unit["Type"]) == ("active", "running", "notify")
    assert unit["FragmentPath"] == f"/etc/systemd/system/{API}"
    assert box.sh(f"cat /proc/{unit['MainPID']}/comm").stdout.strip() == "conmon"
    assert json.loads(health(box)) == {"status": "ok"}
    inspect = json.loads(podman(box, "inspect motorcade-leadgen-api --format json"))[0]
    assert inspect["HostConfig"]["Memory"] == 512 * 1024 * 1024 and inspect["HostConfig"]["ReadonlyRootfs"]
    first_container = inspect["Id"]

    init = inspect["State"]["Pid"]
    server = box.sh(f"cat /proc/{init}/task/{init}/children").stdout.split()[0]
    assert box.sh(f"cat /proc/{server}/comm").stdout.strip() == "busybox"
    box.sh(f"kill -STOP {server}")
    frozen_at = time.monotonic()
    assert health(box) == ""

    def restarted() -> bool:
        return box.show(API, "InvocationID")["InvocationID"] != unit["InvocationID"]

    wait_for("the watchdog's restart", restarted, timeout=30, every=0.1)
    freeze_to_restart = time.monotonic() - frozen_at
    print(f"freeze-to-restart: {freeze_to_restart:.1f}s")
    # threshold x interval + probe timeout + 2 s, and 3 s for podman to stop and start a container
    assert freeze_to_restart <= 2 * INTERVAL + 1 + 2 + 3
    wait_for("health after the restart", lambda: health(box), timeout=15)
    assert json.loads(health(box)) == {"status": "ok"}
    assert box.show(API, "ActiveState")["ActiveState"] == "active"
    assert podman(box, "ps -q --no-trunc") not in ("", first_container)
    assert podman(box, "ps -a -q --no-trunc --filter id=" + first_container) == ""
    wait_logged(box, "restart done unit=motorcade-leadgen-api.service")
    messages = [str(entry["MESSAGE"]) for entry in watchdog_lines(box)]
    assert any(m.startswith("restarting unit after 2 consecutive failures") for m in messages)
    # The evidence survives: the frozen container's own output, after --rm removed it.
    kept = box.sh("cat /var/log/motorcade-leadgen-api/container.log.1").stdout
    assert f"test api up in container {first_container[:12]}" in kept
    assert box.sh("stat -c %a /var/log/motorcade-leadgen-api").stdout.strip() == "750"


LOG_MAX = 16 * 1024


def test_container_log_stays_bounded_across_30_restarts(podman_machine: Machine) -> None:
    """An entrypoint flooding its output at every start, restarted 30 times: two files, each within the cap."""
    box = podman_machine
    box.sh(
        f"sed -i 's/^LEADGEN_LOG_MAX_SIZE=.*/LEADGEN_LOG_MAX_SIZE={LOG_MAX // 1024}k/' /etc/motorcade-leadgen/api.env"
    )
    # 8000 bytes a start: about 12 KiB with k8s-file's line prefixes, under the cap, so only the rotation at
    # each start keeps the total bounded (without it the file grows by that much per restart).
    box.write("/etc/motorcade-leadgen/app.env", "FLOOD_LOG_BYTES=8000\n")
    box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh --restart-api")
    box.sh(f"systemctl stop {TIMER}")  # only this test restarts the API here
    sizes = []
    for _ in range(30):
        box.sh(f"systemctl reset-failed {API}; systemctl restart {API}")  # past StartLimitBurst=5 on purpose
        wait_for(  # the flood's last, partial line (no newline at its end): this container is done writing
            "the flood to be logged",
            lambda: " stdout P x" in box.sh("tail -c 200 /var/log/motorcade-leadgen-api/container.log").stdout,
            timeout=10,
        )
        listing = box.sh("stat -c '%n %s' /var/log/motorcade-leadgen-api/*").stdout.split()
        sizes.append(sum(int(size) for size in listing[1::2]))
    names = box.sh("ls /var/log/motorcade-leadgen-api").stdout.split()
    print(f"log directory after 30 restarts: {names}, total bytes per restart: {sizes}")
    assert names == ["container.log", "container.log.1"]
    # Each file holds one container's output, which conmon cuts at max-size (plus the line it was writing).
    assert min(sizes[1:]) > LOG_MAX // 2  # two containers' floods: the previous one was kept
    assert max(sizes) <= 2 * LOG_MAX + 4096
