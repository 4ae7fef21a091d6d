"""The shipped rules and Alertmanager example, end to end, in the real Debian Prometheus and Alertmanager.

Three simulated hosts, each a real node_exporter serving a textfile the test
writes; one Prometheus scraping them with monitoring/leadgen-watchdog.rules.yml;
one Alertmanager with monitoring/alertmanager.example.yml whose two webhook
receivers point at an HTTP server in this test. Everything listens on
127.0.0.1 ports chosen free, and is stopped by the PID this test started.

What the test changes in the shipped files, so that it runs in about a minute:
every `for:` becomes 2 s, Alertmanager's group_wait 8 s and group_interval
3 s (they keep their relation: group_wait still exceeds the time between the
per-host and the fleet alert reaching Alertmanager, one evaluation here). The
expressions, labels, routes, inhibitions and receivers are the shipped ones.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pytest
from exporter import NodeExporter, free_loopback_port, require, start_node_exporter

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "monitoring/leadgen-watchdog.rules.yml"
AM_EXAMPLE = REPO / "monitoring/alertmanager.example.yml"
PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
HOSTS = ("web1", "web2", "web3")
SETTLE = 6.0  # seconds with no new notification: two group intervals and a scrape
WAIT = 40.0  # seconds an expected notification may take (for: 2s + evaluation + group_wait 8s, with slack)


class Notification(NamedTuple):
    receiver: str  # the path it was posted to: leadgen-page or leadgen-ticket
    status: str  # firing or resolved
    alerts: tuple[tuple[str, str, str], ...]  # (alertname, instance, status) of each alert in it


class Receiver:
    """A webhook endpoint that records every Alertmanager notification."""

    def __init__(self) -> None:
        self.received: list[Notification] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                alerts = tuple(
                    (a["labels"]["alertname"], a["labels"].get("instance", ""), a["status"]) for a in body["alerts"]
                )
                with owner.lock:
                    owner.received.append(Notification(self.path.strip("/"), body["status"], alerts))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def since(self, mark: int) -> list[Notification]:
        with self.lock:
            return list(self.received[mark:])

    def mark(self) -> int:
        with self.lock:
            return len(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def textfile(*, incident: int = 0, last_run: float, pause_end: float = 0.0, paused: int = 0) -> str:
    """A host's textfile as the watchdog writes it (the series the rules read)."""
    metrics = [
        ("probe_success", "gauge", "", 1),
        ("restarts_total", "counter", '{result="ok"}', 0),
        ("restarts_total", "counter", '{result="failed"}', 0),
        ("restarts_total", "counter", '{result="withheld"}', 0),
        ("paused", "gauge", "", paused),
        ("incident", "gauge", "", incident),
        ("pause_end_timestamp_seconds", "gauge", "", round(pause_end, 3)),
        ("last_run_timestamp_seconds", "gauge", "", round(last_run, 3)),
    ]
    out, seen = [], set()
    for name, kind, labels, value in metrics:
        full = f"leadgen_watchdog_{name}"
        if full not in seen:
            out.append(f"# HELP {full} {name}.\n# TYPE {full} {kind}\n")
            seen.add(full)
        out.append(f"{full}{labels} {value}\n")
    return "".join(out)


def write(exporter: NodeExporter, text: str) -> None:
    """Atomically, as the watchdog does: node_exporter never reads half a file."""
    tmp = exporter.textfile_dir / "leadgen.prom.tmp"
    tmp.write_text(text)
    tmp.rename(exporter.textfile_dir / "leadgen.prom")


def fast_rules(directory: Path) -> Path:
    """The shipped rules with every `for:` at 2 s."""
    text, count = re.subn(r"^(\s+for:) \d+m$", r"\1 2s", RULES.read_text(), flags=re.MULTILINE)
    assert count == 5
    path = directory / RULES.name
    path.write_text(text)
    return path


