"""The node_exporter textfile (issue 10 part 2), read back through the real prometheus-node-exporter."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from exporter import NodeExporter, promtool_check_metrics, scrape
from pytest_httpserver import HTTPServer
from support import HEALTH, FakeClock, FakeSystemctl
from werkzeug import Response

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
    assert len(samples) == len(NAMES) + 3  # restarts_total has four series
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


RULES_TEST = Path(wd.__file__).parent / "monitoring" / "leadgen-watchdog.rules.test.yml"
FLAPPING_CASE = "a flapping API the budget stopped restarting stays one incident (the watchdog's own series)"


def read_textfile(path: Path) -> dict[str, float]:
    """'name{labels}' -> value of one textfile."""
    samples = {}
    for text in path.read_text().splitlines():
        if text and not text.startswith("#"):
            name, number = text.rsplit(" ", 1)
            samples[name.replace("leadgen_watchdog_", "")] = float(number)
    return samples


def flapping_episode(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, **flags: str
) -> tuple[list[int], list[dict[str, float]]]:
    """A real server answering 503, 503, 200 in a loop for 12 minutes, then 200; a run every 30 s with
    threshold 2 and a budget of 1. Returns every run's exit code and textfile."""
    cycle = itertools.cycle([503, 503, 200])
    answers = [next(cycle) for _ in range(24)]
    queue = iter(answers)
    httpserver.expect_request(HEALTH).respond_with_handler(lambda _: Response("x", status=next(queue, 200)))
    prom = tmp_path / "leadgen.prom"
    base = {"url": httpserver.url_for(HEALTH), "systemctl": systemctl.path, "state_file": str(tmp_path / "s.json")}
    options = {"threshold": "2", "max_restarts": "1", "retry_interval": "0", "metrics_file": str(prom)}
    cfg = wd.build_config({**base, **options, **flags}, {})
    clock = FakeClock()
    codes, files = [], []
    for _ in range(len(answers) + 6):
        codes.append(wd.run_once(cfg, wd.Log(journal=False, verbose=False), clock=clock, boot=("b", 0.0)))
        files.append(read_textfile(prom))
        clock.advance(30)
    return codes, files


def test_a_flapping_api_pages_once_per_remind_and_stays_one_incident(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path
) -> None:
    """Rule 3: 503, 503, 200 in a loop (threshold 2, budget 1) pages (exit 2) once in 12 minutes, not once per
    mini-incident; the incident gauge stays 1 until the API has been healthy for --recovered-after (60 s)."""
    codes, files = flapping_episode(httpserver, systemctl, tmp_path, min_outage="0", recovered_after="60s")
    assert codes.count(wd.CRITICAL) == 1
    assert len(systemctl.calls("restart")) == 1
    incident = [int(f["incident"]) for f in files]
    first = incident.index(1)
    last = len(incident) - 1 - incident[::-1].index(1)
    assert incident[first : last + 1] == [1] * (last + 1 - first)  # never 0 in between
    healthy_since = 23  # the last 200 of the loop, followed by steady 200s
    assert last == healthy_since + 1 and incident[-1] == 0  # ends at the third healthy run: 60 s of health


def test_the_flapping_promtool_case_is_fed_what_the_watchdog_writes(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path
) -> None:
    """Rule 3: the promtool case that proves LeadgenHumanNeeded fires through a flapping episode holds the
    series this watchdog really writes for that episode (regenerate them from this test if it changes)."""
    _, files = flapping_episode(httpserver, systemctl, tmp_path, min_outage="0", recovered_after="60s")
    case = RULES_TEST.read_text().split(f"- name: {FLAPPING_CASE}", 1)[1].split("\n  - name:", 1)[0]
    for name in ("probe_success", "incident", "consecutive_failures", 'restarts_total{result="withheld"}'):
        values = " ".join(f"{f[name]:g}" for f in files)
        assert f"values: '{values}'" in case, (name, values)


