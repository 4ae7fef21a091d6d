"""The shipped units, offline: systemd's own verifier and security score, and the API unit's flags."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import unitfile

import leadgen_watchdog as wd

API = unitfile.UNITS / "motorcade-leadgen-api.service"
WATCHDOG = unitfile.UNITS / "motorcade-leadgen-watchdog.service"
TIMER = unitfile.UNITS / "motorcade-leadgen-watchdog.timer"
SECURITY_TARGET = 1.1  # as its own user; the root mode (install.sh's drop-in) scores 1.3

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_analyze
def test_systemd_analyze_verify_prints_nothing() -> None:
    """verify exits 0 even for unknown keys, so its output must be empty."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(API), str(WATCHDOG), str(TIMER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def security_score(path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = [line for line in proc.stdout.splitlines() if "Overall exposure level" in line]
    assert found, proc.stdout + proc.stderr
    return float(found[0].split(":")[1].split()[0])


@needs_analyze
def test_watchdog_security_score_is_at_most_1_1() -> None:
    """The watchdog unit's exposure score, as its own user, stays at or under 1.1 (systemd-timesyncd: 2.3)."""
    assert security_score(WATCHDOG) <= SECURITY_TARGET


def test_watchdog_runs_as_the_user_its_sysusers_file_and_polkit_rule_name() -> None:
    """User= and Group= are the sysusers.d user, and the polkit rule grants that user restart and reset-failed."""
    service = unitfile.parse(WATCHDOG)["Service"]
    sysusers = (unitfile.UNITS / "motorcade-leadgen-watchdog.sysusers").read_text()
    (entry,) = [line.split() for line in sysusers.splitlines() if line and not line.startswith("#")]
    assert entry[:3] == ["u", "motorcade-leadgen-watchdog", "-"]
    assert service["User"] == service["Group"] == [entry[1]]
    rule = (unitfile.UNITS / "50-motorcade-leadgen-watchdog.rules").read_text()
    assert f'subject.user === "{entry[1]}"' in rule
    assert re.findall(r'action\.lookup\("verb"\) === "([a-z-]+)"', rule) == ["restart", "reset-failed"]
    assert 'action.lookup("unit") === "motorcade-leadgen-api.service"' in rule


def test_watchdog_service_keeps_its_counter_and_treats_warning_as_success() -> None:
    """Oneshot, -I, exit 1 is success, the runtime directory survives runs, healthy runs stay quiet."""
    service = unitfile.parse(WATCHDOG)["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/usr/bin/python3 -I /usr/local/sbin/leadgen-watchdog run"]
    assert service["SuccessExitStatus"] == ["1"]
    assert service["RuntimeDirectory"] == ["motorcade-leadgen-watchdog"]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    assert service["LogLevelMax"] == ["notice"]
    assert service["EnvironmentFile"] == ["-/etc/motorcade-leadgen/watchdog.env"]
    assert (service["IPAddressDeny"], service["IPAddressAllow"]) == (["any"], ["localhost"])
    timeout = wd.parse_duration(service["TimeoutStartSec"][0])
    assert timeout > 5 + wd.SHOW_TIMEOUT + 90


def test_watchdog_state_file_default_lies_in_its_runtime_directory() -> None:
    """The script's default state file is inside the unit's RuntimeDirectory (writable under ProtectSystem)."""
    runtime = unitfile.parse(WATCHDOG)["Service"]["RuntimeDirectory"][0]
    default = next(option.default for option in wd.OPTIONS if option.flag == "--state-file")
    assert default.startswith(f"/run/{runtime}/")


