"""Fixtures for the unit tests; the helpers behind them live in support.py."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from exporter import NodeExporter, start_node_exporter
from installtree import make_source
from support import FakeClock, FakeSystemctl, RawServer

import leadgen_watchdog as wd

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """`e2e guest: Debian 13.8, systemd 257, podman 5.4.2, python 3.13.5`, read from the guest tree (built
    first when it is not cached), when the e2e suites are part of the run."""
    ignored = [Path(path).resolve() for path in config.getoption("ignore") or []]
    args = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    if E2E in ignored or not any(arg == E2E or E2E in arg.parents or arg in E2E.parents for arg in args):
        return []
    sys.path.insert(0, str(E2E))
    import guest

    return [guest.header()]


@pytest.fixture(autouse=True)
def watchdog_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The watchdog reads this file instead of the host's /etc/motorcade-leadgen/watchdog.env.

    It holds LEADGEN_WATCHDOG_RETRY_INTERVAL=0 (one probe per run) so a test
    counts runs one probe at a time; retry tests pass --retry-interval. A
    test's runs follow each other within milliseconds, so MIN_OUTAGE=0 and
    RECOVERED_AFTER=0 (restart at the threshold, end an incident at the first
    healthy probe); the tests of those two rules pass the flags."""
    path = tmp_path / "watchdog.env"
    path.write_text(
        "LEADGEN_WATCHDOG_RETRY_INTERVAL=0\nLEADGEN_WATCHDOG_MIN_OUTAGE=0\nLEADGEN_WATCHDOG_RECOVERED_AFTER=0\n"
    )
    monkeypatch.setattr(wd, "ENV_FILE", str(path), raising=False)
    return path


@pytest.fixture(autouse=True)
def syslog_lines(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """What pause and resume send to the system log, recorded instead of sent."""
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(wd, "to_syslog", lambda priority, message: sent.append((priority, message)), raising=False)
    return sent


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSystemctl:
    fake = FakeSystemctl(tmp_path)
    monkeypatch.setenv("FAKE_SYSTEMCTL_CONTROL", str(fake.control))
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handle: Callable[[socket.socket], None]) -> RawServer:
        server = RawServer(handle)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[NodeExporter]:
    """The real prometheus-node-exporter on a free loopback port: yields (textfile_dir, metrics_url)."""
    with start_node_exporter(tmp_path / "textfile", tmp_path / "node_exporter.log") as running:
        yield running


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the project for install.sh to install from, so a test can ship a 'new version'."""
    return make_source(tmp_path / "src")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty scratch root for install.sh --root."""
    path = tmp_path / "root"
    path.mkdir()
    return path
