"""The alert rules under the real promtool, and the node_exporter fixture under the real node_exporter."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import exporter
import pytest
import yaml
from exporter import PROMTOOL, NodeExporter, parse_samples, promtool_check_metrics, require, scrape

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "monitoring/leadgen-watchdog.rules.yml"
RULE_TESTS = REPO / "monitoring/leadgen-watchdog.rules.test.yml"

# Issue 10, part 3: the four alerts and their severities.
ALERTS = {
    "LeadgenApiUnhealthy": "warning",
    "LeadgenApiRestarted": "warning",
    "LeadgenHumanNeeded": "critical",
    "LeadgenWatchdogDown": "critical",
}

# A textfile as the watchdog writes it: every metric of issue 10, HELP and TYPE, no timestamps.
TEXTFILE = """\
# HELP leadgen_watchdog_probe_success 1 if the last probe was healthy, else 0.
# TYPE leadgen_watchdog_probe_success gauge
leadgen_watchdog_probe_success 0
# HELP leadgen_watchdog_probe_duration_seconds Latency of the last probe.
# TYPE leadgen_watchdog_probe_duration_seconds gauge
leadgen_watchdog_probe_duration_seconds 5.003
# HELP leadgen_watchdog_consecutive_failures The failure count after this run.
# TYPE leadgen_watchdog_consecutive_failures gauge
leadgen_watchdog_consecutive_failures 2
# HELP leadgen_watchdog_failure_threshold Consecutive counted failures that trigger a restart.
# TYPE leadgen_watchdog_failure_threshold gauge
leadgen_watchdog_failure_threshold 3
# HELP leadgen_watchdog_restarts_total Restarts done, failed, or withheld by the budget, since boot.
# TYPE leadgen_watchdog_restarts_total counter
leadgen_watchdog_restarts_total{result="ok"} 3
leadgen_watchdog_restarts_total{result="failed"} 0
leadgen_watchdog_restarts_total{result="withheld"} 1
# HELP leadgen_watchdog_last_restart_timestamp_seconds Wall time of the last restart attempt, 0 if none since boot.
# TYPE leadgen_watchdog_last_restart_timestamp_seconds gauge
leadgen_watchdog_last_restart_timestamp_seconds 1.7956e+09
# HELP leadgen_watchdog_paused 1 while paused.
# TYPE leadgen_watchdog_paused gauge
leadgen_watchdog_paused 0
# HELP leadgen_watchdog_incident 1 while a human is needed.
# TYPE leadgen_watchdog_incident gauge
leadgen_watchdog_incident 1
# HELP leadgen_watchdog_last_run_timestamp_seconds Wall time of this run.
# TYPE leadgen_watchdog_last_run_timestamp_seconds gauge
leadgen_watchdog_last_run_timestamp_seconds 1.79560003e+09
"""


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require(PROMTOOL)
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_cases() -> list[dict]:
    return [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]


def write_textfile(directory: Path, name: str, text: str) -> None:
    """As a textfile writer must: a temporary file in the same directory, then a rename."""
    tmp = directory / f"{name}.{os.getpid()}"
    tmp.write_text(text)
    tmp.rename(directory / name)


# The rules


def test_promtool_check_rules_accepts_every_rules_file() -> None:
    """`promtool check rules` (as CI runs it) finds the four rules and no problem."""
    files = sorted(str(path.relative_to(REPO)) for path in (REPO / "monitoring").glob("*.rules.yml"))
    assert files == ["monitoring/leadgen-watchdog.rules.yml"]
    proc = promtool("check", "rules", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


def test_promtool_test_rules_passes() -> None:
    """Every case in the rule tests passes under the real promtool."""
    proc = promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_severity_for_summary_and_description() -> None:
    """The four alerts of the issue, each with its severity, a for:, a summary and a description."""
    found = {rule["alert"]: rule for rule in rules()}
    assert {name: rule["labels"]["severity"] for name, rule in found.items()} == ALERTS
    for name, rule in found.items():
        assert re.fullmatch(r"[1-9]\d*m", rule.get("for", "")), f"{name}: for: {rule.get('for')!r}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name} has no summary"
        assert len(annotations.get("description", "")) > len(annotations["summary"]), f"{name} has no description"


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    """The rule tests load the rules file, and every alert has both kinds of case."""
    assert yaml.safe_load(RULE_TESTS.read_text())["rule_files"] == [RULES.name]
    cases = rule_cases()
    for name in ALERTS:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} has no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name} has no case where it stays quiet"
        for case in mine:
            for alert in case["exp_alerts"]:
                assert set(alert["exp_annotations"]) == {"summary", "description"}, f"{name} at {case['eval_time']}"


@pytest.mark.parametrize(
    ("old", "new", "caught_by"),
    [
        pytest.param(
            "max_over_time(leadgen_watchdog_probe_success[1m]) == 0",
            "leadgen_watchdog_probe_success == 0",
            "flapping API fires nothing",
            id="unhealthy-sees-only-the-evaluated-sample",
        ),
        pytest.param(
            "leadgen_watchdog_paused == 1\n        for: 1m",
            "leadgen_watchdog_paused == 1\n        for: 0m",
            "API down for 2 minutes fires LeadgenApiUnhealthy, not while paused",
            id="unhealthy-without-for",
        ),
        pytest.param(
            " unless leadgen_watchdog_paused == 1",
            "",
            "API down for 2 minutes fires LeadgenApiUnhealthy, not while paused",
            id="unhealthy-pages-while-paused",
        ),
        pytest.param(
            "increase(leadgen_watchdog_restarts_total",
            "changes(leadgen_watchdog_restarts_total",
            "a reboot resets the counters, which is not a restart",
            id="restarted-counts-a-reboot",
        ),
        pytest.param(
            '{result="ok"}',
            "",
            "a withheld restart fires LeadgenHumanNeeded, not LeadgenApiRestarted",
            id="restarted-counts-withheld",
        ),
        pytest.param(
            "leadgen_watchdog_incident == 1\n        for: 1m",
            "leadgen_watchdog_incident == 1\n        for: 0m",
            "an incident that ends within a minute does not page",
            id="human-needed-without-for",
        ),
        pytest.param(
            "\n          or absent(leadgen_watchdog_last_run_timestamp_seconds)",
            "",
            "a removed file fires LeadgenWatchdogDown once its series is gone",
            id="watchdog-down-without-absent",
        ),
        pytest.param(
            "time() - leadgen_watchdog_last_run_timestamp_seconds > 180\n          or ",
            "",
            "a stale file still served by node_exporter fires LeadgenWatchdogDown",
            id="watchdog-down-trusts-a-stale-file",
        ),
        pytest.param(
            '          summary: "Leadgen API on {{ $labels.instance }} needs a human"\n',
            "",
            "a withheld restart fires LeadgenHumanNeeded, not LeadgenApiRestarted",
            id="human-needed-loses-its-summary",
        ),
    ],
)
def test_rule_tests_fail_when_a_rule_is_broken(tmp_path: Path, old: str, new: str, caught_by: str) -> None:
    """Each mutation of the rules still loads, and the named case of the rule tests fails on it."""
    text = RULES.read_text()
    assert text.count(old) == 1, f"mutation target not found exactly once: {old!r}"
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path)
    assert promtool("check", "rules", str(tmp_path / RULES.name)).returncode == 0
    proc = promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert proc.returncode == 1
    assert f"name: {caught_by}," in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_docs_list_every_alert_with_its_severity() -> None:
    """docs/alerting.md's alert table names each alert with its severity."""
    doc = (REPO / "docs/alerting.md").read_text()
    section = re.split(r"\n##+ ", doc.split("\n## Alert rules\n", 1)[1], maxsplit=1)[0]
    for name, severity in ALERTS.items():
        assert re.search(rf"^\| `{name}` \| {severity} \|", section, re.MULTILINE), name
    assert "monitoring/leadgen-watchdog.rules.yml" in section