def test_every_restart_attempt_is_in_exactly_one_metric_series(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path
) -> None:
    """Rule 11: a restart whose run was killed after the write-ahead is counted result="unknown" by the next
    run; with the ones that worked or failed, every attempt in the budget is in exactly one series."""
    serve(httpserver, 503)
    state, prom = tmp_path / "state.json", tmp_path / "leadgen.prom"
    cfg = wd.build_config({"state_file": str(state), "threshold": "1", "min_outage": "0"}, {})
    boot = wd.this_boot(wd.CLOCK)
    unit = wd.UnitStatus("loaded", "active", "running", 1.0, "invocation-1")
    failed = wd.CheckResult(False, "status", "HTTP 503", 503)
    intent = wd.decide(wd.State(boot_id=boot[0], boot_time=boot[1]), failed, unit, cfg, wd.CLOCK.monotonic(), 1.0)
    wd.save_state(str(state), intent.state)  # ... and here the run was killed
    flags = ["--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, "--state-file", str(state)]
    run = ["run", *flags, "--metrics-file", str(prom), "--threshold", "1"]
    assert wd.main(run, environ={}) == wd.WARNING  # restarted, and the killed one counted
    systemctl.behave("restart", rc=1, stderr="Job for motorcade-leadgen-api.service failed.")
    assert wd.main(run, environ={}) == wd.CRITICAL
    samples = read_textfile(prom)
    counts = {r: samples[f'restarts_total{{result="{r}"}}'] for r in ("ok", "failed", "unknown")}
    assert counts == {"ok": 1, "failed": 1, "unknown": 1}
    assert sum(counts.values()) == len(json.loads(state.read_text())["restarts"]) == 3


class SteppedClock(FakeClock):
    """A FakeClock whose wall clock can be stepped (NTP after a stale RTC) while the monotonic one runs on."""

    step = 0.0

    def wall(self) -> float:
        return super().wall() + self.step


@pytest.mark.parametrize("step", [-86400.0 * 365, 7200.0])
def test_the_pause_end_follows_a_wall_clock_step(
    httpserver: HTTPServer,
    systemctl: FakeSystemctl,
    tmp_path: Path,
    step: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pause ends on the monotonic clock. After the wall clock steps, the published end is the new wall
    time plus what is left, never the wall time stored at `pause` (a year in the past after a step back
    would read as "no pause", and LeadgenWatchdogDown would page during a deliberate pause)."""
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    prom = tmp_path / "leadgen.prom"
    options = {"url": httpserver.url_for(HEALTH), "systemctl": systemctl.path, "metrics_file": str(prom)}
    cfg = wd.build_config({**options, "state_file": str(tmp_path / "s.json")}, {})
    clock, log = SteppedClock(), wd.Log(journal=False, verbose=False)
    assert wd.run_once(cfg, log, clock=clock, boot=wd.this_boot(clock)) == wd.OK
    assert wd.set_pause(cfg, 3600, log, clock=clock) == wd.OK
    capsys.readouterr()
    clock.advance(600)
    clock.step = step
    assert wd.run_once(cfg, log, clock=clock, boot=wd.this_boot(clock)) == wd.OK
    metrics = read_textfile(prom)
    assert metrics["paused"] == 1
    assert metrics["pause_end_timestamp_seconds"] == pytest.approx(clock.wall() + 3000, abs=0.01)
    assert metrics["last_run_timestamp_seconds"] == pytest.approx(clock.wall(), abs=0.01)
    assert wd.show_status(cfg, as_json=True, clock=clock) == wd.OK  # and `status` says the same end
    report = json.loads(capsys.readouterr().out)
    assert report["paused_until"] == pytest.approx(clock.wall() + 3000, abs=0.01)
    assert [p["until"] for p in report["pauses"]] == [pytest.approx(clock.wall() + 3000, abs=0.01)]
