"""decide() and settle(): the whole decision as a table, and invariants over random histories (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import leadgen_watchdog as wd

CFG = wd.build_config(
    {
        "threshold": "3",
        "max_restarts": "2",
        "restart_window": "600",
        "grace": "60",
        "remind": "1h",
        "min_outage": "0",
        "recovered_after": "0",
    },
    {},
)
OK = wd.CheckResult(True, "ok", "HTTP 200", 200, 0.01)
FAIL = wd.CheckResult(False, "status", "HTTP 503", 503, 0.01)
ACTIVE = wd.UnitStatus("loaded", "active", "running", 1.0, "inv-1")
NOW = 10_000.0
WITHHELD = wd.check_record(FAIL, 1.8e9, "withheld")


def state(**fields: object) -> wd.State:
    return wd.State(boot_id="b", boot_time=0.0, invocation_id="inv-1", **fields)


@pytest.mark.parametrize(
    ("before", "result", "unit", "action", "code", "failures", "message"),
    [
        pytest.param(state(), OK, None, "none", wd.OK, 0, "health check ok", id="healthy"),
        pytest.param(state(failures=2, incident_since_mono=NOW - 60), OK, None, "none", wd.OK, 0,
                     "health check recovered", id="recovered"),
        pytest.param(state(human_needed=True, incident_since_mono=NOW - 600), OK, None, "none", wd.OK, 0,
                     "incident over", id="incident-over"),
        pytest.param(state(), FAIL, ACTIVE, "none", wd.WARNING, 1, "health check failed", id="first-failure"),
        pytest.param(state(failures=1), FAIL, ACTIVE, "none", wd.WARNING, 2, "health check failed", id="second"),
        pytest.param(state(failures=2), FAIL, ACTIVE, "restart", wd.WARNING, 3, "health check failed", id="threshold"),
        pytest.param(state(failures=2, restarts=(NOW - 10, NOW - 20)), FAIL, ACTIVE, "none", wd.CRITICAL, 3,
                     "NOT restarting: restart budget exhausted (2 in the last 10m)", id="budget-first-alert"),
        pytest.param(state(failures=3, restarts=(NOW - 10, NOW - 20), human_needed=True, alerted=NOW - 60,
                           last_check=WITHHELD),
                     FAIL, ACTIVE, "none", wd.WARNING, 3, "still withheld: restart budget", id="reminder-not-due"),
        pytest.param(state(failures=3, restarts=(NOW - 10, NOW - 20), human_needed=True, alerted=NOW - 3600,
                           last_check=WITHHELD),
                     FAIL, ACTIVE, "none", wd.CRITICAL, 3, "restart still withheld", id="reminder-due"),
        pytest.param(state(failures=2, restarts=(NOW - 700,)), FAIL, ACTIVE, "restart", wd.WARNING, 3,
                     "health check failed", id="old-restart-outside-window"),
        pytest.param(state(failures=2), FAIL, ACTIVE._replace(invocation_id="inv-2"), "none", wd.WARNING, 1,
                     "new InvocationID", id="new-invocation-starts-over"),
        pytest.param(state(failures=2), FAIL, ACTIVE._replace(active_state="inactive"), "none", wd.WARNING, 2,
                     "not counted: unit is inactive", id="inactive"),
        pytest.param(state(failures=2), FAIL, ACTIVE._replace(active_state="activating"), "none", wd.WARNING, 2,
                     "not counted: unit is activating", id="activating"),
        pytest.param(state(failures=2), FAIL, ACTIVE._replace(active_state="maintenance"), "none", wd.WARNING, 2,
                     "not counted: unit is maintenance", id="maintenance"),
        pytest.param(state(failures=2), FAIL, ACTIVE._replace(active_state=""), "none", wd.WARNING, 2,
                     "not counted: unit is in an unknown state", id="unknown-state"),
        pytest.param(state(failures=2), FAIL, ACTIVE._replace(active_enter_monotonic=NOW - 5), "none", wd.WARNING, 2,
                     "not counted: starting up", id="grace"),
        pytest.param(state(failures=2, paused_until=NOW + 60), FAIL, None, "none", wd.WARNING, 2,
                     "not counted: watchdog paused", id="paused"),
        pytest.param(state(failures=1), FAIL, wd.UnitStatus(error="systemctl show exited 1: no bus"), "none",
                     wd.UNKNOWN, 1, "cannot judge: systemctl show exited 1", id="show-failed"),
        pytest.param(state(failures=2), FAIL, ACTIVE._replace(active_state="failed"), "restart", wd.WARNING, 3,
                     "health check failed", id="failed-unit-restarted"),
    ],
)  # fmt: skip
def test_decide_table(
    before: wd.State,
    result: wd.CheckResult,
    unit: wd.UnitStatus | None,
    action: str,
    code: int,
    failures: int,
    message: str,
) -> None:
    """Each row: what decide() does with one probe, the exit code, the count and the line it logs."""
    decision = wd.decide(before, result, unit, CFG, NOW, 1.8e9)
    assert (decision.action, decision.code, decision.state.failures) == (action, code, failures)
    assert any(message in text for _, text, _ in decision.lines), decision.lines


def test_restart_is_written_ahead_and_settled() -> None:
    """The intent counts the restart before it runs; settle() records the outcome and starts the count over."""
    decision = wd.decide(state(failures=2), FAIL, ACTIVE, CFG, NOW, 1.8e9)
    assert decision.state.restarts == (NOW,) and decision.state.last_restart["ok"] is None
    assert decision.announce[0] == wd.ERR
    done = wd.settle(decision.state, True, "restarted in 1.0s", CFG, NOW + 1, 1.8e9 + 1)
    assert (done.code, done.state.failures, done.state.restarts_ok) == (wd.WARNING, 0, 1)
    assert done.lines[0][0] == wd.WARN  # `journalctl -p warning` shows every restart's outcome
    failed = wd.settle(decision.state, False, "restart exited 1", CFG, NOW + 1, 1.8e9 + 1)
    assert (failed.code, failed.state.restarts_failed, failed.state.human_needed) == (wd.CRITICAL, 1, True)


def test_interrupted_restart_stays_counted() -> None:
    """A restart written ahead but never settled (the run was killed) stays in the budget, its outcome unknown."""
    intent = wd.decide(state(failures=2), FAIL, ACTIVE, CFG, NOW, 1.8e9).state
    after, lines = wd.interrupted(intent)
    assert after.restarts == (NOW,) and after.last_restart["ok"] is None and lines[0][0] == wd.ERR
    assert after.last_restart["detail"] == wd.INTERRUPTED and after.restarts_failed == 0
    assert after.restarted_invocation == ""  # the next streak may restart it, within the budget
    assert wd.interrupted(after) == (after, [])  # said once


def test_log_lines_never_show_a_count_past_the_threshold() -> None:
    """While a restart is withheld, runs say so; no `failures=15/3`."""
    current = state(failures=2, restarts=(NOW - 1, NOW - 2))
    for step in range(15):
        decision = wd.decide(current, FAIL, ACTIVE, CFG, NOW + step * 30, 1.8e9)
        current = decision.state
        for _, text, fields in decision.lines:
            count = fields.get("failures")
            assert count is None or int(str(count).split("/")[0]) <= CFG.threshold, text
    assert current.failures == CFG.threshold


# --- Properties ---------------------------------------------------------------

PROBES = st.sampled_from(["ok", "fail"])
UNIT_STATES = st.sampled_from(
    ["active", "active", "active", "failed", "inactive", "activating", "deactivating", "maintenance", "refreshing", ""]
)
EVENT = st.one_of(
    st.tuples(st.just("run"), PROBES, UNIT_STATES, st.booleans(), st.floats(0, 120), st.booleans()),
    st.tuples(st.just("pause"), st.floats(1, 3600)),
    st.tuples(st.just("resume")),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(EVENT, min_size=1, max_size=60),
    threshold=st.integers(1, 4),
    max_restarts=st.integers(0, 3),
    window=st.sampled_from([60.0, 600.0, 1800.0]),
    remind=st.sampled_from([0.0, 300.0, 3600.0]),
)
def test_invariants_over_random_histories(
    events: list, threshold: int, max_restarts: int, window: float, remind: float
) -> None:
    """Budget, pause, unit state, threshold and streak rules hold after every step of any history."""
    cfg = CFG._replace(threshold=threshold, max_restarts=max_restarts, restart_window=window, remind=remind, grace=0.0)
    now, current, invocation = 1000.0, state(), 1
    restarts: list[float] = []
    streak_restarted: set[tuple[int, int]] = set()  # (invocation, streak) pairs that already got a restart
    streak = 0
    pause_id = 0
    for event in events:
        if event[0] == "pause":
            pause_id += 1
            pause = wd.Pause(id=str(pause_id), until=now + event[1])
            current, _ = wd.with_pause(current, pause, now)
            continue
        if event[0] == "resume":
            pause_id += 1
            current, _ = wd.with_pause(current, wd.Pause(id=str(pause_id)), now)
            continue
        _, probe, active, new_invocation, advance, restart_ok = event
        now += advance
        if new_invocation:
            invocation += 1
        before = current
        unit = wd.UnitStatus("loaded", active, "x", 1.0, f"inv-{invocation}")
        result = OK if probe == "ok" else FAIL
        decision = wd.decide(
            current, result, None if result.ok or wd.paused_left(current, now) else unit, cfg, now, now
        )
        if result.ok:
            streak += 1
        if decision.action == "restart":
            assert not wd.paused_left(before, now), "restart while paused"
            assert active in ("active", "failed"), f"restart while the unit is {active}"
            assert before.failures + 1 >= threshold or (before.invocation_id != unit.invocation_id and threshold == 1)
            assert decision.state.failures == threshold
            key = (invocation, streak)
            assert key not in streak_restarted, "two restarts for one failure streak in one activation"
            streak_restarted.add(key)
            restarts.append(now)
            assert sum(1 for t in restarts if now - t < window) <= max_restarts, "budget overspent"
            decision = wd.settle(decision.state, restart_ok, "x", cfg, now, now)
            if restart_ok:
                invocation += 1  # systemd gives a restarted unit a new InvocationID; a failed one may keep it
            else:
                streak += 1  # a refused restart starts the count over: the next streak may try again (issue 18)
        current = decision.state
        assert current.failures >= 0
        assert current.failures <= threshold
        assert decision.code in (wd.OK, wd.WARNING, wd.CRITICAL)


@settings(max_examples=200, deadline=None)
@given(phase=st.integers(0, 5), length=st.integers(2, 40), threshold=st.integers(2, 5))
def test_flapping_never_restarts_at_any_phase(phase: int, length: int, threshold: int) -> None:
    """fail/ok alternating, starting at any phase, with any number of re-probes in between: never a restart."""
    cfg = CFG._replace(threshold=threshold)
    current, now = state(), NOW
    for step in range(phase, phase + length):
        now += 5
        result = FAIL if step % 2 else OK
        decision = wd.decide(current, result, None if result.ok else ACTIVE, cfg, now, now)
        assert decision.action == "none"
        current = decision.state


def test_a_healthy_watchdog_says_so_once_an_hour_with_the_latency_range() -> None:
    """One notice per hour of healthy checks, with the count and the latency range; a failure restarts the hour."""
    current, now, said = state(), NOW, []
    for step in range(130):  # 130 checks 30 s apart: 65 minutes
        result = OK._replace(latency=0.001 * (1 + step % 5))
        decision = wd.decide(current, result, ACTIVE, CFG, now + 30 * step, 1.8e9)
        said += [(text, fields) for priority, text, fields in decision.lines if priority <= wd.NOTICE]
        current = decision.state
    assert said == [("healthy: 121 checks in the last 1h", {"latency": "1.0-5.0ms"})]
    failed = wd.decide(current, FAIL, ACTIVE, CFG, now + 30 * 131, 1.8e9).state
    assert failed.summary_since is None and failed.summary_checks == 0
