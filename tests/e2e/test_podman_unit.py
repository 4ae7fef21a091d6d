"""The API unit's own podman command lines, run by a real podman against a test image.

ExecStartPre=, ExecStart=, ExecStop= and ExecStopPost= are read from
units/motorcade-leadgen-api.service and expanded as systemd would (%t, %n,
${VAR} from an api.env), then run in order; assertions read `podman inspect`,
the container's cgroups and its behaviour.

Deviations from production, test-only, none in the unit (also in the README):
- CONTAINERS_CONF: runtime runc (crun refuses hybrid cgroups), explicit default
  ulimits (runc may not raise podman's defaults here), keyring off.
- CONTAINERS_STORAGE_CONF: a vfs store in a temporary folder, so the tests
  never touch the host's images and leave nothing behind.
- %t is a temporary folder instead of /run, and the RuntimeDirectory= that
  systemd would create is created by the test; sd_notify goes to the test's
  own NOTIFY_SOCKET.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import testimage
import unitfile
from harness import REPO, require_or_skip

UNIT = "motorcade-leadgen-api.service"
RUNTIME_DIR = "motorcade-leadgen-api"
MEMORY, PIDS, CPUS = "256m", "64", "0.5"
LOG_CAP = 1024 * 1024
FLOOD = 8 * LOG_CAP


class UnitRunner:
    """Runs the unit's Exec*= lines the way systemd would, with a test api.env."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        self.runtime = base / "run"
        self.service = unitfile.parse(REPO / "units" / UNIT)["Service"]
        self.app_env = base / "app.env"
        self.app_env.write_text(f"FLOOD_LOG_BYTES={FLOOD}\n")
        api_env = unitfile.read_env(REPO / "units" / "api.env")
        api_env.update(
            LEADGEN_IMAGE=testimage.IMAGE,
            LEADGEN_APP_ENV_FILE=str(self.app_env),
            LEADGEN_MEMORY=MEMORY,
            LEADGEN_PIDS_LIMIT=PIDS,
            LEADGEN_CPUS=CPUS,
            LEADGEN_LOG_MAX_SIZE="1m",
        )
        self.api_env = api_env
        self.env = {**env, **api_env, "PODMAN_SYSTEMD_UNIT": UNIT}
        self.specifiers = {"t": str(self.runtime), "n": UNIT}

    def commands(self, key: str) -> list[tuple[bool, list[str]]]:
        variables = {**self.api_env, "PODMAN_SYSTEMD_UNIT": UNIT}
        return [unitfile.expand(line, self.specifiers, variables) for line in self.service.get(key, [])]

    def run(self, key: str, env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
        """Run every line of one Exec*= key; stop at the first failure not prefixed with '-'."""
        done = []
        for ignore, argv in self.commands(key):
            proc = subprocess.run(argv, env=env or self.env, capture_output=True, text=True, timeout=90)
            done.append(proc)
            if proc.returncode != 0 and not ignore:
                break
        return done

    def start(self) -> tuple[str, bytes]:
        """ExecStartPre + ExecStart with a NOTIFY_SOCKET; returns the container id and what was notified."""
        (self.runtime / RUNTIME_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
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
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private podman store and test-only containers.conf, with the test image imported."""
    reason = testimage.unavailable()
    if reason:
        require_or_skip(reason)
    base = tmp_path_factory.mktemp("podman")
    (base / "containers.conf").write_text(testimage.CONTAINERS_CONF)
    (base / "storage.conf").write_text(testimage.storage_conf(str(base / "graph"), str(base / "runroot")))
    env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf")}
    env["CONTAINERS_STORAGE_CONF"] = str(base / "storage.conf")
    tar = testimage.build_tar(base)
    subprocess.run(testimage.import_argv(str(tar)), env=env, check=True, capture_output=True, timeout=120)
    yield env
    testimage.podman(env, "rm", "--all", "--force", check=False)
    testimage.podman(env, "rmi", "--all", "--force", check=False)


@pytest.fixture(scope="module")
def started(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The container as the unit starts it; stopped by the unit's own stop lines at the end."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.fail("127.0.0.1:8000 is taken on this host: the unit publishes there", pytrace=False)
    runner = UnitRunner(tmp_path_factory.mktemp("unit"), podman_env)
    cid, notified = runner.start()
    info = testimage.podman(podman_env, "inspect", cid, "--format", "json").stdout
    yield {"runner": runner, "cid": cid, "notified": notified, "inspect": json.loads(info)[0]}
    runner.stop()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
        return response.status, response.read()


def container_exec(started: dict, *argv: str) -> subprocess.CompletedProcess[str]:
    return testimage.podman(started["runner"].env, "exec", started["cid"], *argv, check=False)


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
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_published_on_loopback_8000_only(started: dict) -> None:
    """One port binding, 127.0.0.1:8000; another loopback address gets nothing."""
    wait_healthy()
    assert started["inspect"]["HostConfig"]["PortBindings"] == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]
    }
    with socket.socket() as other:
        other.settimeout(2)
        assert other.connect_ex(("127.0.0.2", 8000)) != 0


def test_all_capabilities_dropped_and_no_new_privileges(started: dict) -> None:
    """Inside: every capability set is empty and NoNewPrivs is 1; inspect agrees."""
    status = container_exec(started, "/bin/busybox", "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert fields[name].strip() == "0000000000000000", name
    assert fields["NoNewPrivs"].strip() == "1"
    assert started["inspect"]["EffectiveCaps"] in ([], None)
    assert "no-new-privileges" in started["inspect"]["HostConfig"]["SecurityOpt"]


def test_read_only_root_with_private_tmp_on_the_host(started: dict) -> None:
    """A write to / fails; a write to /tmp succeeds and lands in the unit's runtime directory."""
    assert started["inspect"]["HostConfig"]["ReadonlyRootfs"] is True
    denied = container_exec(started, "sh", "-c", "echo x > /probe")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    allowed = container_exec(started, "sh", "-c", "echo written-inside > /tmp/probe")
    assert allowed.returncode == 0, allowed.stderr
    host_dir = started["runner"].runtime / RUNTIME_DIR
    assert (host_dir / "probe").read_text() == "written-inside\n"
    assert host_dir.stat().st_mode & 0o777 == 0o700


def test_resource_caps_as_configured(started: dict) -> None:
    """--memory, --pids-limit and --cpus from api.env reach the container's cgroups."""
    host = started["inspect"]["HostConfig"]
    assert (host["Memory"], host["PidsLimit"], host["NanoCpus"]) == (256 * 1024 * 1024, 64, 500_000_000)
    cgroup = started["inspect"]["State"]["CgroupPath"]
    root = Path("/sys/fs/cgroup")
    assert (root / f"memory{cgroup}/memory.limit_in_bytes").read_text().strip() == str(256 * 1024 * 1024)
    assert (root / f"pids{cgroup}/pids.max").read_text().strip() == "64"
    quota = int((root / f"cpu{cgroup}/cpu.cfs_quota_us").read_text())
    period = int((root / f"cpu{cgroup}/cpu.cfs_period_us").read_text())
    assert quota / period == 0.5


def test_k8s_file_log_stays_under_its_cap(started: dict) -> None:
    """The container wrote 8 MiB to stdout; the k8s-file log stays at most 1 MiB."""
    config = started["inspect"]["HostConfig"]["LogConfig"]
    assert config["Type"] == "k8s-file"
    wait_healthy()  # the flood comes before the server starts
    log = Path(config["Path"])
    assert 0 < log.stat().st_size <= LOG_CAP


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        pytest.param("LEADGEN_IMAGE", "localhost/no-such-image:1", "is not present locally", id="image-missing"),
        pytest.param("LEADGEN_IMAGE", "", "LEADGEN_IMAGE is empty", id="image-empty"),
        pytest.param("LEADGEN_APP_ENV_FILE", "/nonexistent/app.env", "is missing or unreadable", id="env-file-missing"),
    ],
)
def test_prestart_checks_fail_clearly(
    podman_env: dict[str, str], tmp_path: Path, setting: str, value: str, message: str
) -> None:
    """ExecStartPre stops the start with a one-line reason before podman run."""
    runner = UnitRunner(tmp_path, podman_env)
    runner.api_env[setting] = value
    runner.env[setting] = value
    done = runner.run("ExecStartPre")
    assert done[-1].returncode != 0
    assert message in done[-1].stderr and done[-1].stderr.count("\n") == 1
    assert not (runner.runtime / f"{UNIT}.ctr-id").exists()


def test_stop_and_stop_post_leave_no_container(podman_env: dict[str, str], tmp_path: Path) -> None:
    """A second start replaces nothing left over; stop + stop-post remove the container."""
    runner = UnitRunner(tmp_path, podman_env)
    runner.app_env.write_text("")
    for _ in range(2):
        cid, _ = runner.start()
        assert testimage.podman(podman_env, "ps", "-q", "--filter", f"id={cid}").stdout.strip()
        runner.stop()
        listing = testimage.podman(podman_env, "ps", "-a", "-q", "--filter", "name=motorcade-leadgen-api").stdout
        assert listing.strip() == ""
