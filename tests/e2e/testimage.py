"""The API image for the podman suites, built here: no registry is reachable.

The guest's busybox-static (guest.py installs it) gives one static binary; its httpd serves
/www/lead/health. The entrypoint can flood stdout first ($FLOOD_LOG_BYTES, set
through the application env file) to test the log cap, and exits on SIGTERM
(a plain httpd as PID 1 would ignore it and wait for SIGKILL). It exits when
its server exits, with the server's status.

Fault modes for tests/e2e/test_faults.py, all through the application env file
or a signal to the entrypoint (PID 1 of the container):
- LEADGEN_TEST_FAULT=crash: exit 70 at once, before serving (a crash loop).
- LEADGEN_TEST_SERVER=nc: serve /lead/health with busybox nc and health.sh, a
  process per request, so the server can turn slow.
- SIGUSR2: from now on every answer waits $LEADGEN_TEST_SLOW_SECONDS (nc only);
  the flag lives in the container's /tmp, so a new container is healthy again.
- SIGUSR1: the entrypoint itself allocates memory without end, until the
  kernel's OOM killer ends it at the container's --memory cap.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import guest

IMAGE = "localhost/motorcade-leadgen-api:test"
BUSYBOX = "/bin/busybox"

ENTRYPOINT = """#!/bin/sh
trap 'exit 0' TERM INT
echo "test api up in container $HOSTNAME"
if [ -n "$FLOOD_LOG_BYTES" ]; then
    busybox head -c "$FLOOD_LOG_BYTES" /dev/zero | busybox tr '\\0' x | busybox fold -w 99
fi
if [ "$LEADGEN_TEST_FAULT" = crash ]; then
    echo "LEADGEN_TEST_FAULT=crash: exiting at once" >&2
    exit 70
fi
oom() { hog=$(busybox tr '\\0' x </dev/zero); }
trap oom USR1
trap 'busybox touch /tmp/slow' USR2
if [ "$LEADGEN_TEST_SERVER" = nc ]; then
    busybox nc -ll -p 8000 -e /health.sh &
else
    busybox httpd -f -p 0.0.0.0:8000 -h /www &
fi
server=$!
while :; do
    wait "$server"
    status=$?
    busybox kill -0 "$server" 2>/dev/null || exit "$status"
done
"""

# One request per process (busybox nc -ll -e): reads the request line and
# headers, waits when the slow flag is set, answers like /www/lead/health.
HEALTH_SH = """#!/bin/sh
cr=$(busybox printf '\\r')
read -r request
while read -r header && [ -n "${header%"$cr"}" ]; do :; done
if [ -e /tmp/slow ]; then
    busybox sleep "${LEADGEN_TEST_SLOW_SECONDS:-3}"
fi
busybox printf 'HTTP/1.0 200 OK\\r\\nContent-Type: application/json\\r\\n'
busybox printf 'Content-Length: 16\\r\\n\\r\\n{"status":"ok"}\\n'
"""

# Test-only podman settings, given through CONTAINERS_CONF (see the README's
# list of deviations): runc, explicit ulimits, no keyring.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
keyring = false

[engine]
runtime = "runc"
"""


def storage_conf(graphroot: str, runroot: str) -> str:
    """A vfs store: overlay storage cannot sit on the e2e container's overlay, and it keeps tests off the host's."""
    return f'[storage]\ndriver = "vfs"\ngraphroot = "{graphroot}"\nrunroot = "{runroot}"\n'


def unavailable() -> str:
    """podman, runc and busybox run inside the guest: the guest's packages bring them (guest.PACKAGES)."""
    if os.geteuid() != 0:
        return "needs root"
    for package in ("podman", "runc", "busybox-static"):
        if package not in guest.PACKAGES:
            return f"{package} is not in the e2e guest's package list"
    return ""


def build_tar(dest: Path) -> Path:
    """A root file system tarball: busybox, /bin/sh, /entrypoint.sh, /health.sh, /www/lead/health.

    dest is a Machine's base directory: the busybox is its guest's (dest/root/bin/busybox), so the image
    carries the guest distro's busybox, not the host's."""
    busybox = dest / "root" / BUSYBOX.lstrip("/")
    tar_path = dest / "image.tar"
    with tarfile.open(tar_path, "w") as tar:

        def add(name: str, data: bytes, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, fileobj=io.BytesIO(data))

        for directory in ("bin", "www", "www/lead", "tmp", "dev", "proc", "sys"):
            info = tarfile.TarInfo(directory)
            # /tmp 1777 as in every base image: runc gives a tmpfs the mode of the directory it covers
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        add("bin/busybox", busybox.read_bytes(), 0o755)
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
        add("entrypoint.sh", ENTRYPOINT.encode(), 0o755)
        add("health.sh", HEALTH_SH.encode(), 0o755)
        add("www/lead/health", b'{"status":"ok"}\n', 0o644)
    return tar_path


def import_argv(tar_path: str) -> list[str]:
    return ["podman", "import", "--change", 'CMD=["/bin/sh","/entrypoint.sh"]', tar_path, IMAGE]


def podman(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc
