"""Re-probing inside one run once a failure is counted (issue 15): faster recovery, no false restarts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import HEALTH, FakeClock, FakeSystemctl
from werkzeug import Request, Response

import leadgen_watchdog as wd


def config(httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, **flags: str) -> wd.Config:
    base = {"url": httpserver.url_for(HEALTH), "systemctl": systemctl.path, "state_file": str(tmp_path / "s.json")}
    return wd.build_config({**base, "retry_interval": "5s", "min_outage": "0", **flags}, {})


def answers(httpserver: HTTPServer, statuses: list[int]) -> list[int]:
    """Serve the statuses in turn (the last one repeats); returns the list of what was served."""
    served: list[int] = []
    source = itertools.chain(statuses, itertools.repeat(statuses[-1]))

    def handler(request: Request) -> Response:
        status = next(source)
        served.append(status)
        return Response("x", status=status)

    httpserver.expect_request(HEALTH).respond_with_handler(handler)
    return served


def run(cfg: wd.Config, clock: FakeClock, sleeps: list[float], capsys: pytest.CaptureFixture[str] | None = None) -> int:
    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)

    return wd.run_once(cfg, wd.Log(journal=False, verbose=False), clock=clock, sleep=sleep, boot=("b", 0.0))


def test_hung_api_is_restarted_within_one_run(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, clock: FakeClock
) -> None:
    """503 three times: the run waits the retry interval twice and restarts, each probe counted and saved."""
    served = answers(httpserver, [503])
    sleeps: list[float] = []
    assert run(config(httpserver, systemctl, tmp_path), clock, sleeps) == wd.WARNING
    assert served == [503, 503, 503] and sleeps == [5.0, 5.0]
    assert len(systemctl.calls("restart")) == 1
    state = json.loads((tmp_path / "s.json").read_text())
    assert state["restarts_ok"] == 1 and state["failures"] == 0


def test_recovery_between_retries_resets_the_count(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, clock: FakeClock
) -> None:
    """fail, fail, ok inside one run: healthy, count 0, no restart."""
    served = answers(httpserver, [503, 503, 200])
    assert run(config(httpserver, systemctl, tmp_path), clock, []) == wd.OK
    assert served == [503, 503, 200] and systemctl.calls("restart") == []


@pytest.mark.parametrize("phase", [0, 1], ids=["fail-first", "ok-first"])
def test_real_alternating_server_never_restarts(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, clock: FakeClock, phase: int
) -> None:
    """A server alternating 503 and 200 at either phase, over 20 runs with retries: never a restart."""
    pattern = [503, 200] if phase == 0 else [200, 503]
    served: list[int] = []
    source = itertools.cycle(pattern)

    def handler(request: Request) -> Response:
        status = next(source)
        served.append(status)
        return Response("x", status=status)

    httpserver.expect_request(HEALTH).respond_with_handler(handler)
    cfg = config(httpserver, systemctl, tmp_path, threshold="2")
    for _ in range(20):
        run(cfg, clock, [])
        clock.advance(30)
    assert systemctl.calls("restart") == [] and len(served) >= 20


@pytest.mark.parametrize(
    ("unit", "reason"),
    [
        pytest.param({"ActiveState": "inactive"}, "unit is inactive", id="inactive"),
        pytest.param({"ActiveState": "activating"}, "unit is activating", id="transition"),
    ],
)
def test_no_retry_when_the_unit_state_says_not_to_count(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, clock: FakeClock, unit: dict, reason: str
) -> None:
    """A failure that is not counted ends the run: one probe, no sleep."""
    served = answers(httpserver, [503])
    systemctl.set_unit(**unit)
    sleeps: list[float] = []
    assert run(config(httpserver, systemctl, tmp_path), clock, sleeps) == wd.WARNING
    assert served == [503] and sleeps == []


def test_pause_during_retries_takes_effect_at_the_next_probe(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, clock: FakeClock
) -> None:
    """A pause written while the run waits to re-probe: the next probe is not counted and the run ends."""
    served = answers(httpserver, [503])
    cfg = config(httpserver, systemctl, tmp_path)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        wd.set_pause(cfg, 600, wd.Log(journal=False, verbose=False), clock=clock)  # the operator, meanwhile

    code = wd.run_once(cfg, wd.Log(journal=False, verbose=False), clock=clock, sleep=sleep, boot=wd.this_boot(clock))
    assert code == wd.WARNING and served == [503, 503] and sleeps == [5.0]
    state = json.loads((tmp_path / "s.json").read_text())
    assert state["failures"] == 0 and systemctl.calls("restart") == []


def test_retries_stop_in_time_to_finish_within_the_run_limit(
    httpserver: HTTPServer,
    systemctl: FakeSystemctl,
    tmp_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With a 60 s interval and a 100 s restart timeout, no re-probe could finish in 140 s: the next run goes on."""
    served = answers(httpserver, [503])
    cfg = config(httpserver, systemctl, tmp_path, retry_interval="60", restart_timeout="100", timeout="5")
    sleeps: list[float] = []
    assert run(cfg, clock, sleeps) == wd.WARNING
    assert served == [503] and sleeps == []
    assert "no re-probe in this run" in capsys.readouterr().out


def test_a_run_that_could_outlive_the_unit_timeout_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Lock wait 3 + --timeout 60 + show and reset-failed 20 + --restart-timeout 100 exceeds 140 s: exit 3."""
    assert wd.main(["check", "--timeout", "60", "--restart-timeout", "100"], environ={}) == wd.UNKNOWN
    assert "= 183s: more than the 140s a run may take" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("statuses", "served", "restarts"),
    [
        pytest.param([503, 503, 503, 503, 200], [503, 503, 503, 503, 200], 0, id="blip-of-15s"),
        pytest.param([503], [503, 503, 503, 503, 503], 1, id="outage-of-20s"),
    ],
)
def test_a_brief_blip_never_restarts(
    httpserver: HTTPServer,
    systemctl: FakeSystemctl,
    tmp_path: Path,
    clock: FakeClock,
    statuses: list[int],
    served: list[int],
    restarts: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rule 4: fast failures reach the threshold of 3 in 10 s; a restart also needs --min-outage (20 s) since
    the first counted failure, so a 15 s blip (a database failover) never restarts and a 20 s outage does."""
    answered = answers(httpserver, statuses)
    sleeps: list[float] = []
    cfg = config(httpserver, systemctl, tmp_path, min_outage="20s")
    run(cfg, clock, sleeps, capsys)
    assert answered == served and len(systemctl.calls("restart")) == restarts
    out = capsys.readouterr().out
    assert "restart deferred" in out and "failing_for=15s min_outage=20s" in out


def test_min_outage_is_counted_from_the_first_counted_failure_across_runs(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, clock: FakeClock
) -> None:
    """Rule 4 across runs: with one probe per run (--retry-interval 0), runs 10 s apart restart only once the
    streak is 20 s old, whatever the threshold (here 1)."""
    answers(httpserver, [503])
    cfg = config(httpserver, systemctl, tmp_path, min_outage="20s", threshold="1", retry_interval="0")
    for _ in range(3):
        run(cfg, clock, [])
        assert systemctl.calls("restart") == []
        clock.advance(9.9)
    clock.advance(0.3)
    run(cfg, clock, [])
    assert len(systemctl.calls("restart")) == 1
