"""One `run` cycle: counting, grace, InvocationID, operator stops, pause, budget, state."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import HEALTH, FakeClock, FakeSystemctl

import leadgen_watchdog as wd


@pytest.fixture
def api(httpserver: HTTPServer):
    """Switch the health endpoint between answers."""

    def serve(status: int = 200, body: str = '{"status":"ok"}') -> None:
        httpserver.clear_all_handlers()
        httpserver.expect_request(HEALTH).respond_with_data(body, status=status)

    serve()
    return serve


@pytest.fixture
def argv(httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path) -> list[str]:
    return [
        "--url",
        httpserver.url_for(HEALTH),
        "--systemctl",
        systemctl.path,
        "--retry-interval",
        "0",
        "--state-file",
        str(tmp_path / "state.json"),
        "--grace",
        "60",
    ]


def run(argv: list[str], *extra: str) -> int:
    return wd.main(["run", *argv, *extra], environ={})


def saved(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state.json").read_text())


def test_third_consecutive_503_triggers_exactly_one_restart(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Failures 1 and 2 are counted; the third restarts once; the count starts over."""
    api(503)
    codes = []
    for expected_failures in (1, 2):
        codes.append(run(argv))
        assert saved(tmp_path)["failures"] == expected_failures
        assert systemctl.calls("restart") == []
    codes.append(run(argv))
    assert codes == [wd.WARNING, wd.WARNING, wd.WARNING]
    assert systemctl.calls("restart") == [["restart", "motorcade-leadgen-api.service"]]
    assert saved(tmp_path)["failures"] == 0
    out = capsys.readouterr().out
    assert "failures=2/3" in out and "failures=3/3" in out
    assert "+ " + systemctl.path + " restart motorcade-leadgen-api.service" in out
    assert "restart done" in out


def test_flapping_api_never_restarts(api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path) -> None:
    """fail, ok, fail, ok ... never reaches the threshold."""
    for _ in range(4):
        api(503)
        assert run(argv) == wd.WARNING
        api(200)
        assert run(argv) == wd.OK
    assert systemctl.calls("restart") == []
    assert saved(tmp_path)["failures"] == 0


