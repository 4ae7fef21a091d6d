#!/usr/bin/env python3
"""Hang-to-healthy of the real podman container under the shipped units, on an e2e guest; run on demand, not in CI.

Boots the e2e guest (tests/e2e: LEADGEN_E2E_DISTRO=bookworm|trixie, or
--distro; root, Debian's systemd-container and mmdebstrap), imports the
busybox test image into the guest's podman, installs with install.sh
--restart-api: the shipped API unit runs the container, the shipped 30 s timer
and the watchdog's defaults (threshold 3, timeout 5 s, retry 5 s, grace 60 s,
min-outage 20 s, recovered-after 60 s)
watch it. Two test-only settings, as in the podman suites: the podman sandbox
drop-in (CONTAINERS_CONF: runc, a vfs store), and --max-restarts raised so
that every freeze of the series is restarted (the default budget of 3 in 30 min
would withhold the fourth).

Each trial waits until the API has been up for the grace, then a random
0-30 s so the freeze lands anywhere in the timer's period, SIGSTOPs the
server inside the container and measures the seconds until GET /lead/health
answers 200 again. Prints each trial (with the part before the watchdog's restart decision, from the guest's
journal), the mean, median and max.

    sudo bench/recovery.py [--distro trixie] [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

PROBE = "curl -s -o /dev/null -m 1 -w '%{http_code}' http://127.0.0.1:8000/lead/health"
PERIOD = 30.0  # the shipped timer's OnUnitActiveSec=
GRACE = 60.0  # the watchdog's default --grace


def healthy(box) -> bool:
    return box.sh(PROBE, check=False).stdout.strip() == "200"


def up_since(box, api: str) -> float:
    """When the API unit last became active, on the host's CLOCK_MONOTONIC (a container shares it)."""
    return int(box.show(api, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]) / 1e6


def freeze(box, podman_env: str) -> None:
    """SIGSTOP the server process under the container's entrypoint, as the e2e suites do."""
    inspect = box.sh(f"env {podman_env} podman inspect motorcade-leadgen-api --format json").stdout
    init = json.loads(inspect)[0]["State"]["Pid"]
    server = box.sh(f"cat /proc/{init}/task/{init}/children").stdout.split()[0]
    box.sh(f"kill -STOP {server}")


def decided(box, after: float) -> float:
    """When the watchdog logged its restart decision after `after`, on the host's CLOCK_MONOTONIC (journald's
    monotonic stamp: a container shares the host's clock); NaN when it is not in the journal."""
    out = box.sh("journalctl --no-pager -o json -u motorcade-leadgen-watchdog.service -n 200").stdout
    stamps = [
        int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6
        for entry in map(json.loads, out.splitlines())
        if str(entry.get("MESSAGE", "")).startswith("restarting unit after")
    ]
    return next((stamp for stamp in reversed(stamps) if stamp > after), float("nan"))


def trial(box, api: str, podman_env: str) -> tuple[float, float]:
    """(freeze to healthy, freeze to the watchdog's restart decision) in seconds."""
    time.sleep(max(0.0, up_since(box, api) + GRACE + 1 - time.monotonic()))
    time.sleep(random.uniform(0, PERIOD))  # noqa: S311 - a phase, not a secret
    freeze(box, podman_env)
    frozen = time.monotonic()
    while not healthy(box):
        if time.monotonic() - frozen > 300:
            raise SystemExit("no recovery within 300 s")
        time.sleep(0.2)
    recovered = time.monotonic() - frozen
    time.sleep(2)  # journald writes a run's lines in its own time
    return recovered, decided(box, frozen) - frozen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--distro", default=os.environ.get("LEADGEN_E2E_DISTRO", "bookworm"))
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    os.environ["LEADGEN_E2E_DISTRO"] = args.distro

    import guest
    from harness import API, PROJECT, TIMER
    from machine import unavailable
    from podmanhost import PODMAN_ENV, podman_box

    reason = unavailable()
    if reason:
        print(f"cannot boot the test machine: {reason}", file=sys.stderr)
        return 2
    print(guest.header(), flush=True)
    times, restarts = [], []
    # The shipped --min-outage and --recovered-after (the e2e helpers set both to 0 for their 2 s timer).
    with podman_box(max_restarts=1000, min_outage="20s", recovered_after="60s") as box:
        (box.root / f"etc/systemd/system/{TIMER}.d/50-fast.conf").unlink()  # the shipped 30 s timer
        box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh --restart-api")
        box.sh("systemctl daemon-reload")
        deadline = time.monotonic() + 60
        while not healthy(box):
            if time.monotonic() > deadline:
                raise SystemExit("the API never became healthy")
            time.sleep(0.5)
        for number in range(1, args.trials + 1):
            seconds, detected = trial(box, API, PODMAN_ENV)
            times.append(seconds)
            restarts.append(seconds - detected)
            print(
                f"{args.distro}: trial {number}: {seconds:.1f} s from freeze to healthy"
                f" ({detected:.1f} s to the restart decision, {seconds - detected:.1f} s restarting)",
                flush=True,
            )
    print(
        f"{args.distro}: mean {statistics.mean(times):.1f} s, median {statistics.median(times):.1f} s,"
        f" min {min(times):.1f} s, max {max(times):.1f} s over {len(times)} freezes;"
        f" restarting took {statistics.mean(restarts):.1f} s on average"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