def test_alertmanager_config(directory: Path, receiver_url: str) -> Path:
    """The shipped example with its webhook URLs on the test's receiver and short group timers."""
    text = AM_EXAMPLE.read_text()
    for name in ("leadgen-page", "leadgen-ticket"):
        text, count = re.subn(rf"url: https://\S+/{name}$", f"url: {receiver_url}/{name}", text, flags=re.MULTILINE)
        assert count == 1, name
    # group_wait keeps the shipped relation to the scrape and evaluation intervals (30 s to 30 s): it must
    # exceed the lag between two hosts' alerts reaching Alertmanager, which a loaded machine stretches.
    for key, value in (("group_wait", "8s"), ("group_interval", "3s")):
        text, count = re.subn(rf"^(\s+{key}:) \S+$", rf"\1 {value}", text, flags=re.MULTILINE)
        assert count == 1, key
    path = directory / "alertmanager.yml"
    path.write_text(text)
    return path


test_alertmanager_config.__test__ = False  # a helper, not a test


def prometheus_config(directory: Path, rules: Path, am_port: int, exporters: dict[str, NodeExporter]) -> Path:
    targets = "".join(
        f"      - targets: ['{urllib.parse.urlsplit(e.metrics_url).netloc}']\n        labels: {{instance: {host}}}\n"
        for host, e in exporters.items()
    )
    path = directory / "prometheus.yml"
    path.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{rules}']\n"
        f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
        f"scrape_configs:\n  - job_name: node\n    static_configs:\n{targets}"
    )
    return path


def get(url: str, timeout: float = 2.0) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read()


