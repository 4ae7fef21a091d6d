"""Boot a Debian guest's systemd in a throw-away container, for end-to-end tests.

The guest is a tree built from Debian's packages (guest.py; LEADGEN_E2E_DISTRO
picks bookworm or trixie), not the host's root: nothing of the host's /usr is
in it. The one thing of the host's it sees is the Python that runs pytest
(read-only, at its own path, when it lives outside /usr): the Ansible suite
runs that Python's ansible-playbook inside the machine as its controller.

How (host: systemd 252, hybrid cgroups, PID 1 not systemd): a tmpfs holds an
overlay of the guest tree, so nothing the container writes reaches the tree;
its /dev is emptied (nspawn refuses a populated one); the nspawn process is
moved into cgroups of its own first (with --keep-unit --register=no nspawn
builds its cgroups inside its caller's); systemd boots a target of ours, not
the host's default, so only what a test needs runs. Teardown signals only the
nspawn process this harness started, by PID, then unmounts and removes the
cgroups. --private-network gives the container its own loopback.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import guest

CGROUP_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
TARGET = """[Unit]
Description=End-to-end test target: basic.target and nothing the host enables
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""
# Test-only: podman 5 warns on every command that cgroups v1 is deprecated. Only this host's hybrid cgroups make
# the guest's podman see v1 (a Debian 13 host boots cgroup v2): silenced for the guest's units and our commands.
QUIET_PODMAN = {"PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
MANAGER = "[Manager]\nDefaultEnvironment=" + " ".join(f"{k}={v}" for k, v in QUIET_PODMAN.items()) + "\n"
_names = itertools.count(1)


def unavailable() -> str:
    """Why a machine cannot be booted here, or '' when it can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "nsenter", "setsid"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: systemd-container, util-linux)"
    reason = guest.unavailable()
    if reason:
        return reason
    if not all(Path(h).is_dir() for h in CGROUP_HIERARCHIES):
        return "this harness expects hybrid cgroups (/sys/fs/cgroup/systemd and /unified)"
    return ""


class Machine:
    """One booted container; `sh` runs commands inside it."""

    def __init__(self, *, writable_cgroups: bool = False) -> None:
        self.name = f"lg-e2e-{os.getpid()}-{next(_names)}"
        self.base = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.root = self.base / "root"
        self.log = self.base.with_suffix(".console.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.mounted: list[Path] = []
        self.cgroups: list[Path] = []
        self.writable_cgroups = writable_cgroups
        self.distro = guest.distro()
        self.lower: Path | None = None

    # --- lifecycle ---------------------------------------------------------

    def boot(self, timeout: float = 30) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(self.base)], check=True)
        self.mounted.append(self.base)
        for sub in ("upper", "work", "root"):
            (self.base / sub).mkdir()
        self.lower = guest.ensure(self.distro)
        options = f"lowerdir={self.lower},upperdir={self.base}/upper,workdir={self.base}/work"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)], check=True)
        self.mounted.append(self.root)
        self._bind_controller()
        for entry in (self.root / "dev").iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.write_host("/etc/systemd/system/e2e.target", TARGET)
        self.write_host("/etc/systemd/system.conf.d/50-e2e-podman.conf", MANAGER)
        for group in self._own_cgroups():
            group.mkdir()
            if (group / "cpuset.cpus").exists():  # v1 cpuset starts empty: nothing could join it
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (group / key).write_text((group.parent / key).read_text())
            self.cgroups.append(group)
        join = " ".join(f"echo $$ > {group}/cgroup.procs;" for group in self.cgroups)
        nspawn = (
            f"systemd-nspawn -q -D {self.root} -M {self.name} --register=no --keep-unit"
            " --private-network --console=read-only -b systemd.unit=e2e.target"
        )
        with open(self.log, "wb") as console:
            self.proc = subprocess.Popen(
                ["setsid", "sh", "-c", f"{join} exec {nspawn}"],
                stdout=console,
                stderr=console,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not self.leader:
            self._check_alive(deadline)
            found = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "systemd"], capture_output=True, text=True)
            self.leader = int(found.stdout.split()[0]) if found.stdout.split() else 0
            time.sleep(0.05)
        while True:
            self._check_alive(deadline)
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.1)
        if self.writable_cgroups:
            self._make_cgroups_writable()

    def _bind_controller(self) -> None:
        """The Python running pytest (and the ansible-playbook pip put beside it), read-only at its own path.

        Only a prefix outside /usr, such as pyenv's: the guest's /usr stays the guest's."""
        prefix = Path(sys.prefix).resolve()
        if prefix == Path("/") or prefix.is_relative_to("/usr"):
            return
        target = self.root / str(prefix).lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(prefix), str(target)], check=True)
        self.mounted.append(target)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)

    def _make_cgroups_writable(self) -> None:
        """nspawn mounts the v1 controllers read-only; podman's runc needs to create cgroups in them.

        Done from the host in the container's mount namespace (the container's own
        seccomp filter forbids it): a bind remount, so the host's mounts stay as they are."""
        controllers = self.sh("ls /sys/fs/cgroup").stdout.split()
        for name in controllers:
            if name not in ("systemd", "unified"):
                path = f"/sys/fs/cgroup/{name}"
                subprocess.run(
                    ["nsenter", "-t", str(self.leader), "-m", "mount", "-o", "remount,bind,rw", path], check=True
                )

    def _own_cgroups(self) -> list[Path]:
        """A cgroup named after the machine under this process's own, in every hierarchy.

        The systemd and unified ones are needed to boot at all; the v1 controllers only
        when podman runs inside (writable_cgroups), so what it creates is removed with ours."""
        groups = []
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            mount = {"name=systemd": "systemd", "": "unified"}.get(controllers, controllers)
            if mount not in ("systemd", "unified") and not self.writable_cgroups:
                continue
            base = Path("/sys/fs/cgroup") / mount
            if base.is_dir():
                groups.append(base / path.lstrip("/") / self.name)
        return groups

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.console()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"container did not boot in time: {self.console()}")

    def console(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        for mount in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(mount)], check=False)
        for group in self.cgroups:
            subgroups = [path for path in group.rglob("*") if path.is_dir()]
            for sub in sorted(subgroups, key=lambda p: len(p.parts), reverse=True):
                sub.rmdir()
            group.rmdir()
        shutil.rmtree(self.base, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    # --- inside the container ---------------------------------------------

    def sh(self, script: str, *, check: bool = True, timeout: float = 120, input: str | None = None):
        """Run a shell script inside the container (all its namespaces)."""
        argv = ["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c", script]
        env = {**os.environ, **QUIET_PODMAN}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"`{script}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def write(self, path: str, text: str) -> None:
        """Write a file inside the container, /run included (its own tmpfs)."""
        self.sh(f'mkdir -p "$(dirname {path})" && cat > {path}', input=text)

    def write_host(self, path: str, text: str) -> None:
        """Write a file into the overlay before boot (not under /run)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show -p {','.join(props)} {unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> list[dict]:
        out = self.sh(f"journalctl --no-pager -o json -u {unit}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def read_json(self, path: str) -> dict | None:
        proc = self.sh(f"cat {path}", check=False)
        try:
            return json.loads(proc.stdout) if proc.returncode == 0 else None
        except ValueError:  # the script writes by rename: a partial file would be a bug
            raise AssertionError(f"{path} is not JSON: {proc.stdout!r}") from None
