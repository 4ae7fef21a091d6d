"""The real Debian prometheus-node-exporter and promtool, for the metrics tests.

start_node_exporter() runs node_exporter's textfile collector alone on a free
loopback port; scrape() reads its /metrics back as {(name, labels): value};
promtool_check_metrics() lints exposition text. The node_exporter fixture in
conftest.py wraps start_node_exporter().
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PROMTOOL = "/usr/bin/promtool"
START_TIMEOUT = 10.0  # seconds for node_exporter to answer on its port
STOP_TIMEOUT = 5.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# One sample line: name, optional {labels}, value, optional timestamp.
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?$")
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
ESCAPE = re.compile(r'\\[\\"n]')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class NodeExporter(NamedTuple):
    """A running node_exporter: the textfile directory it reads, the URL of its /metrics."""

    textfile_dir: Path
    metrics_url: str


def require(path: str) -> None:
    """Skip without the tool; in CI (LEADGEN_REQUIRE_E2E=1) a missing tool is a failure."""
    if shutil.which(path) is None:
        reason = f"{path} not installed (Debian packages prometheus, prometheus-node-exporter)"
        if os.environ.get("LEADGEN_REQUIRE_E2E") == "1":
            pytest.fail(f"CI requires it: {reason}", pytrace=False)
        pytest.skip(reason)


def parse_samples(text: str) -> Samples:
    """Exposition-format sample lines as {(name, frozenset of (label, value)): value}."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a sample line: {line!r}")
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        samples[(name, parse_labels(labels, line))] = float(value)
    return samples


def parse_labels(text: str, line: str) -> frozenset[tuple[str, str]]:
    pairs = []
    pos = 0
    while pos < len(text):
        match = LABEL.match(text, pos)
        if match is None:
            raise ValueError(f"cannot parse the labels of: {line!r}")
        pairs.append((match.group(1), ESCAPE.sub(lambda m: UNESCAPE[m.group(0)], match.group(2))))
        pos = match.end()
    return frozenset(pairs)


def scrape(metrics_url: str, timeout: float = 5.0) -> Samples:
    """GET a /metrics page (no proxy: loopback only) and parse its samples."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(metrics_url, timeout=timeout) as response:
        return parse_samples(response.read().decode())


def promtool_check_metrics(text: str) -> tuple[int, str]:
    """`promtool check metrics` on exposition text: its exit code and what it printed."""
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        scrape(url, timeout=1.0)
    except (OSError, urllib.error.URLError):
        return False
    return True


@contextmanager
def start_node_exporter(textfile_dir: Path, log: Path) -> Iterator[NodeExporter]:
    """Run node_exporter with only the textfile collector on a free 127.0.0.1 port until the block ends.

    Waits until /metrics answers; a port taken between choosing and binding is
    retried with another. Stopped by its PID, never by name.
    """
    require(NODE_EXPORTER)
    textfile_dir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = free_loopback_port()
        argv = [
            NODE_EXPORTER,
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}",
        ]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and not answers(url):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node_exporter did not answer on {url} within {START_TIMEOUT}s: {log}")
                time.sleep(0.05)
            if proc.poll() is None:
                yield NodeExporter(textfile_dir, url)
                return
            if "address already in use" not in log.read_text():
                raise RuntimeError(f"node_exporter exited {proc.returncode}:\n{log.read_text()}")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    raise RuntimeError(f"node_exporter found no free port in 3 attempts:\n{log.read_text()}")
