"""Configuration: defaults < environment < flags, and every bad value refused the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import HEALTH

import leadgen_watchdog as wd


def test_defaults_match_the_documented_table() -> None:
    """With nothing set, the configuration is the documented default."""
    cfg = wd.build_config({}, {})
    assert cfg.url == "http://127.0.0.1:8000/lead/health"
    assert cfg.unit == "motorcade-leadgen-api.service"
    assert (cfg.threshold, cfg.timeout, cfg.grace) == (3, 5.0, 60.0)
    assert (cfg.max_restarts, cfg.restart_window, cfg.restart_timeout) == (3, 1800.0, 90.0)
    assert cfg.expect_status == ((200, 299),)
    assert cfg.expect_body is None
    assert cfg.state_file == "/run/motorcade-leadgen-watchdog/state.json"
    assert (cfg.systemctl, cfg.verbose) == ("systemctl", False)


def test_flag_beats_environment_beats_default() -> None:
    """A flag overrides its variable, which overrides the default."""
    env = {"LEADGEN_WATCHDOG_THRESHOLD": "5", "LEADGEN_WATCHDOG_GRACE": "2m"}
    cfg = wd.build_config({"threshold": "2"}, env)
    assert (cfg.threshold, cfg.grace) == (2, 120.0)


def test_empty_environment_variable_counts_as_unset() -> None:
    """LEADGEN_WATCHDOG_X= (empty) leaves the default in place."""
    cfg = wd.build_config({}, {"LEADGEN_WATCHDOG_THRESHOLD": "", "LEADGEN_WATCHDOG_URL": ""})
    assert (cfg.threshold, cfg.url) == (3, "http://127.0.0.1:8000/lead/health")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1.5", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations are seconds, or a number with s, m or h."""
    assert wd.parse_duration(text) == seconds


def test_status_lists() -> None:
    """Status lists mix codes and ranges."""
    assert wd.parse_status_list("200,204,300-302") == ((200, 200), (204, 204), (300, 302))


BAD_VALUES = [
    ("url", "ftp://127.0.0.1/x"),
    ("url", "not a url"),
    ("url", "http://"),
    ("unit", "motorcade-leadgen-api"),
    ("unit", "../etc/passwd.service"),
    ("unit", "api.service; rm -rf /"),
    ("threshold", "0"),
    ("threshold", "three"),
    ("threshold", "-1"),
    ("timeout", "0"),
    ("timeout", "5x"),
    ("timeout", "301"),
    ("grace", "-5"),
    ("grace", "forever"),
    ("max-restarts", "1.5"),
    ("restart-window", "0"),
    ("restart-timeout", "10d"),
    ("expect-status", "200-99"),
    ("expect-status", "2xx"),
    ("expect-status", "600"),
    ("expect-body", " "),
    ("state-file", "/tmp/"),
    ("verbose", "maybe"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
def test_bad_environment_value_is_one_line_and_exit_3(
    name: str, value: str, httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad variable: exit 3, one stderr line naming it and quoting the value, no probe, no state."""
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    env_name = "LEADGEN_WATCHDOG_" + name.upper().replace("-", "_")
    state = tmp_path / "state.json"
    env = {env_name: value}
    if name != "url":
        env["LEADGEN_WATCHDOG_URL"] = httpserver.url_for(HEALTH)
    if name != "state-file":
        env["LEADGEN_WATCHDOG_STATE_FILE"] = str(state)
    assert wd.main(["run"], environ=env) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert env_name in err and repr(value) in err
    assert len(httpserver.log) == 0
    assert not state.exists()


@pytest.mark.parametrize(
    ("name", "value"), [b for b in BAD_VALUES if b[0] != "verbose"], ids=[f"{n}={v}" for n, v in BAD_VALUES[:-1]]
)
def test_bad_flag_value_names_the_flag(name: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag: exit 3, one line naming --flag and quoting the value."""
    assert wd.main([f"--{name}", value, "check"], environ={}) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--{name} must be" in err and repr(value) in err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--bogus"], id="unknown-flag"),
        pytest.param(["--thresh", "2"], id="abbreviation"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["pause", "25h"], id="pause-over-24h"),
        pytest.param(["pause", "soon"], id="pause-unknown-duration"),
        pytest.param(["pause", "0s"], id="pause-zero"),
    ],
)
def test_usage_errors_exit_3_without_traceback(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Usage errors are configuration errors: one line, exit 3, nothing written."""
    state = tmp_path / "state.json"
    assert wd.main([*argv, "--state-file", str(state)] if argv[0] == "pause" else argv, environ={}) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0 or err.startswith("usage:")
    assert not state.exists()


def test_help_lists_every_option_with_env_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names each option's variable and default."""
    with pytest.raises(SystemExit) as exit_info:
        wd.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in wd.OPTIONS:
        assert option.flag in text
        assert f"env {option.env}" in text
        assert f"default {option.default or 'unset'}".replace("-\n", "-") in text.replace("- ", "-")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version."""
    with pytest.raises(SystemExit):
        wd.main(["--version"])
    assert wd.VERSION in capsys.readouterr().out


def test_docs_option_table_matches_options() -> None:
    """docs/configuration.md's settings table lists exactly OPTIONS, each with its variable and its default."""
    doc = (Path(wd.__file__).parent / "docs/configuration.md").read_text()
    table = doc.split("\n## Settings\n", 1)[1].split("\n\n| flag |", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in table.splitlines()[2:]]
    assert [row[0] for row in rows] == [f"`{option.flag}`" for option in wd.OPTIONS]
    for (flag, env, default), option in zip(rows, wd.OPTIONS):
        assert env == f"`{option.env}`", flag
        if option.default is not None:
            assert default.startswith(f"`{option.default}`"), flag
        else:
            assert default.startswith("unset"), flag
