"""The e2e guest's root: a Debian tree built from Debian's packages with mmdebstrap, cached on this machine.

LEADGEN_E2E_DISTRO=bookworm|trixie picks the release (default bookworm). The
tree is built once per distro, package list and recipe (this file's RECIPE
and PACKAGES), under /var/cache/leadgen-e2e/<distro>-<hash>/; a change to
either gives a new hash and a new build. It is built in a temporary directory
beside it and renamed into place, under a lock, so two pytest workers never
build at once and a half-built tree is never used. Machine uses it read-only,
as the overlay's lower directory: nothing of the host's /usr is in the guest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

CACHE = Path(os.environ.get("LEADGEN_E2E_CACHE", "/var/cache/leadgen-e2e"))
MIRROR = "http://deb.debian.org/debian"
DISTROS = ("bookworm", "trixie")
DEFAULT = "bookworm"

# What the suites use inside the guest. podman pulls its network stack (bookworm: CNI + iptables; trixie:
# netavark, which needs nft). polkitd needs libpam-systemd for its default-logind. hyperfine: bench/run.sh.
PACKAGES = (
    "busybox-static",
    "curl",
    "dbus",
    "hyperfine",
    "iproute2",
    "jq",
    "libpam-systemd",
    "nftables",
    "podman",
    "polkitd",
    "procps",
    "python3",
    "runc",
    "systemd",
    "systemd-sysv",
    "util-linux",
)

# Timers Debian's packages enable that would start work at random moments of a test: masked.
MASKED = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)

# Bump when the build below changes in a way the package list does not show.
RECIPE = "mmdebstrap minbase; masked timers; hostname; v1"


class Versions(NamedTuple):
    debian: str
    systemd: str
    podman: str
    python: str


def distro() -> str:
    """The distro the suites run on, from LEADGEN_E2E_DISTRO; a bad value fails with one line naming it."""
    name = os.environ.get("LEADGEN_E2E_DISTRO", DEFAULT)
    if name not in DISTROS:
        raise SystemExit(f"LEADGEN_E2E_DISTRO must be one of {', '.join(DISTROS)}, got {name!r}")
    return name


def key(name: str) -> str:
    recipe = "\n".join([name, MIRROR, RECIPE, *PACKAGES, *MASKED])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def path(name: str) -> Path:
    return CACHE / f"{name}-{key(name)}"


def unavailable() -> str:
    """Why a guest cannot be built here, or '' when it can (an existing tree needs no tool)."""
    if path(distro()).is_dir():
        return ""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap not installed (Debian: mmdebstrap), needed to build the e2e guest"
    return ""


def ensure(name: str = "") -> Path:
    """The guest tree for the distro, built first if it is not in the cache yet."""
    name = name or distro()
    final = path(name)
    if final.is_dir():
        return final
    CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it: wait, then use its tree
        if final.is_dir():
            return final
        for stale in CACHE.glob(f".build-{name}-*"):  # a build killed half-way: never used, removed
            shutil.rmtree(stale, ignore_errors=True)
        work = CACHE / f".build-{name}-{key(name)}-{os.getpid()}"
        try:
            build(name, work)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def build(name: str, root: Path) -> None:
    started = time.monotonic()
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}", name, str(root), MIRROR]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"building the {name} guest failed ({' '.join(argv)}):\n{proc.stderr[-3000:]}")
    system = root / "etc/systemd/system"
    for unit in MASKED:
        target = system / unit
        target.unlink(missing_ok=True)
        target.symlink_to("/dev/null")
    (root / "etc/hostname").write_text(f"leadgen-e2e-{name}\n")
    print(f"built the {name} e2e guest in {time.monotonic() - started:.0f}s")


def _dpkg_versions(root: Path) -> dict[str, str]:
    versions, package = {}, ""
    for line in (root / "var/lib/dpkg/status").read_text().splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1]
        elif line.startswith("Version: "):
            versions[package] = line.split(": ", 1)[1]
    return versions


def _upstream(version: str) -> str:
    """'1:5.4.2+ds1-2+b2' -> '5.4.2'"""
    version = version.split(":", 1)[-1].rsplit("-", 1)[0]
    return version.split("+", 1)[0].split("~", 1)[0]


def versions(root: Path) -> Versions:
    """Debian, systemd, podman and Python versions, read from the tree itself."""
    dpkg = _dpkg_versions(root)
    return Versions(
        debian=(root / "etc/debian_version").read_text().strip(),
        systemd=_upstream(dpkg["systemd"]).split(".", 1)[0],
        podman=_upstream(dpkg["podman"]),
        python=_upstream(dpkg["python3"]),
    )


def header() -> str:
    """The pytest header line naming the guest (building it first if needed)."""
    name = distro()
    found = versions(ensure(name))
    return (
        f"e2e guest: Debian {found.debian}, systemd {found.systemd}, podman {found.podman},"
        f" python {found.python} ({name}, {path(name)})"
    )
