"""Helpers for the install.sh suites: a copy of the project to install from, a
run against a scratch root (--root), the managed-files table as `install.sh
--list` prints it, and an exact listing of a tree to compare before and after."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import NamedTuple, Optional

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = "etc/systemd/system"
BACKUPS = "var/backups/motorcade-leadgen"
TIMER_LINK = f"{UNIT_DIR}/timers.target.wants/motorcade-leadgen-watchdog.timer"
API_LINK = f"{UNIT_DIR}/multi-user.target.wants/motorcade-leadgen-api.service"


class Managed(NamedTuple):
    source: str
    dest: str  # relative to the root, no leading slash
    mode: int
    role: str


def make_source(directory: Path) -> Path:
    """A copy of the project to install from, so a test can ship a 'new version'."""
    directory.mkdir(parents=True)
    for name in ("install.sh", "leadgen_watchdog.py", "README.md"):
        shutil.copy2(REPO / name, directory / name)
    shutil.copytree(REPO / "units", directory / "units")
    shutil.copytree(REPO / "docs", directory / "docs")
    return directory


def run(
    source: Path,
    root: Optional[Path],
    *args: str,
    check: bool = True,
    env: Optional[dict[str, str]] = None,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    argv = ["sh", str(source / "install.sh"), *(["--root", str(root)] if root is not None else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, **kwargs)  # type: ignore[call-overload]
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def managed(source: Path = REPO) -> list[Managed]:
    """The installer's own table (install.sh --list)."""
    out = subprocess.run(["sh", str(source / "install.sh"), "--list"], capture_output=True, text=True, check=True)
    rows = [line.split(" ") for line in out.stdout.splitlines()]
    return [Managed(src, dest.lstrip("/"), int(mode, 8), role) for src, dest, mode, role in rows]


def listing(root: Path, *, skip: tuple[str, ...] = (), mtimes: bool = True) -> dict[str, tuple]:
    """Every path under root: type, mode, owner, group, and content hash and mtime
    (files; mtimes=False leaves it out) or target (symlinks). Directory mtimes are left out: adding and
    removing an entry changes them."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.startswith(skip):
                continue
            info = path.lstat()
            owner = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", *owner)
            elif not stat.S_ISREG(info.st_mode):  # a FIFO or device node: never opened
                found[rel] = ("special", stat.S_IFMT(info.st_mode), *owner)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[rel] = ("file", *owner, digest, info.st_mtime_ns if mtimes else None)
    return found


def checkpoints(root: Path) -> list[Path]:
    base = root / BACKUPS
    return sorted(base.iterdir(), key=lambda p: p.name) if base.exists() else []


def ship_new_version(source: Path, version: str = "2.0.1") -> None:
    """A new script and a changed timer."""
    script = source / "leadgen_watchdog.py"
    text = script.read_text()
    start = text.index('VERSION = "') + len('VERSION = "')
    script.write_text(text[:start] + version + text[text.index('"', start) :])
    timer = source / "units/motorcade-leadgen-watchdog.timer"
    timer.write_text(timer.read_text().replace("OnUnitActiveSec=30s", "OnUnitActiveSec=20s"))


def installed_here(polkit: bool = False, source: Path = REPO, metrics: bool = False) -> list[Managed]:
    """The rows an install puts into a root: the polkit rule with polkitd there, else the root-mode drop-in;
    the metrics drop-in and link with node_exporter's textfile directory there."""
    skip = {"root-mode" if polkit else "polkit", *(() if metrics else ("metrics",))}
    return [row for row in managed(source) if row.role not in skip]


def add_polkitd(root: Path) -> None:
    """Make the scratch root look like a host with polkitd installed."""
    polkitd = root / "usr/lib/polkit-1/polkitd"
    polkitd.parent.mkdir(parents=True, exist_ok=True)
    polkitd.write_text("#!/bin/sh\n")
    polkitd.chmod(0o755)
