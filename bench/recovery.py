#!/usr/bin/env python3
"""Hang-to-healthy on the real systemd with the shipped 30 s timer (issue 15); run on demand, not in CI.

Boots the e2e test machine (tests/e2e/machine.py, root, Debian's
systemd-container), installs with install.sh, keeps the shipped timer and
defaults (threshold 3, timeout 5 s, grace 60 s), and runs the API as the
stand-in server. Each trial waits past the grace, then a random 0-30 s so
the freeze lands anywhere in the timer's period, freezes the API
(`hang-until-restart`) and measures the seconds until GET /lead/health
answers 200 again. Prints each trial, the mean and the max, per
--retry-interval.

    sudo bench/recovery.py [--trials 3] [--retry 0 5s]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from harness import API, PROJECT, STANDIN, copy_project, set_mode, watchdog_env  # noqa: E402
from machine import Machine, unavailable  # noqa: E402

PROBE = "curl -s -o /dev/null -m 1 -w '%{http_code}' http://127.0.0.1:8000/lead/health"


def healthy(box: Machine) -> bool:
    return box.sh(PROBE, check=False).stdout.strip() == "200"


def trial(box: Machine, grace: float) -> float:
    time.sleep(grace + 2 + random.uniform(0, 30))  # noqa: S311 - a phase, not a secret
    set_mode(box, "hang-until-restart")
    frozen = time.monotonic()
    while not healthy(box):
        if time.monotonic() - frozen > 300:
            raise SystemExit("no recovery within 300 s")
        time.sleep(0.2)
    return time.monotonic() - frozen


def measure(retry: str, trials: int) -> list[float]:
    box = Machine()
    try:
        box.boot()
        copy_project(box)
        box.write_host(f"/etc/systemd/system/{API}", (HERE.parent / "units" / API).read_text())
        box.write_host(f"/etc/systemd/system/{API}.d/50-standin.conf", STANDIN)
        box.write("/run/standin/mode", "healthy\n")
        box.sh(f"systemctl daemon-reload && systemctl start {API}")
        box.sh(f"{PROJECT}/install.sh")
        box.write(
            "/etc/motorcade-leadgen/watchdog.env",
            watchdog_env(retry_interval=retry, min_outage="20s", recovered_after="60s"),
        )
        times = []
        for number in range(1, trials + 1):
            seconds = trial(box, grace=60)
            times.append(seconds)
            print(f"retry-interval {retry}: trial {number}: {seconds:.1f} s from freeze to healthy", flush=True)
        return times
    finally:
        box.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--retry", nargs="+", default=["0", "5s"], help="--retry-interval values to compare")
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"cannot boot the test machine: {reason}", file=sys.stderr)
        return 2
    results = {retry: measure(retry, args.trials) for retry in args.retry}
    for retry, times in results.items():
        print(f"retry-interval {retry}: mean {statistics.mean(times):.1f} s, max {max(times):.1f} s over {len(times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
