"""The API unit's own podman command lines, run by a real podman against a test image.

The podman is the e2e guest's (guest.py: bookworm's 4.3 or trixie's 5.4), in a
booted machine with writable cgroups; every command runs inside it. Paths are
the host's view of the machine's overlay, and inside the machine a symlink at
the overlay's host path points to its own root, so one path names one file on
both sides.

ExecStartPre=, ExecStart=, ExecStop= and ExecStopPost= are read from
units/motorcade-leadgen-api.service and expanded as systemd would (%t, %n,
${VAR} from an api.env), then run in order; assertions read `podman inspect`,
the container's cgroups and its behaviour.

Deviations from production, test-only, none in the unit (also in the README):
- CONTAINERS_CONF: runtime runc (crun refuses the nspawn cgroups), explicit default
  ulimits (runc may not raise podman's defaults here), keyring off.
- CONTAINERS_STORAGE_CONF: a vfs store in a temporary folder, so the tests
  never touch the host's images and leave nothing behind.
- --userns=auto becomes an explicit map of the same range install.sh adds
  (--uidmap/--gidmap 0:2147483647:65536): auto needs a "containers" line in
  the host's /etc/subuid and /etc/subgid, which the tests must not change
  (test_privilege.py runs the real --userns=auto in a booted machine).
- %t is a temporary folder instead of /run, where the test creates any
  RuntimeDirectory= the unit names, as systemd would; sd_notify goes to the test's own
  NOTIFY_SOCKET. The environment is built as systemd builds it: the unit's
  Environment= defaults, then the test's api.env over them.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest
import testimage
import unitfile
from harness import REPO, require_or_skip
from machine import QUIET_PODMAN, Machine, unavailable

UNIT = "motorcade-leadgen-api.service"
MEMORY, PIDS, CPUS, TMP_SIZE = "256m", "64", "0.5", "8m"
LOG_CAP = 1024 * 1024
USERNS = ["--uidmap=0:2147483647:65536", "--gidmap=0:2147483647:65536"]  # for --userns=auto, see above
FLOOD = 8 * LOG_CAP
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST: list[Machine] = []  # the module's machine, once booted
_dirs = itertools.count(1)


def inside(argv: list[str], env: Optional[dict[str, str]] = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run argv in the guest machine with exactly env (plus PATH), as systemd runs a unit's command."""
    (box,) = GUEST
    assignments = [f"{key}={value}" for key, value in {"PATH": PATH, **QUIET_PODMAN, **(env or {})}.items()]
    argv = ["nsenter", "-t", str(box.leader), "-a", "env", "-i", *assignments, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def podman(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = inside(["podman", *args], env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


class UnitRunner:
    """Runs the unit's Exec*= lines the way systemd would, with a test api.env."""

    def __init__(self, base: Path, env: dict[str, str], api_env: dict[str, str] | None = None) -> None:
        """api_env: the test's /etc/motorcade-leadgen/api.env (default: the template with test caps)."""
        self.base = base
        self.runtime = base / "run"
        self.service = unitfile.parse(REPO / "units" / UNIT)["Service"]
        self.app_env = base / "app.env"
        self.app_env.write_text(f"FLOOD_LOG_BYTES={FLOOD}\n")
        if api_env is None:
            api_env = unitfile.read_env(REPO / "units" / "api.env")
            api_env.update(
                LEADGEN_IMAGE=testimage.IMAGE,
                LEADGEN_APP_ENV_FILE=str(self.app_env),
                LEADGEN_MEMORY=MEMORY,
                LEADGEN_PIDS_LIMIT=PIDS,
                LEADGEN_CPUS=CPUS,
                LEADGEN_LOG_MAX_SIZE="1m",
                LEADGEN_TMP_SIZE=TMP_SIZE,
            )
        defaults = dict(value.replace("%n", UNIT).split("=", 1) for value in self.service["Environment"])
        self.api_env = {**defaults, **api_env}  # EnvironmentFile= overrides Environment=
        self.env = {**env, **self.api_env}
        self.logs = base / "log"
        self.specifiers = {"t": str(self.runtime), "n": UNIT, "L": str(self.logs)}

    def commands(self, key: str) -> list[tuple[bool, list[str]]]:
        variables = self.api_env
        return [unitfile.expand(line, self.specifiers, variables) for line in self.service.get(key, [])]

    def run(self, key: str, env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
        """Run every line of one Exec*= key; stop at the first failure not prefixed with '-'."""
        done = []
        for ignore, argv in self.commands(key):
            argv = [part for arg in argv for part in (USERNS if arg == "--userns=auto" else [arg])]
            proc = inside(argv, env or self.env)
            done.append(proc)
            if proc.returncode != 0 and not ignore:
                break
        return done

    def start(self) -> tuple[str, bytes]:
        """ExecStartPre + ExecStart with a NOTIFY_SOCKET; returns the container id and what was notified."""
        self.runtime.mkdir(parents=True, exist_ok=True)
        for name in self.service.get("RuntimeDirectory", []):  # what systemd would create
            mode = int(self.service.get("RuntimeDirectoryMode", ["0755"])[0], 8)
            (self.runtime / name).mkdir(exist_ok=True, mode=mode)
        for name in self.service.get("LogsDirectory", []):
            (self.logs / name).mkdir(parents=True, exist_ok=True, mode=0o750)
        for proc in self.run("ExecStartPre"):
            assert proc.returncode == 0, [*proc.args, proc.stderr]
        notify_path = self.base / "notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(60)
            (proc,) = self.run("ExecStart", {**self.env, "NOTIFY_SOCKET": str(notify_path)})
            assert proc.returncode == 0, proc.stderr
            messages = b""
            while b"READY=1" not in messages:
                messages += notify.recv(4096) + b"\n"
        return (self.runtime / f"{UNIT}.ctr-id").read_text().strip(), messages

    def stop(self) -> None:
        for key in ("ExecStop", "ExecStopPost"):
            for proc in self.run(key):
                assert proc.returncode == 0, [*proc.args, proc.stderr]


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    """The guest, booted with writable cgroups; its overlay's host path leads to its root inside it too."""
    reason = unavailable() or testimage.unavailable()
    if reason:
        require_or_skip(reason)
    box = Machine(writable_cgroups=True)
    try:
        box.boot()
        box.sh(f"mkdir -p {box.root.parent} && ln -s / {box.root}")
        GUEST.append(box)
        yield box
    finally:
        GUEST.clear()
        box.close()


def guest_dir(box: Machine) -> Path:
    path = box.root / f"var/tmp/podman-unit/{next(_dirs)}"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def guest_tmp(machine: Machine) -> Path:
    """A fresh directory in the machine (tmp_path's role), the same path on both sides."""
    return guest_dir(machine)


@pytest.fixture(scope="module")
def podman_env(machine: Machine) -> Iterator[dict[str, str]]:
    """A private podman store and test-only containers.conf, with the test image imported."""
    base = guest_dir(machine)
    (base / "containers.conf").write_text(testimage.CONTAINERS_CONF)
    (base / "storage.conf").write_text(testimage.storage_conf(str(base / "graph"), str(base / "runroot")))
    env = {"CONTAINERS_CONF": str(base / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(base / "storage.conf")}
    tar = testimage.build_tar(machine.base)
    shutil.copy(tar, base / "image.tar")
    proc = inside(testimage.import_argv(str(base / "image.tar")), env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    yield env
    podman(env, "rm", "--all", "--force", check=False)
    podman(env, "rmi", "--all", "--force", check=False)


@pytest.fixture(scope="module")
def started(podman_env: dict[str, str], machine: Machine) -> Iterator[dict]:
    """The container as the unit starts it; stopped by the unit's own stop lines at the end."""
    runner = UnitRunner(guest_dir(machine), podman_env)
    cid, notified = runner.start()
    info = podman(podman_env, "inspect", cid, "--format", "json").stdout
    yield {"runner": runner, "cid": cid, "notified": notified, "inspect": json.loads(info)[0]}
    runner.stop()


def get(url: str) -> tuple[int, bytes]:
    """GET from inside the machine (its own loopback): status and body; ConnectionError when nothing answers."""
    proc = inside(["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", url])
    if proc.returncode != 0:
        raise ConnectionError(f"curl {url} exited {proc.returncode}: {proc.stderr.strip()}")
    body, status = proc.stdout.rsplit("\n", 1)
    return int(status), body.encode()


def container_exec(started: dict, *argv: str, user: str = "") -> subprocess.CompletedProcess[str]:
    options = [f"--user={user}"] if user else []
    return podman(started["runner"].env, "exec", *options, started["cid"], *argv, check=False)


def test_reaches_ready_through_sdnotify_and_serves_health(started: dict) -> None:
    """--sdnotify=conmon sends READY=1 and MAINPID; GET /lead/health answers 200 on 127.0.0.1:8000."""
    assert b"READY=1" in started["notified"] and b"MAINPID=" in started["notified"]
    status, body = wait_healthy()
    assert (status, body) == (200, b'{"status":"ok"}\n')


def wait_healthy() -> tuple[int, bytes]:
    deadline = time.monotonic() + 15
    while True:
        try:
            return get("http://127.0.0.1:8000/lead/health")
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_published_on_loopback_8000_only(started: dict) -> None:
    """One port binding, 127.0.0.1:8000; another loopback address gets nothing."""
    wait_healthy()
    assert started["inspect"]["HostConfig"]["PortBindings"] == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]
    }
    other = inside(["curl", "-sS", "-m", "2", "http://127.0.0.2:8000/lead/health"])
    assert other.returncode == 7, (other.returncode, other.stderr)  # 7: could not connect


def test_all_capabilities_dropped_and_no_new_privileges(started: dict) -> None:
    """Inside: every capability set is empty and NoNewPrivs is 1; inspect agrees."""
    status = container_exec(started, "/bin/busybox", "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert fields[name].strip() == "0000000000000000", name
    assert fields["NoNewPrivs"].strip() == "1"
    assert started["inspect"]["EffectiveCaps"] in ([], None)
    assert "no-new-privileges" in started["inspect"]["HostConfig"]["SecurityOpt"]


def test_read_only_root_with_a_private_tmp_any_user_can_write(started: dict) -> None:
    """A write to / fails; uid 1000 writes /tmp, a tmpfs of mode 1777 sized from api.env (rule 13)."""
    assert started["inspect"]["HostConfig"]["ReadonlyRootfs"] is True
    denied = container_exec(started, "sh", "-c", "echo x > /probe")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    written = container_exec(started, "sh", "-c", "echo uid-1000 > /tmp/probe && cat /tmp/probe", user="1000:1000")
    assert (written.returncode, written.stdout) == (0, "uid-1000\n"), written.stderr
    mounts = container_exec(started, "busybox", "cat", "/proc/mounts").stdout.splitlines()
    (tmp,) = [line.split() for line in mounts if line.split()[1] == "/tmp"]
    assert tmp[2] == "tmpfs" and "size=8192k" in tmp[3].split(","), tmp
    assert container_exec(started, "busybox", "stat", "-c", "%a", "/tmp").stdout.strip() == "1777"


def test_tmp_full_is_enospc_inside_and_costs_the_host_nothing(started: dict) -> None:
    """Writing past LEADGEN_TMP_SIZE gets ENOSPC in the container; the host's runtime directory gains nothing."""
    host_run = started["runner"].runtime
    free_before = os.statvfs(host_run).f_bavail * os.statvfs(host_run).f_frsize
    before = sorted(p.name for p in host_run.rglob("*"))
    dd = ("busybox", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=16")
    fill = container_exec(started, *dd, user="1000:1000")
    assert fill.returncode != 0 and "No space left on device" in fill.stderr
    size = container_exec(started, "busybox", "stat", "-c", "%s", "/tmp/fill").stdout.strip()
    assert 7 * 1024 * 1024 <= int(size) <= 8 * 1024 * 1024
    assert sorted(p.name for p in host_run.rglob("*")) == before
    free_after = os.statvfs(host_run).f_bavail * os.statvfs(host_run).f_frsize
    assert free_before - free_after < 4 * 1024 * 1024
    container_exec(started, "busybox", "rm", "-f", "/tmp/fill")


def test_resource_caps_as_configured(started: dict) -> None:
    """--memory, --pids-limit and --cpus from api.env reach the container's cgroups."""
    host = started["inspect"]["HostConfig"]
    assert (host["Memory"], host["PidsLimit"], host["NanoCpus"]) == (256 * 1024 * 1024, 64, 500_000_000)
    cgroup = started["inspect"]["State"]["CgroupPath"]

    def read(name: str) -> str:  # the machine's view of the container's cgroups
        return inside(["cat", f"/sys/fs/cgroup/{name.split('.', maxsplit=1)[0]}{cgroup}/{name}"]).stdout.strip()

    assert read("memory.limit_in_bytes") == str(256 * 1024 * 1024)
    assert read("pids.max") == "64"
    assert int(read("cpu.cfs_quota_us")) / int(read("cpu.cfs_period_us")) == 0.5


def test_k8s_file_log_stays_under_its_cap(started: dict) -> None:
    """The container wrote 8 MiB to stdout; the k8s-file log stays at most 1 MiB."""
    config = started["inspect"]["HostConfig"]["LogConfig"]
    assert config["Type"] == "k8s-file"
    wait_healthy()  # the flood comes before the server starts
    log = Path(config["Path"])
    assert 0 < log.stat().st_size <= LOG_CAP


# Every path the container may write, each bounded: tmpfs with a size for /tmp (LEADGEN_TMP_SIZE), /dev/shm
# (podman's --shm-size, 64m) and /dev (podman's own 64m tmpfs, only for the container's root); /dev/mqueue holds
# POSIX message queues of the container's own IPC namespace (the kernel's queues_max and msg_max bound it).
WRITABLE = {"/tmp", "/dev/shm", "/dev", "/dev/mqueue"}


def test_rule10_only_bounded_deliberate_paths_are_writable(started: dict) -> None:
    """As container root: a file can be made exactly under /tmp, /dev/shm, /dev and /dev/mqueue, each bounded; as
    uid 1000 under no more; /, /run, /var/tmp, /dev/mqueue, /etc, /home, /root, /var refuse it (podman 4.3's
    --read-only-tmpfs default would leave /run and /var/tmp writable tmpfs)."""
    candidates = ["/", "/tmp", "/run", "/var/tmp", "/dev", "/dev/shm", "/dev/mqueue", "/etc", "/home", "/root", "/var"]
    mounts = {
        line.split()[1]: line.split()
        for line in container_exec(started, "busybox", "cat", "/proc/mounts").stdout.splitlines()
    }
    for user in ("", "1000:1000"):
        writable = set()
        for path in candidates:
            probe = f"{path.rstrip('/')}/rule10-probe"
            # an empty file: a /tmp that an earlier test filled still takes it; a read-only path never does
            proc = container_exec(started, "busybox", "sh", "-c", f": > {probe} && busybox rm -f {probe}", user=user)
            if proc.returncode == 0:
                writable.add(path)
        assert writable <= WRITABLE, (user or "root", writable, {p: mounts.get(p) for p in writable})
        if not user:
            # podman 5 (Debian 13) mounts /dev and /dev/shm read-only under --read-only: fewer, never more.
            major = int(
                podman(started["runner"].env, "version", "--format", "{{.Client.Version}}").stdout.split(".")[0]
            )
            assert writable == (WRITABLE if major < 5 else {"/tmp", "/dev/mqueue"}), writable
            root_writable = writable
    for path in root_writable:
        fstype, options = mounts[path][2], mounts[path][3].split(",")
        if fstype != "mqueue":
            assert fstype == "tmpfs" and any(option.startswith("size=") for option in options), mounts[path]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        pytest.param("LEADGEN_IMAGE", "localhost/no-such-image:1", "is not present locally", id="image-missing"),
        pytest.param("LEADGEN_IMAGE", "", "LEADGEN_IMAGE is empty", id="image-empty"),
        pytest.param("LEADGEN_APP_ENV_FILE", "/nonexistent/app.env", "is missing or unreadable", id="env-file-missing"),
        pytest.param("LEADGEN_MEMORY", "", "LEADGEN_MEMORY=[] in /etc/motorcade-leadgen/api.env", id="memory-empty"),
        pytest.param("LEADGEN_CPUS", "lots", "LEADGEN_CPUS=[lots] in /etc/motorcade-leadgen/api.env", id="cpus-bad"),
    ],
)
def test_prestart_checks_fail_clearly(
    podman_env: dict[str, str], guest_tmp: Path, setting: str, value: str, message: str
) -> None:
    """ExecStartPre stops the start with a one-line reason before podman run."""
    runner = UnitRunner(guest_tmp, podman_env)
    runner.api_env[setting] = value
    runner.env[setting] = value
    done = runner.run("ExecStartPre")
    assert done[-1].returncode != 0
    assert message in done[-1].stderr and done[-1].stderr.count("\n") == 1
    assert not (runner.runtime / f"{UNIT}.ctr-id").exists()


def test_stop_and_stop_post_leave_no_container(podman_env: dict[str, str], guest_tmp: Path) -> None:
    """A second start replaces nothing left over; stop + stop-post remove the container."""
    runner = UnitRunner(guest_tmp, podman_env)
    runner.app_env.write_text("")
    for _ in range(2):
        cid, _ = runner.start()
        assert podman(podman_env, "ps", "-q", "--filter", f"id={cid}").stdout.strip()
        runner.stop()
        listing = podman(podman_env, "ps", "-a", "-q", "--filter", "name=motorcade-leadgen-api").stdout
        assert listing.strip() == ""


def test_a_trimmed_api_env_gets_the_units_default_caps(podman_env: dict[str, str], guest_tmp: Path) -> None:
    """api.env with only the image and app env file: the container still gets 512m, 256 pids, 1 CPU, a 64m /tmp."""
    app_env = guest_tmp / "app.env"
    app_env.write_text("")
    runner = UnitRunner(guest_tmp, podman_env, {"LEADGEN_IMAGE": testimage.IMAGE, "LEADGEN_APP_ENV_FILE": str(app_env)})
    cid, _ = runner.start()
    try:
        host = json.loads(podman(podman_env, "inspect", cid, "--format", "json").stdout)[0]["HostConfig"]
        assert (host["Memory"], host["PidsLimit"], host["NanoCpus"]) == (512 * 1024 * 1024, 256, 1_000_000_000)
        assert "size=64m" in host["Tmpfs"]["/tmp"].split(",")
    finally:
        runner.stop()


def test_a_stale_container_of_the_same_name_is_replaced(podman_env: dict[str, str], guest_tmp: Path) -> None:
    """A container named motorcade-leadgen-api left by a crash: `run --replace` starts anyway, no `podman rm` needed."""
    runner = UnitRunner(guest_tmp, podman_env)
    runner.app_env.write_text("")
    stale = podman(podman_env, "create", "--name=motorcade-leadgen-api", testimage.IMAGE).stdout.strip()
    cid, _ = runner.start()
    try:
        assert cid != stale
        assert podman(podman_env, "ps", "-a", "-q", "--no-trunc", "--filter", f"id={stale}").stdout == ""
    finally:
        runner.stop()