def test_docs_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    """docs/alerting.md's prometheus.yml passes `promtool check config` and loads the four rules."""
    section = (REPO / "docs/alerting.md").read_text().split("\n## Prometheus\n", 1)[1]
    config = next(block for block in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL) if "rule_files:" in block)
    assert "/etc/prometheus/rules/leadgen-watchdog.rules.yml" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/rules/leadgen-watchdog.rules.yml", str(RULES))
    )
    proc = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


# The node_exporter fixture and helpers


def test_node_exporter_serves_a_hand_written_textfile(node_exporter: NodeExporter) -> None:
    """A valid textfile dropped in the fixture's directory comes back through node_exporter, value for value."""
    textfile_dir, metrics_url = node_exporter
    assert promtool_check_metrics(TEXTFILE) == (0, "")
    before = scrape(metrics_url)
    assert not [key for key in before if key[0].startswith("leadgen_")]

    write_textfile(textfile_dir, "leadgen_watchdog.prom", TEXTFILE)
    samples = scrape(metrics_url)

    mine = {key: value for key, value in samples.items() if key[0].startswith("leadgen_")}
    assert mine == parse_samples(TEXTFILE)
    assert mine[("leadgen_watchdog_restarts_total", frozenset({("result", "withheld")}))] == 1
    assert mine[("leadgen_watchdog_last_run_timestamp_seconds", frozenset())] == 1.79560003e09
    assert samples[("node_textfile_scrape_error", frozenset())] == 0
    mtimes = [labels for name, labels in samples if name == "node_textfile_mtime_seconds"]
    assert [dict(labels)["file"] for labels in mtimes] in (
        ["leadgen_watchdog.prom"],
        [str(textfile_dir / "leadgen_watchdog.prom")],
    )


