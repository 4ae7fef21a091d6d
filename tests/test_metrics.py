"""The node_exporter textfile (issue 10 part 2), read back through the real prometheus-node-exporter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from exporter import NodeExporter, promtool_check_metrics, scrape
from pytest_httpserver import HTTPServer
from support import HEALTH, FakeSystemctl

import leadgen_watchdog as wd

NAMES = [f"leadgen_watchdog_{name}" for name, _, _ in wd.METRICS]


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(f"leadgen_watchdog_{name}", frozenset(labels.items()))]


@pytest.fixture
def flags(httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path) -> list[str]:
    url = httpserver.url_for(HEALTH)
    return ["--url", url, "--systemctl", systemctl.path, "--state-file", str(tmp_path / "state.json")]


def serve(httpserver: HTTPServer, status: int) -> None:
    httpserver.clear_all_handlers()
    httpserver.expect_request(HEALTH).respond_with_data("x", status=status)


def test_every_run_publishes_the_named_metrics_through_node_exporter(
    node_exporter: NodeExporter, httpserver: HTTPServer, flags: list[str], systemctl: FakeSystemctl
) -> None:
    """Healthy, then three 503s and a restart, then a withheld restart: node_exporter serves each run's values."""
    prom = node_exporter.textfile_dir / "leadgen_watchdog.prom"
    run = ["run", *flags, "--metrics-file", str(prom), "--max-restarts", "1"]
    serve(httpserver, 200)
    assert wd.main(run, environ={}) == wd.OK
    samples = scrape(node_exporter.metrics_url)
    assert value(samples, "probe_success") == 1 and value(samples, "failure_threshold") == 3
    assert {value(samples, "restarts_total", result=r) for r in ("ok", "failed", "withheld")} == {0}
    assert value(samples, "last_restart_timestamp_seconds") == 0 and value(samples, "incident") == 0
    assert abs(value(samples, "last_run_timestamp_seconds") - wd.CLOCK.wall()) < 60
    serve(httpserver, 503)
    wd.main(run, environ={})
    assert value(scrape(node_exporter.metrics_url), "consecutive_failures") == 1
    wd.main(run, environ={})
    assert wd.main(run, environ={}) == wd.WARNING  # the third: restarted
    samples = scrape(node_exporter.metrics_url)
    assert value(samples, "restarts_total", result="ok") == 1 and value(samples, "probe_success") == 0
    assert value(samples, "last_restart_timestamp_seconds") > 0 and value(samples, "consecutive_failures") == 0
    for _ in range(3):
        code = wd.main(run, environ={})
    assert code == wd.CRITICAL  # the budget (1) withholds the second restart: a human is needed
    samples = scrape(node_exporter.metrics_url)
    assert value(samples, "restarts_total", result="withheld") == 1 and value(samples, "incident") == 1
    assert wd.main(["pause", "10m", *flags], environ={}) == wd.OK
    wd.main(run, environ={})
    assert value(scrape(node_exporter.metrics_url), "paused") == 1
    serve(httpserver, 200)
    wd.main(["resume", *flags], environ={})
    wd.main(run, environ={})
    samples = scrape(node_exporter.metrics_url)
    assert value(samples, "incident") == 0 and value(samples, "paused") == 0 and value(samples, "probe_success") == 1
    assert samples[("node_textfile_scrape_error", frozenset())] == 0


def test_metrics_file_passes_promtool_and_carries_no_timestamps(flags: list[str], tmp_path: Path) -> None:
    """HELP and TYPE for every metric, no sample timestamps, promtool check metrics clean, mode 0644."""
    prom = tmp_path / "leadgen_watchdog.prom"
    wd.main(["run", *flags, "--metrics-file", str(prom)], environ={})
    text = prom.read_text()
    assert promtool_check_metrics(text) == (0, "")
    for name in NAMES:
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(samples) == len(NAMES) + 2  # restarts_total has three series
    assert all(len(line.rsplit("}", 1)[-1].split()) == (1 if "}" in line else 2) for line in samples)
    assert oct(os.stat(prom).st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("leadgen_watchdog.prom.")] == []


def test_failed_metrics_write_is_logged_once_and_changes_nothing_else(
    httpserver: HTTPServer,
    flags: list[str],
    systemctl: FakeSystemctl,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A metrics path in a missing directory: one warning, the same exit codes, the restart still made."""
    prom = tmp_path / "missing" / "leadgen_watchdog.prom"
    serve(httpserver, 503)
    codes = [wd.main(["run", *flags, "--metrics-file", str(prom), "--threshold", "2"], environ={}) for _ in range(3)]
    assert codes == [wd.WARNING, wd.WARNING, wd.WARNING]
    assert len(systemctl.calls("restart")) == 1
    out = capsys.readouterr().out
    assert out.count("metrics not written") == 1
    (tmp_path / "missing").mkdir()
    wd.main(["run", *flags, "--metrics-file", str(prom)], environ={})
    assert "metrics written again" in capsys.readouterr().out and prom.exists()


def test_metrics_file_that_is_a_fifo_is_left_alone(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO at the metrics path is never replaced or opened; the run goes on."""
    prom = tmp_path / "leadgen_watchdog.prom"
    os.mkfifo(prom)
    assert wd.main(["run", *flags, "--metrics-file", str(prom)], environ={}) in (wd.WARNING, wd.OK)
    assert prom.is_fifo() and "metrics not written" in capsys.readouterr().out


@pytest.mark.parametrize("path", ["/tmp/x.txt", "relative.prom.tmp"])
def test_metrics_file_must_end_in_prom(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    """node_exporter reads only *.prom: anything else is a configuration error, exit 3."""
    assert wd.main(["check", "--metrics-file", path], environ={}) == wd.UNKNOWN
    assert "--metrics-file must end in .prom" in capsys.readouterr().err
