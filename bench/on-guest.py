#!/usr/bin/env python3
"""bench/run.sh (the installed check against a bare urllib GET, hyperfine) inside an e2e guest, on its Python.

Boots the e2e guest (tests/e2e; --distro or LEADGEN_E2E_DISTRO=bookworm|trixie;
root, Debian's systemd-container and mmdebstrap), copies the watchdog and
bench/ in, and runs bench/run.sh there: the guest's /usr/bin/python3,
busybox, curl and hyperfine, all from Debian's packages.

    sudo bench/on-guest.py [--distro trixie] [RUNS]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--distro", default=os.environ.get("LEADGEN_E2E_DISTRO", "bookworm"))
    parser.add_argument("runs", nargs="?", default="50")
    args = parser.parse_args()
    os.environ["LEADGEN_E2E_DISTRO"] = args.distro

    import guest
    from machine import Machine, unavailable

    reason = unavailable()
    if reason:
        print(f"cannot boot the test machine: {reason}", file=sys.stderr)
        return 2
    print(guest.header(), flush=True)
    box = Machine()
    try:
        box.boot()
        target = box.root / "opt/leadgen-bench"
        target.mkdir(parents=True)
        shutil.copy2(HERE.parent / "leadgen_watchdog.py", target)
        shutil.copytree(HERE, target / "bench", ignore=shutil.ignore_patterns("__pycache__"))
        proc = box.sh(f"cd /opt/leadgen-bench && sh bench/run.sh {int(args.runs)}", check=False, timeout=900)
        print(proc.stdout, proc.stderr, sep="", end="")
        return proc.returncode
    finally:
        box.close()


if __name__ == "__main__":
    sys.exit(main())