def test_node_exporter_reads_each_rewrite(node_exporter: NodeExporter) -> None:
    """A rewritten textfile is served with its new values on the next scrape."""
    textfile_dir, metrics_url = node_exporter
    write_textfile(textfile_dir, "leadgen_watchdog.prom", TEXTFILE)
    assert scrape(metrics_url)[("leadgen_watchdog_incident", frozenset())] == 1

    write_textfile(
        textfile_dir,
        "leadgen_watchdog.prom",
        TEXTFILE.replace("leadgen_watchdog_incident 1", "leadgen_watchdog_incident 0"),
    )
    assert scrape(metrics_url)[("leadgen_watchdog_incident", frozenset())] == 0


def test_node_exporter_reports_a_broken_textfile(node_exporter: NodeExporter) -> None:
    """A textfile that is not exposition format is dropped whole and flagged by node_textfile_scrape_error."""
    textfile_dir, metrics_url = node_exporter
    write_textfile(textfile_dir, "leadgen_watchdog.prom", "leadgen_watchdog_probe_success one\n")
    samples = scrape(metrics_url)
    assert samples[("node_textfile_scrape_error", frozenset())] == 1
    assert not [key for key in samples if key[0].startswith("leadgen_")]


def test_start_node_exporter_retries_a_taken_port_and_stops_its_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port taken before node_exporter binds it is retried with another; the process is gone after the block."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        choose = exporter.free_loopback_port
        monkeypatch.setattr(exporter, "free_loopback_port", lambda: next(ports, None) or choose())
        with exporter.start_node_exporter(tmp_path / "textfile", tmp_path / "node_exporter.log") as running:
            assert f":{taken}/" not in running.metrics_url
            assert exporter.answers(running.metrics_url)
        assert "address already in use" in (tmp_path / "node_exporter.log").read_text()
    assert not exporter.answers(running.metrics_url)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        pytest.param("leadgen_watchdog_paused 0\n", "no help text", id="no-help"),
        pytest.param(
            "# HELP leadgen_watchdog_restarts Restarts.\n# TYPE leadgen_watchdog_restarts counter\n"
            'leadgen_watchdog_restarts{result="ok"} 1\n',
            'counter metrics should have "_total" suffix',
            id="counter-without-total",
        ),
        pytest.param(
            "# HELP leadgen_watchdog_paused 1 while paused.\n# TYPE leadgen_watchdog_paused gauge\n"
            "leadgen_watchdog_paused\n",
            "error while linting",
            id="not-exposition-format",
        ),
    ],
)
def test_promtool_check_metrics_rejects_bad_textfiles(text: str, complaint: str) -> None:
    """The helper returns promtool's verdict: a textfile it cannot accept fails, with the reason."""
    require(PROMTOOL)
    rc, output = promtool_check_metrics(text)
    assert rc != 0
    assert complaint in output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("up 1\n", {("up", frozenset()): 1.0}, id="no-labels"),
        pytest.param(
            'x{a="1",b="two words"} 2.5e+09\n',
            {("x", frozenset({("a", "1"), ("b", "two words")})): 2.5e9},
            id="labels",
        ),
        pytest.param(
            'x{path="C:\\\\dir",quote="say \\"hi\\"",brace="}{",} -Inf 1700000000000\n',
            {("x", frozenset({("path", "C:\\dir"), ("quote", 'say "hi"'), ("brace", "}{")})): float("-inf")},
            id="escapes-trailing-comma-and-timestamp",
        ),
        pytest.param("# HELP x y\n# TYPE x gauge\n\n", {}, id="comments-only"),
    ],
)
def test_parse_samples(text: str, expected: dict) -> None:
    """Sample lines become {(name, frozenset(labels)): value}; escapes undone, comments ignored."""
    assert parse_samples(text) == expected


def test_parse_samples_refuses_garbage() -> None:
    """A line that is not a sample is an error, not a silently missing metric."""
    with pytest.raises(ValueError, match="cannot parse the labels"):
        parse_samples("x{a=1} 1\n")