@contextlib.contextmanager
def running(argv: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until ready_url answers; stop it by its PID afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited {proc.returncode}:\n{log.read_text()}")
            try:
                get(ready_url, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} not ready in 30 s:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(what: str, predicate: Callable[[], object], timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def pages(notes: list[Notification]) -> list[Notification]:
    return [n for n in notes if n.receiver == "leadgen-page"]


class Stack(NamedTuple):
    hosts: dict[str, NodeExporter]
    receiver: Receiver
    prometheus_url: str
    set_host: Callable[..., None]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    for tool in (PROMETHEUS, ALERTMANAGER):
        require(tool)
    receiver = Receiver()
    with contextlib.ExitStack() as stop:
        stop.callback(receiver.close)
        hosts = {
            host: stop.enter_context(start_node_exporter(tmp_path / host, tmp_path / f"{host}.node_exporter.log"))
            for host in HOSTS
        }

        def set_host(host: str, **values: float) -> None:
            write(hosts[host], textfile(**{"last_run": time.time(), **values}))

        for host in HOSTS:
            set_host(host)
        am_port, prom_port = free_loopback_port(), free_loopback_port()
        am_config = test_alertmanager_config(tmp_path, receiver.url)
        am_url = f"http://127.0.0.1:{am_port}"
        stop.enter_context(
            running(
                [
                    ALERTMANAGER,
                    f"--config.file={am_config}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                f"{am_url}/-/ready",
                tmp_path / "alertmanager.log",
            )
        )
        # Prometheus starts with no rules and gets them once it has scraped every host: rules evaluated
        # before the first scrape would see no series and fire absent() (a 2 s `for:` is shorter than a
        # loaded machine's first scrape), and its resolve would ride along in a later page.
        rules = tmp_path / RULES.name
        rules.write_text("groups: []\n")
        prom_config = prometheus_config(tmp_path, rules, am_port, hosts)
        prom_url = f"http://127.0.0.1:{prom_port}"
        stop.enter_context(
            running(
                [
                    PROMETHEUS,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--web.enable-lifecycle",
                ],
                f"{prom_url}/-/ready",
                tmp_path / "prometheus.log",
            )
        )

        def scraped() -> bool:
            query = urllib.parse.quote("count(leadgen_watchdog_last_run_timestamp_seconds)")
            result = json.loads(get(f"{prom_url}/api/v1/query?query={query}"))["data"]["result"]
            return bool(result) and result[0]["value"][1] == str(len(HOSTS))

        wait_for("Prometheus to scrape every host", scraped)
        fast_rules(tmp_path)
        reload = urllib.request.Request(f"{prom_url}/-/reload", method="POST")
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(reload, timeout=10).close()

        def loaded() -> bool:
            groups = json.loads(get(f"{prom_url}/api/v1/rules"))["data"]["groups"]
            return sum(len(group["rules"]) for group in groups) == 5

        wait_for("Prometheus to load the rules", loaded)
        yield Stack(hosts, receiver, prom_url, set_host)


def settle(receiver: Receiver, mark: int) -> list[Notification]:
    """Wait until no new notification has come for SETTLE seconds; everything since mark."""
    count, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < SETTLE:
        now = len(receiver.since(mark))
        if now != count:
            count, quiet_since = now, time.monotonic()
        time.sleep(0.2)
    return receiver.since(mark)


def test_one_page_per_incident_one_for_a_fleet_none_while_paused_and_a_resolve(stack: Stack) -> None:
    """Through the real Prometheus and Alertmanager: one page per incident, not per host; none for a pause."""
    receiver, set_host = stack.receiver, stack.set_host
    started = time.monotonic()
    assert settle(receiver, 0) == [], "a healthy fleet notifies nobody"

    # One host's incident: one page naming it; its recovery: one resolve.
    mark = receiver.mark()
    set_host("web1", incident=1)
    wait_for("the page for web1", lambda: pages(receiver.since(mark)))
    set_host("web1", incident=0)
    wait_for("the resolve for web1", lambda: [n for n in pages(receiver.since(mark)) if n.status == "resolved"])
    assert pages(settle(receiver, mark)) == [
        Notification("leadgen-page", "firing", (("LeadgenHumanNeeded", "web1", "firing"),)),
        Notification("leadgen-page", "resolved", (("LeadgenHumanNeeded", "web1", "resolved"),)),
    ]

    # Two hosts at once: one page, the fleet's; the per-host pages are inhibited.
    mark = receiver.mark()
    set_host("web2", incident=1)
    set_host("web3", incident=1)
    wait_for("the fleet page", lambda: pages(receiver.since(mark)))
    fleet_pages = pages(settle(receiver, mark))
    assert fleet_pages == [Notification("leadgen-page", "firing", (("LeadgenFleetDegraded", "", "firing"),))]
    set_host("web2", incident=0)
    set_host("web3", incident=0)
    wait_for("the fleet's resolve", lambda: [n for n in pages(receiver.since(mark)) if n.status == "resolved"])
    assert pages(settle(receiver, mark)) == [
        *fleet_pages,
        Notification("leadgen-page", "resolved", (("LeadgenFleetDegraded", "", "resolved"),)),
    ]

    # web1 paused on purpose, then its timer stopped; web2's timer dies. Same
    # staleness, same window: web2 pages, web1 does not (nor is it a fleet).
    mark = receiver.mark()
    now = time.time()
    set_host("web1", last_run=now - 1000, pause_end=now + 3600, paused=1)
    set_host("web2", last_run=now - 1000)
    wait_for("the page for web2's dead watchdog", lambda: pages(receiver.since(mark)))
    paused_window = pages(settle(receiver, mark))
    assert paused_window == [Notification("leadgen-page", "firing", (("LeadgenWatchdogDown", "web2", "firing"),))]
    set_host("web2")
    wait_for("web2's resolve", lambda: [n for n in pages(receiver.since(mark)) if n.status == "resolved"])
    assert pages(settle(receiver, mark)) == [
        *paused_window,
        Notification("leadgen-page", "resolved", (("LeadgenWatchdogDown", "web2", "resolved"),)),
    ]
    print(f"alert e2e: {time.monotonic() - started:.1f}s after the stack was up")