def test_recovery_is_logged_with_its_duration(api, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A healthy probe after failures logs the recovery; a steady healthy state logs nothing."""
    api(503)
    run(argv)
    api(200)
    capsys.readouterr()
    assert run(argv) == wd.OK
    out = capsys.readouterr().out
    assert out.startswith("health check recovered") and "failures=1" in out and "after=" in out
    assert run(argv) == wd.OK
    assert capsys.readouterr().out == ""
    assert run(argv, "--verbose") == wd.OK
    assert "health check ok" in capsys.readouterr().out


def test_grace_after_activation_does_not_count(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A unit active for less than --grace by systemd's clock is starting up: not counted."""
    api(503)
    just_now = int(time.monotonic() * 1e6) - 5_000_000
    systemctl.set_unit(ActiveEnterTimestampMonotonic=str(just_now))
    for _ in range(4):
        assert run(argv) == wd.WARNING
    assert saved(tmp_path)["failures"] == 0
    assert systemctl.calls("restart") == []
    assert "not counted: starting up: active for 5s of 1m grace" in capsys.readouterr().out
    assert run(argv[:-2], "--grace", "3") == wd.WARNING
    assert saved(tmp_path)["failures"] == 1


def test_new_invocation_id_starts_the_count_over(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone restarted the unit between failures: the old count no longer applies."""
    api(503)
    run(argv)
    run(argv)
    systemctl.set_unit(InvocationID="invocation-2")
    run(argv)
    assert saved(tmp_path)["failures"] == 1
    assert systemctl.calls("restart") == []
    assert "new InvocationID" in capsys.readouterr().out


@pytest.mark.parametrize("active_state", ["inactive", "activating", "deactivating", "reloading"])
def test_operator_stop_and_transitions_are_left_alone(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, active_state: str
) -> None:
    """A stopped or changing unit is never counted or restarted."""
    api(503)
    systemctl.set_unit(ActiveState=active_state, SubState="dead")
    for _ in range(5):
        assert run(argv) == wd.WARNING
    assert systemctl.calls("restart") == []
    assert saved(tmp_path)["failures"] == 0
    assert saved(tmp_path)["last_check"]["note"].startswith("unit is")


def test_failed_unit_is_reset_then_restarted(api, argv: list[str], systemctl: FakeSystemctl) -> None:
    """A unit systemd gave up on (start-limit-hit) is counted, reset-failed, then restarted."""
    api(503)
    systemctl.set_unit(ActiveState="failed", SubState="failed")
    for _ in range(3):
        run(argv)
    verbs = [call[0] for call in systemctl.calls() if call[0] != "show"]
    assert verbs == ["reset-failed", "restart"]


def test_unknown_unit_is_a_configuration_error(
    api, argv: list[str], systemctl: FakeSystemctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """LoadState=not-found: exit 3 with a line naming the unit."""
    api(503)
    systemctl.set_unit(LoadState="not-found")
    assert run(argv) == wd.UNKNOWN
    assert "'motorcade-leadgen-api.service' not found" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("verb", "active_state", "rc", "stderr"),
    [
        pytest.param("restart", "active", 1, "Job for motorcade-leadgen-api.service failed.", id="restart-failed"),
        pytest.param("restart", "active", 4, "Failed to restart motorcade-leadgen-api.service: Access denied",
                     id="polkit-denied"),
        pytest.param("restart", "active", 1, "Failed to connect to bus: No such file or directory", id="dbus-error"),
        pytest.param("reset-failed", "failed", 1, "Failed to reset failed state: Access denied",
                     id="reset-failed-failed"),
    ],
)  # fmt: skip
def test_a_refused_restart_does_not_block_the_next_one(
    api,
    argv: list[str],
    systemctl: FakeSystemctl,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verb: str,
    active_state: str,
    rc: int,
    stderr: str,
) -> None:
    """Rule 2: a restart systemd refused or failed costs budget and pages once; the next streak on the same
    activation (InvocationID unchanged) tries again within the budget, and nothing claims "already restarted"."""
    api(503)
    systemctl.set_unit(ActiveState=active_state)
    systemctl.behave(verb, rc=rc, stderr=stderr)
    assert [run(argv) for _ in range(3)] == [wd.WARNING, wd.WARNING, wd.CRITICAL]
    assert saved(tmp_path)["failures"] == 0
    assert saved(tmp_path)["last_restart"]["ok"] is False
    assert saved(tmp_path)["human_needed"] is True
    assert stderr in capsys.readouterr().out
    assert [run(argv) for _ in range(3)] == [wd.WARNING, wd.WARNING, wd.WARNING]  # alerted: a reminder is not due
    assert len(systemctl.calls(verb)) == 2  # the same activation, tried again
    assert len(saved(tmp_path)["restarts"]) == 2 and saved(tmp_path)["restarts_failed"] == 2
    out = capsys.readouterr().out
    assert "already restarted" not in out and "restart failed" in out
    assert [run(argv) for _ in range(3)] == [wd.WARNING, wd.WARNING, wd.WARNING]
    assert len(systemctl.calls(verb)) == 3
    assert [run(argv) for _ in range(3)] == [wd.WARNING, wd.WARNING, wd.WARNING]  # budget of 3 spent
    assert len(systemctl.calls(verb)) == 3
    assert "restart budget exhausted" in capsys.readouterr().out


def test_a_restart_that_timed_out_is_not_repeated_on_the_same_activation(
    api, argv: list[str], systemctl: FakeSystemctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """A restart that timed out may still be under way: the next streak on the same activation waits, and
    says why truthfully."""
    api(503)
    systemctl.behave("restart", sleep=10)
    assert run(argv, "--threshold", "1", "--restart-timeout", "1") == wd.CRITICAL
    systemctl.behave("restart")
    assert run(argv, "--threshold", "1") == wd.WARNING
    assert len(systemctl.calls("restart")) == 1
    assert "timed out and may still be under way" in capsys.readouterr().out


def test_hanging_restart_times_out(api, argv: list[str], systemctl: FakeSystemctl) -> None:
    """A restart that hangs past --restart-timeout is critical, not a hung watchdog."""
    api(503)
    systemctl.behave("restart", sleep=10)
    start = time.monotonic()
    codes = [run(argv, "--threshold", "1", "--restart-timeout", "1")]
    assert codes == [wd.CRITICAL]
    assert time.monotonic() - start < 5


def test_systemctl_show_failing_is_unknown_and_keeps_the_count(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """systemctl show failing: stderr logged, exit 3 (the watchdog cannot judge), the count unchanged."""
    api(503)
    run(argv)
    systemctl.behave("show", rc=1, stderr="Failed to connect to bus")
    assert run(argv) == wd.UNKNOWN
    assert saved(tmp_path)["failures"] == 1
    assert "Failed to connect to bus" in capsys.readouterr().out


def test_systemctl_missing_is_unknown(api, argv: list[str], tmp_path: Path) -> None:
    """A --systemctl that cannot be run: exit 3."""
    api(503)
    assert run(argv, "--systemctl", str(tmp_path / "no-such-systemctl")) == wd.UNKNOWN


def run_with_clock(cfg: wd.Config, clock: FakeClock) -> int:
    return wd.run_once(cfg, wd.Log(journal=False, verbose=False), clock=clock)


def test_budget_withholds_restarts_then_recovers_after_the_window(
    api, argv: list[str], systemctl: FakeSystemctl, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two restarts per 10 min: the third is withheld (exit 2) until the window has passed."""
    api(503)
    args = {"threshold": "1", "max_restarts": "2", "restart_window": "10m"}
    cfg = wd.build_config({**vars_of(argv), "min_outage": "0", **args}, {})
    systemctl.set_unit(ActiveEnterTimestampMonotonic="0")
    assert run_with_clock(cfg, clock) == wd.WARNING
    clock.advance(60)
    assert run_with_clock(cfg, clock) == wd.WARNING
    clock.advance(60)
    assert run_with_clock(cfg, clock) == wd.CRITICAL
    assert len(systemctl.calls("restart")) == 2
    out = capsys.readouterr().out
    assert "NOT restarting: restart budget exhausted (2 in the last 10m), next allowed in 8m" in out
    assert out.count("restart budget exhausted") == 1
    clock.advance(8 * 60 + 1)
    assert run_with_clock(cfg, clock) == wd.WARNING
    assert len(systemctl.calls("restart")) == 3


def test_pause_stops_counting_until_it_expires(
    api, argv: list[str], systemctl: FakeSystemctl, clock: FakeClock, tmp_path: Path
) -> None:
    """While paused a failure is logged, not counted; after expiry counting resumes."""
    api(503)
    cfg = wd.build_config({**vars_of(argv), "min_outage": "0", "threshold": "1"}, {})
    log = wd.Log(journal=False, verbose=False)
    wd.set_pause(cfg, 300, log, clock=clock)
    systemctl.set_unit(ActiveEnterTimestampMonotonic="0")
    assert run_with_clock(cfg, clock) == wd.WARNING
    assert saved(tmp_path)["failures"] == 0 and systemctl.calls() == []
    clock.advance(301)
    assert run_with_clock(cfg, clock) == wd.WARNING
    assert systemctl.calls("restart") == [["restart", "motorcade-leadgen-api.service"]]


def test_resume_ends_a_pause_early(api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path) -> None:
    """`pause` then `resume` from the command line: the next failure counts again."""
    api(503)
    assert wd.main(["pause", "10m", *argv], environ={}) == wd.OK
    assert run(argv) == wd.WARNING
    assert saved(tmp_path)["failures"] == 0
    assert wd.main(["resume", *argv], environ={}) == wd.OK
    assert run(argv) == wd.WARNING
    assert saved(tmp_path)["failures"] == 1


def vars_of(argv: list[str]) -> dict[str, str]:
    return {argv[i][2:].replace("-", "_"): argv[i + 1] for i in range(0, len(argv), 2)}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="corrupt"),
        pytest.param(b"[1, 2, 3]", id="foreign-list"),
        pytest.param(b'{"version": 99, "boot_id": "x"}', id="wrong-version"),
        pytest.param(b'{"version": 1, "boot_id": "another-boot", "failures": 2}', id="another-boot"),
        pytest.param(b'{"version": 1, "boot_id": "other", "boot_time": 500.0, "failures": 2}', id="other-boot-time"),
        pytest.param(b'{"version": 2, "boot_id": "boot", "failures": "2"}', id="wrong-type"),
        pytest.param(b"\xff\xfe\x00garbage", id="binary"),
    ],
)
def test_unusable_state_is_logged_once_and_starts_fresh(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad state file never crashes and never restarts; it is replaced by a good one."""
    api(503)
    (tmp_path / "state.json").write_bytes(content)
    cfg = wd.build_config({**vars_of(argv), "min_outage": "0", "threshold": "1"}, {})
    log = wd.Log(journal=False, verbose=False)
    systemctl.behave("show", rc=0)
    systemctl.set_unit(ActiveState="inactive")
    assert wd.run_once(cfg, log, boot=("boot", 1000.0)) == wd.WARNING
    first = capsys.readouterr().out
    assert first.count("starting fresh") == 1
    assert saved(tmp_path)["boot_id"] == "boot"
    wd.run_once(cfg, log, boot=("boot", 1000.0))
    assert "starting fresh" not in capsys.readouterr().out
    assert systemctl.calls("restart") == []


def test_state_is_written_atomically_with_mode_0600(api, argv: list[str], tmp_path: Path) -> None:
    """The state file is private and no temporary file is left behind."""
    api(503)
    run(argv)
    mode = (tmp_path / "state.json").stat().st_mode & 0o777
    assert mode == 0o600
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".state-")]
    assert leftovers == []


def test_unwritable_state_is_unknown_before_any_probe(
    api, argv: list[str], httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """State under a path that cannot be a directory: exit 3, named in one line, no probe."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    httpserver.clear_log()
    assert run(argv, "--state-file", str(blocker / "state.json")) == wd.UNKNOWN
    assert f"{blocker}/state.json: Not a directory" in capsys.readouterr().err
    assert len(httpserver.log) == 0


def test_second_run_skips_while_another_holds_the_lock(
    api, argv: list[str], httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that cannot get the lock within the wait skips with a notice and changes nothing."""
    api(503)
    run(argv)
    before = (tmp_path / "state.json").read_bytes()
    httpserver.clear_log()
    holder = os.open(tmp_path / "state.json.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        start = time.monotonic()
        assert run(argv) == wd.WARNING
        waited = time.monotonic() - start
    finally:
        os.close(holder)
    assert wd.LOCK_WAIT - 0.1 <= waited <= wd.LOCK_WAIT + 1
    assert "skipped: another watchdog run holds the state lock" in capsys.readouterr().out
    assert len(httpserver.log) == 0
    assert (tmp_path / "state.json").read_bytes() == before


def test_concurrent_runs_both_count(
    httpserver: HTTPServer, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path
) -> None:
    """Two runs started together serialise on the lock: both failures are counted, none lost."""
    import subprocess
    import sys

    def slow(request):
        time.sleep(0.5)
        from werkzeug import Response

        return Response("down", status=503)

    httpserver.expect_request(HEALTH).respond_with_handler(slow)
    script = str(Path(wd.__file__))
    procs = [subprocess.Popen([sys.executable, script, "run", *argv, "--threshold", "5"]) for _ in range(2)]
    assert sorted(proc.wait(timeout=20) for proc in procs) == [wd.WARNING, wd.WARNING]
    assert saved(tmp_path)["failures"] == 2


def test_one_boot_seen_through_two_proc_views_keeps_its_state(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another boot id but the same boot start time (a container's shell vs a sandboxed unit): same boot."""
    api(503)
    state = {
        "version": wd.STATE_VERSION,
        "boot_id": "container-view",
        "boot_time": 1000.5,
        "failures": 2,
        "invocation_id": "invocation-1",
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    cfg = wd.build_config({**vars_of(argv), "min_outage": "0", "threshold": "5"}, {})
    systemctl.set_unit(ActiveEnterTimestampMonotonic="0")
    wd.run_once(cfg, wd.Log(journal=False, verbose=False), boot=("kernel-view", 1000.0))
    assert "starting fresh" not in capsys.readouterr().out
    assert saved(tmp_path)["failures"] == 3
    assert saved(tmp_path)["boot_id"] == "kernel-view"


def test_running_api_that_predates_its_installed_unit_is_said_once_and_shown_by_status(
    api, argv: list[str], systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A unit file newer than the API's activation (or NeedDaemonReload): one warning, then status says STALE."""
    unit_file = tmp_path / "motorcade-leadgen-api.service"
    unit_file.write_text("[Service]\n")
    started = int((time.monotonic() - 100) * 1e6)  # active for 100 s; the file was written just now
    systemctl.set_unit(ActiveEnterTimestampMonotonic=str(started), FragmentPath=str(unit_file))
    assert [run(argv) for _ in range(3)] == [wd.OK] * 3
    out = capsys.readouterr().out
    assert out.count("the running API predates its installed unit: it was started before its unit file") == 1
    wd.main(["status", *argv], environ={})
    assert "API unit:     STALE" in capsys.readouterr().out
    os.utime(unit_file, (time.time() - 3600, time.time() - 3600))  # the file is older than the activation
    systemctl.set_unit(NeedDaemonReload="yes")
    run(argv)
    assert "changed on disk and systemd has not reloaded it" in capsys.readouterr().out
    systemctl.set_unit(NeedDaemonReload="no")
    run(argv)
    wd.main(["status", "--json", *argv], environ={})
    assert json.loads(capsys.readouterr().out)["unit_stale"] is None


SYSTEMCTL_FAILED = (
    "Job for motorcade-leadgen-api.service failed because the control process exited with error code.\n"
    'See "systemctl status motorcade-leadgen-api.service" and "journalctl -xeu motorcade-leadgen-api.service" '
    "for details.\n"
)


def test_a_failed_restart_says_why_in_one_line(
    api,
    argv: list[str],
    systemctl: FakeSystemctl,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rule 10: the page line of a failed restart is one line naming the cause: systemctl's message (not
    cut mid-word, no literal \\n), the unit's Result and the last error line of that activation's journal."""
    invocation = "0123456789abcdef0123456789abcdef"
    journal = tmp_path / "journalctl"
    journal.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/journalctl.args\n'
        "echo 'Starting the pre-start checks'\n"
        "echo 'image localhost/leadgen:1 is not present locally; load it first (this unit never pulls)'\n"
        "echo 'cleaning up'\n"
    )
    journal.chmod(0o755)
    monkeypatch.setattr(wd, "JOURNALCTL", str(journal), raising=False)
    api(503)
    systemctl.set_unit(InvocationID=invocation, Result="exit-code")
    systemctl.behave("restart", rc=1, stderr=SYSTEMCTL_FAILED)
    assert run(argv, "--threshold", "1") == wd.CRITICAL
    page = [text for text in capsys.readouterr().out.splitlines() if "a human is needed" in text]
    assert len(page) == 1
    assert page[0].startswith(
        "restart failed: restart exited 1: Job for motorcade-leadgen-api.service failed because the control "
        "process exited with error code.; unit Result=exit-code, its last error: image localhost/leadgen:1 is "
        "not present locally; load it first (this unit never pulls); a human is needed"
    )
    assert "\\n" not in page[0] and "See " not in page[0]
    asked = (tmp_path / "journalctl.args").read_text()
    assert f"_SYSTEMD_UNIT=motorcade-leadgen-api.service _SYSTEMD_INVOCATION_ID={invocation}" in asked
    assert saved(tmp_path)["last_restart"]["detail"].endswith("(this unit never pulls)")