def test_hardening_keys_are_sorted() -> None:
    """The # Hardening block is in alphabetical order, for audit at a glance."""
    lines = WATCHDOG.read_text().split("# Hardening", 1)[1].splitlines()
    keys = [line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")]
    assert len(keys) > 20
    assert keys == sorted(keys)


def test_timer_every_30s_with_an_anchor() -> None:
    """30 s interval, 1 s accuracy, an anchor so it starts at all, wanted by timers.target."""
    timer = unitfile.parse(TIMER)
    assert timer["Timer"]["OnUnitActiveSec"] == ["30s"]
    assert timer["Timer"]["AccuracySec"] == ["1s"]
    assert timer["Timer"]["OnBootSec"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def api_run_argv() -> list[str]:
    service = unitfile.parse(API)["Service"]
    (command,) = service["ExecStart"]
    return unitfile.expand(command, {"t": "/run", "n": API.name, "L": "/var/log"}, {})[1]


def test_start_limits_sit_in_unit_not_service() -> None:
    """systemd ignores StartLimitIntervalSec= in [Service]: it must be in [Unit]."""
    unit = unitfile.parse(API)
    assert unit["Unit"]["StartLimitIntervalSec"] and unit["Unit"]["StartLimitBurst"]
    assert not {"StartLimitIntervalSec", "StartLimitBurst"} & set(unit["Service"])
    assert unit["Service"]["Restart"] == ["always"] and unit["Service"]["RestartSec"]


def test_api_unit_has_the_podman_generate_shape() -> None:
    """notify via conmon, cidfile, no-conmon cgroups, --rm --replace -d, stop/stop-post with --ignore."""
    service = unitfile.parse(API)["Service"]
    argv = api_run_argv()
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["all"]
    assert "PODMAN_SYSTEMD_UNIT=%n" in service["Environment"]
    for flag in ("--cidfile=/run/motorcade-leadgen-api.service.ctr-id", "--cgroups=no-conmon", "--rm"):
        assert flag in argv
    for flag in ("--sdnotify=conmon", "--replace", "-d", "--pull=never"):
        assert flag in argv
    assert "--ignore" in service["ExecStop"][0] and "--ignore" in service["ExecStopPost"][0]


def test_api_unit_carries_every_hardening_flag() -> None:
    """Capabilities, privileges, read-only root, bounded logs and resource caps."""
    argv = api_run_argv()
    for flag in ("--cap-drop=all", "--security-opt=no-new-privileges", "--read-only", "--log-driver=k8s-file"):
        assert flag in argv
    assert "--userns=auto" in argv  # the container's root is not the host's root
    prefixes = ("--log-opt=max-size=", "--memory=", "--pids-limit=", "--cpus=")
    for prefix in prefixes:
        assert any(arg.startswith(prefix) for arg in argv), prefix


def test_api_tmp_is_a_private_bounded_tmpfs_anyone_may_write() -> None:
    """/tmp is a podman --tmpfs of mode 1777 sized from api.env; nothing of the host's /run is mounted."""
    (command,) = unitfile.parse(API)["Service"]["ExecStart"]
    argv = unitfile.expand(command, {"t": "/run", "n": API.name, "L": "/var/log"}, {"LEADGEN_TMP_SIZE": "64m"})[1]
    assert "--tmpfs=/tmp:rw,nosuid,nodev,size=64m,mode=1777" in argv
    assert not any(arg.startswith(("--volume", "-v", "--mount")) for arg in argv)
    assert "RuntimeDirectory" not in unitfile.parse(API)["Service"]


def test_api_port_is_published_on_loopback_only() -> None:
    """Exactly one publish, host side 127.0.0.1:8000; no host network."""
    argv = api_run_argv()
    publishes = [arg for arg in argv if arg.startswith(("--publish", "-p"))]
    assert publishes == ["--publish=127.0.0.1:8000:"]  # the container port comes from api.env
    assert not any(arg.startswith(("--network=host", "--net=host", "--publish-all", "-P")) for arg in argv)


def test_api_unit_takes_deploy_settings_from_api_env() -> None:
    """Image, caps, log size and app env file are ${VARS} of api.env, each with a value there."""
    service = unitfile.parse(API)["Service"]
    env = unitfile.read_env(unitfile.UNITS / "api.env")
    assert service["EnvironmentFile"] == ["/etc/motorcade-leadgen/api.env"]
    assert used_vars() == set(env)
    assert all(env[name] for name in used_vars() - {"LEADGEN_IMAGE"})
    assert env["LEADGEN_IMAGE"] == ""  # a fresh template: install.sh leaves the API unit alone


def used_vars() -> set[str]:
    service = unitfile.parse(API)["Service"]
    used = set()
    for command in service["ExecStart"] + service["ExecStartPre"]:
        used |= set(re_vars(command))
    return used


def unit_defaults() -> dict[str, str]:
    return dict(value.split("=", 1) for value in unitfile.parse(API)["Service"]["Environment"])


def test_every_api_setting_has_its_default_in_the_unit() -> None:
    """Environment= before EnvironmentFile= gives each ${VAR} the template's value: a trimmed api.env keeps the caps."""
    defaults = unit_defaults()
    assert {name: defaults.get(name) for name in used_vars()} == unitfile.read_env(unitfile.UNITS / "api.env")
    lines = [line.split("=", 1)[0] for line in API.read_text().splitlines()]
    assert max(i for i, key in enumerate(lines) if key == "Environment") < lines.index("EnvironmentFile")


def cap_check() -> list[str]:
    """The ExecStartPre line that validates the caps, as systemd would run it."""
    (line,) = [pre for pre in unitfile.parse(API)["Service"]["ExecStartPre"] if "LEADGEN_MEMORY" in pre]
    return unitfile.expand(line, {"t": "/run", "n": API.name, "L": "/var/log"}, {})[1]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("LEADGEN_MEMORY", "", id="memory-empty"),
        pytest.param("LEADGEN_MEMORY", "lots", id="memory-word"),
        pytest.param("LEADGEN_MEMORY", "512mb", id="memory-two-units"),
        pytest.param("LEADGEN_LOG_MAX_SIZE", "", id="log-empty"),
        pytest.param("LEADGEN_TMP_SIZE", "", id="tmp-empty"),
        pytest.param("LEADGEN_TMP_SIZE", "-1", id="tmp-negative"),
        pytest.param("LEADGEN_PIDS_LIMIT", "", id="pids-empty"),
        pytest.param("LEADGEN_PIDS_LIMIT", "0", id="pids-zero"),
        pytest.param("LEADGEN_PIDS_LIMIT", "-1", id="pids-unlimited"),
        pytest.param("LEADGEN_CPUS", "", id="cpus-empty"),
        pytest.param("LEADGEN_CPUS", "0.0", id="cpus-zero"),
        pytest.param("LEADGEN_CPUS", "1.5.0", id="cpus-two-dots"),
        pytest.param("LEADGEN_CONTAINER_PORT", "", id="port-empty"),
        pytest.param("LEADGEN_CONTAINER_PORT", "70000", id="port-too-big"),
    ],
)
def test_an_empty_or_malformed_cap_fails_the_start_with_one_line(name: str, value: str) -> None:
    """ExecStartPre rejects the bad value, naming the variable and quoting it, in one line."""
    proc = subprocess.run(cap_check(), env={**unit_defaults(), name: value}, capture_output=True, text=True)
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"<3>{name}=[{value}] in /etc/motorcade-leadgen/api.env is not " + proc.stderr.split(" is not ")[1]
    )
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("caps", [{}, {"LEADGEN_MEMORY": "2G", "LEADGEN_CPUS": "0.5", "LEADGEN_TMP_SIZE": "1024k"}])
def test_the_default_and_ordinary_caps_pass_the_check(caps: dict[str, str]) -> None:
    """The unit's defaults and ordinary values pass the cap check."""
    proc = subprocess.run(cap_check(), env={**unit_defaults(), **caps}, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def re_vars(command: str) -> list[str]:
    return re.findall(r"\$\{?(LEADGEN_\w+)", command)


def test_api_prechecks_cover_image_and_env_file_and_leave_stale_containers_to_replace() -> None:
    """ExecStartPre: image present locally, app env file readable; no `podman rm`: `run --replace` does that."""
    pre = " ".join(unitfile.parse(API)["Service"]["ExecStartPre"])
    assert "podman image exists" in pre
    assert 'f="$LEADGEN_APP_ENV_FILE"; test -r "$f"' in pre
    assert "podman rm" not in pre
    assert "--replace" in api_run_argv()


def test_watchdog_env_template_lists_every_option_with_its_default() -> None:
    """units/watchdog.env names every variable of the script, with the script's default."""
    text = (unitfile.UNITS / "watchdog.env").read_text()
    for option in wd.OPTIONS:
        assert f"#{option.env}={option.default or ''}\n" in text
