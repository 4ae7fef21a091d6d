"""The operator's commands (check, status) and the journald line format, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import HEALTH, FakeSystemctl

import leadgen_watchdog as wd

SCRIPT = str(Path(wd.__file__))


def test_check_healthy_is_ok_and_writes_nothing(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check: exit 0, a verdict with status, latency and body, and no state file."""
    httpserver.expect_request(HEALTH).respond_with_data('{"status":"ok"}')
    state = tmp_path / "state.json"
    assert wd.main(["check", "--url", httpserver.url_for(HEALTH), "--state-file", str(state)], environ={}) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: health check passed status=200 latency=")
    assert 'body="{\\"status\\":\\"ok\\"}"' in out
    assert not state.exists() and not Path(str(state) + ".lock").exists()


def test_check_unhealthy_is_critical_and_never_restarts(
    httpserver: HTTPServer, systemctl: FakeSystemctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """check on a 503: exit 2, the reason shown, systemctl never called."""
    httpserver.expect_request(HEALTH).respond_with_data("down", status=503)
    argv = ["check", "--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, "--threshold", "1"]
    assert wd.main(argv, environ={}) == wd.CRITICAL
    out = capsys.readouterr().out
    assert out.startswith('CRITICAL: health check failed reason=status detail="HTTP 503"')
    assert systemctl.calls() == []


def test_status_reads_state_without_probing(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status after two failures: failures 2/3 and the reason, in text and JSON, no request made."""
    httpserver.expect_request(HEALTH).respond_with_data("down", status=503)
    common = ["--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path]
    common += ["--state-file", str(tmp_path / "state.json")]
    wd.main(["run", *common], environ={})
    wd.main(["run", *common], environ={})
    httpserver.clear_log()
    capsys.readouterr()
    assert wd.main(["status", *common], environ={}) == 0
    text = capsys.readouterr().out
    assert "failures:     2/3" in text and "reason=status HTTP 503" in text and "paused:       no" in text
    assert wd.main(["status", "--json", *common], environ={}) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["failures"], report["threshold"], report["last_check"]["reason"]) == (2, 3, "status")
    assert report["restarts_in_window"] == 0
    assert len(httpserver.log) == 0


def test_status_without_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status before the first run says so and exits 0."""
    assert wd.main(["status", "--state-file", str(tmp_path / "state.json")], environ={}) == 0
    assert "no state at" in capsys.readouterr().out


def test_status_shows_a_pause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pause shows with its end and time left."""
    state = ["--state-file", str(tmp_path / "state.json")]
    assert wd.main(["pause", "15m", *state], environ={}) == 0
    capsys.readouterr()
    wd.main(["status", *state], environ={})
    assert "paused:       yes, until" in capsys.readouterr().out


def run_script(args: list[str], stdout_path: Path, journal: bool) -> str:
    """Run the script as systemd would, stdout to a file; JOURNAL_STREAM names it or not."""
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    with open(stdout_path, "w") as out:
        info = os.fstat(out.fileno())
        if journal:
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        else:
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino + 1}"  # another stream: not ours
        subprocess.run([sys.executable, SCRIPT, *args], stdout=out, env=env, timeout=30)
    return stdout_path.read_text()


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "terminal"])
def test_priority_prefixes_only_when_stdout_is_the_journal(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, journal: bool
) -> None:
    """Failure lines carry <4>, restarts <3>, in the journal; plain lines elsewhere."""
    httpserver.expect_request(HEALTH).respond_with_data("down", status=503)
    args = ["run", "--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, "--threshold", "1"]
    args += ["--state-file", str(tmp_path / "state.json")]
    lines = run_script(args, tmp_path / "out.txt", journal).splitlines()
    failure = next(line for line in lines if "health check failed" in line)
    restart = next(line for line in lines if "restarting unit" in line)
    if journal:
        assert failure.startswith("<4>health check failed")
        assert restart.startswith("<3>restarting unit")
        assert all(line[:3] in ("<2>", "<3>", "<4>", "<5>", "<6>") for line in lines)
    else:
        assert failure.startswith("health check failed") and restart.startswith("restarting unit")


def test_status_shows_an_open_incident_and_the_limits_the_last_run_used(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a withheld restart: status says a human is needed and when the alert went out; other limits noted."""
    httpserver.expect_request(HEALTH).respond_with_data("down", status=503)
    flags = ["--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path]
    flags += ["--state-file", str(tmp_path / "state.json"), "--retry-interval", "0"]
    assert wd.main(["run", *flags, "--threshold", "1", "--max-restarts", "0"], environ={}) == wd.CRITICAL
    capsys.readouterr()
    wd.main(["status", *flags], environ={})
    out = capsys.readouterr().out
    assert "incident:     open since" in out and "a human is needed, last alert" in out
    assert "the last run used threshold 1 and budget 0" in out
    wd.main(["status", "--json", *flags], environ={})
    report = json.loads(capsys.readouterr().out)
    assert report["incident"] is True and report["human_needed"] is True and report["last_alert"]
    assert report["limits_used"]["threshold"] == 1 and report["restarts_total"]["withheld"] == 1


def status_json(flags: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert wd.main(["status", "--json", *flags], environ={}) == wd.OK
    return json.loads(capsys.readouterr().out)


def test_pauses_have_owners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule 6: a pause never shortens a longer one in force; install.sh's resume ends only its own pause;
    the operator's resume ends all of them and names them; status lists every pause with owner and end."""
    flags = ["--state-file", str(tmp_path / "state.json")]
    assert wd.main(["pause", "2h", *flags], environ={}) == wd.OK
    assert wd.main(["pause", "--owner", "install.sh", "10m", *flags], environ={}) == wd.OK
    assert wd.main(["pause", "10m", *flags], environ={}) == wd.OK  # the operator's 2h is kept
    assert "its longer pause in force is kept" in capsys.readouterr().out
    report = status_json(flags, capsys)
    assert report["paused"] and report["paused_for"] > 7000
    assert [(p["owner"], round(p["for"], -2)) for p in report["pauses"]] == [("operator", 7200), ("install.sh", 600)]
    assert wd.main(["resume", "--owner", "install.sh", *flags], environ={}) == wd.OK
    assert "still paused by operator until" in capsys.readouterr().out
    report = status_json(flags, capsys)
    assert report["paused"] and report["paused_for"] > 7000
    assert [p["owner"] for p in report["pauses"]] == ["operator"]
    assert wd.main(["pause", "--owner", "install.sh", "3h", *flags], environ={}) == wd.OK
    capsys.readouterr()
    assert wd.main(["status", *flags], environ={}) == wd.OK
    out = capsys.readouterr().out
    assert "  by install.sh: until" in out and "  by operator: until" in out
    assert wd.main(["resume", *flags], environ={}) == wd.OK
    said = capsys.readouterr().out
    assert "ended the pauses of install.sh (until" in said and ", operator (until" in said
    report = status_json(flags, capsys)
    assert not report["paused"] and report["pauses"] == []


@pytest.mark.parametrize("owner", ["", "Install", "../x", "a" * 33, "-x", "in stall"])
def test_a_bad_pause_owner_is_one_line_and_exit_3(
    tmp_path: Path, owner: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule 6: --owner is a short token; anything else is refused before any file is written."""
    flags = ["--state-file", str(tmp_path / "state.json")]
    assert wd.main(["pause", f"--owner={owner}", "5m", *flags], environ={}) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--owner must be" in err
    assert not (tmp_path / "state.json.pause").exists()


def test_pause_and_resume_write_the_pause_end_to_the_metrics_file(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path
) -> None:
    """Metrics interface: pause and resume rewrite the textfile with the pause's end (0 after resume), so a
    pause followed by `systemctl stop` of the timer leaves a sample saying "off on purpose until then"."""
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    prom = tmp_path / "leadgen.prom"
    flags = ["--state-file", str(tmp_path / "state.json"), "--metrics-file", str(prom)]
    run = ["run", "--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, *flags]
    assert wd.main(run, environ={}) == wd.OK
    last_run = [t for t in prom.read_text().splitlines() if t.startswith("leadgen_watchdog_last_run_")]
    assert "leadgen_watchdog_pause_end_timestamp_seconds 0\n" in prom.read_text()
    assert wd.main(["pause", "1h", *flags], environ={}) == wd.OK
    text = prom.read_text()
    end = float(next(t for t in text.splitlines() if t.startswith("leadgen_watchdog_pause_end_")).split()[1])
    assert abs(end - (wd.CLOCK.wall() + 3600)) < 60 and "leadgen_watchdog_paused 1\n" in text
    assert [t for t in text.splitlines() if t.startswith("leadgen_watchdog_last_run_")] == last_run  # no run
    assert wd.main(["resume", *flags], environ={}) == wd.OK
    text = prom.read_text()
    assert "leadgen_watchdog_pause_end_timestamp_seconds 0\n" in text and "leadgen_watchdog_paused 0\n" in text
    assert wd.main(["pause", "5m", *flags], environ={}) == wd.OK
    assert wd.main(run, environ={}) == wd.OK  # every run writes it too
    assert "leadgen_watchdog_pause_end_timestamp_seconds 0\n" not in prom.read_text()


def test_help_ends_with_where_the_docs_are(capsys: pytest.CaptureFixture[str]) -> None:
    """`leadgen-watchdog --help` ends naming the installed docs: the settings page whole, then README.md."""
    with pytest.raises(SystemExit):
        wd.main(["--help"], environ={})
    out = capsys.readouterr().out
    assert f"{wd.DOC_DIR}/docs/configuration.md" in out
    assert out.rstrip().endswith("README.md beside them.")
