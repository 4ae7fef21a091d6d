"""The watchdog under hostile state, input and timing (issue 8): nothing it reads makes it lie, crash or overspend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from pytest_httpserver import HTTPServer
from support import HEALTH, FakeSystemctl, RawServer

import leadgen_watchdog as wd

SCRIPT = str(Path(wd.__file__))


@pytest.fixture
def base(httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path) -> list[str]:
    """Flags for a run against the test server and the recording systemctl, one probe per run."""
    httpserver.expect_request(HEALTH).respond_with_data("down", status=503)
    return ["--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, "--retry-interval", "0"]


def state_flags(path: Path) -> list[str]:
    return ["--state-file", str(path)]


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a run as a separate process: runs follow each other within milliseconds (conftest)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADGEN_WATCHDOG_") and k != "JOURNAL_STREAM"}
    return {**env, "LEADGEN_WATCHDOG_MIN_OUTAGE": "0", "LEADGEN_WATCHDOG_RECOVERED_AFTER": "0", **extra}


# --- Rule 1: the state is only ever a regular file ---------------------------


def make_special(path: Path, kind: str) -> Callable[[], bool]:
    """Create a non-regular file at path; returns a check that it is still that thing."""
    if kind == "fifo":
        os.mkfifo(path)
        return lambda: stat.S_ISFIFO(os.lstat(path).st_mode)
    if kind == "device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # our own node, in tmp_path
        return lambda: stat.S_ISCHR(os.lstat(path).st_mode)
    if kind == "directory":
        path.mkdir()
        return lambda: stat.S_ISDIR(os.lstat(path).st_mode)
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return lambda: stat.S_ISSOCK(os.lstat(path).st_mode)
    raise AssertionError(kind)


@pytest.mark.parametrize("which", ["state", "lock", "pause"])
@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "socket"])
@pytest.mark.parametrize("command", [["run"], ["status"], ["status", "--json"], ["pause", "10m"], ["resume"]])
def test_non_regular_state_is_refused_and_left_alone(
    base: list[str], tmp_path: Path, which: str, kind: str, command: list[str]
) -> None:
    """A FIFO, device node, directory or socket as the state, lock or pause file: exit 3 at once, untouched."""
    state = tmp_path / "run" / "state.json"
    state.parent.mkdir()
    target = {"state": state, "lock": Path(f"{state}.lock"), "pause": Path(f"{state}.pause")}[which]
    still = make_special(target, kind)
    proc = subprocess.run(
        [sys.executable, SCRIPT, *command, *base, *state_flags(state)],
        capture_output=True,
        text=True,
        timeout=20,  # a FIFO opened for reading would block forever
        env=script_env(),
    )
    assert proc.returncode == wd.UNKNOWN, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert str(target) in proc.stderr and "not a regular file" in proc.stderr
    assert still()


@pytest.mark.parametrize("dangling", [False, True], ids=["symlink", "dangling-symlink"])
def test_symlinked_state_is_replaced_and_its_target_never_written(
    base: list[str], tmp_path: Path, dangling: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The link itself becomes the new state file; the file it pointed to keeps its bytes (or stays absent)."""
    target = tmp_path / "precious"
    if not dangling:
        target.write_text("do not touch\n")
    state = tmp_path / "state.json"
    state.symlink_to(target)
    assert wd.main(["run", *base, *state_flags(state)], environ={}) == wd.WARNING
    assert not state.is_symlink() and json.loads(state.read_text())["failures"] == 1
    assert target.read_text() == "do not touch\n" if not dangling else not target.exists()
    assert "symlink (not followed" in capsys.readouterr().out


# --- Rule 2: no restart goes unrecorded -------------------------------------


@pytest.fixture
def small_run(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs standing in for /run (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run the suite as root, as .ci/run does", pytrace=False)
    mount = tmp_path / "run"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)


def test_full_run_directory_never_restarts_unrecorded(
    base: list[str], small_run: Path, systemctl: FakeSystemctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """/run full at the threshold: 6 runs, no restart (the budget would allow one): exit 3, the reason said."""
    state = small_run / "state.json"
    flags = [*base, *state_flags(state), "--threshold", "1", "--max-restarts", "1"]
    assert wd.main(["status", *flags], environ={}) == wd.OK  # nothing written yet
    with wd.StateLock(str(state)):  # the lock file exists, as after any earlier run
        pass
    fill(small_run)
    codes = [wd.main(["run", *flags], environ={}) for _ in range(6)]
    assert codes == [wd.UNKNOWN] * 6
    assert systemctl.calls("restart") == []
    err = capsys.readouterr().err
    assert err.count("cannot record the restart, not restarting: cannot write state file") == 6


def test_killed_during_a_hanging_restart_still_counts_it(
    base: list[str], tmp_path: Path, systemctl: FakeSystemctl
) -> None:
    """Killed 4 times (SIGKILL, SIGTERM) while `systemctl restart` hangs, --max-restarts 1: one restart issued."""
    systemctl.behave("restart", sleep=60)
    flags = [*base, *state_flags(tmp_path / "state.json"), "--threshold", "1", "--max-restarts", "1"]
    codes = []
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
        restarts = len(systemctl.calls("restart"))
        proc = subprocess.Popen(
            [sys.executable, SCRIPT, "run", *flags], env=script_env(), start_new_session=True, stdout=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while proc.poll() is None and len(systemctl.calls("restart")) == restarts and time.monotonic() < deadline:
            time.sleep(0.05)  # until the run issues its restart, or ends without one
        if proc.poll() is None:
            os.killpg(proc.pid, sig)  # the run and its systemctl, as systemd kills the unit's cgroup
        codes.append(proc.wait(timeout=20))
    assert len(systemctl.calls("restart")) == 1
    saved = json.loads((tmp_path / "state.json").read_text())
    assert len(saved["restarts"]) == 1
    assert saved["last_restart"]["ok"] is None and saved["last_restart"]["detail"] == wd.INTERRUPTED


# --- Rule 3: never a traceback, never exit 1 by accident ---------------------


def test_unexpected_exception_is_one_line_and_exit_3(
    base: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug exits 3 (exit 1 would count as success) with one line; --verbose adds the traceback."""

    def broken(*args: object, **kwargs: object) -> int:
        raise KeyError("surprise")

    monkeypatch.setattr(wd, "run_once", broken)
    assert wd.main(["run", *base, *state_flags(tmp_path / "s.json")], environ={}) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "Traceback" not in err
    assert wd.main(["run", *base, *state_flags(tmp_path / "s.json"), "--verbose"], environ={}) == wd.UNKNOWN
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"version": 2, "boot_id": "b", "failures": NaN}', id="NaN"),
        pytest.param('{"version": 2, "boot_id": "b", "boot_time": Infinity}', id="Infinity"),
        pytest.param('{"version": 2, "boot_id": "b", "boot_time": -Infinity}', id="minus-Infinity"),
        pytest.param('{"version": 2, "boot_id": "b", "boot_time": 1e400}', id="1e400"),
        pytest.param('{"version": 2, "boot_id": "b", "failures": ' + "9" * 5000 + "}", id="huge-int"),
        pytest.param('{"version": 2, "boot_id": "b", "restarts": ' + deep(10_000) + "}", id="10000-deep"),
        pytest.param('{"version": 2, "boot_id": "b", "restarts": [1, NaN]}', id="NaN-in-restarts"),
        pytest.param('{"version": 2, "boot_id": "b", "last_check": {"wall": "x"}}', id="last_check-wrong-types"),
        pytest.param('{"version": 2, "boot_id": "b", "last_restart": [1, 2]}', id="last_restart-a-list"),
        pytest.param('{"version": 2, "boot_id": "b", "last_check": {"wall": 1, "ok": 1, "reason": "", '
                     '"detail": "", "status": null, "latency": 0, "note": ""}}', id="last_check-ok-not-bool"),
        pytest.param('{"version": 2, "boot_id": "b", "failures": true}', id="bool-as-count"),
        pytest.param('{"version": 2, "boot_id": "b", "failures": -1}', id="negative-count"),
        pytest.param('{"version": 2, "boot_id": "b", "failures": 1000000000}', id="impossible-count"),
        pytest.param(b'{"version": 2, "boot_id": "\xff\xfe"}', id="not-utf8"),
        pytest.param("[]", id="not-an-object"),
        pytest.param("\x00" * 10, id="nul-bytes"),
    ],
)  # fmt: skip
def test_unusable_state_starts_fresh_and_status_says_so(
    base: list[str], tmp_path: Path, content: str | bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any hostile state content is 'unusable, starting fresh'; status reports it unusable, in strict JSON."""
    state = tmp_path / "state.json"
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    flags = [*base, *state_flags(state)]
    assert wd.main(["status", *flags], environ={}) == wd.OK
    assert "UNUSABLE" in capsys.readouterr().out
    assert wd.main(["status", "--json", *flags], environ={}) == wd.OK

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in status --json")

    report = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert report["state"] == "unusable" and report["problem"]
    assert wd.main(["run", *flags], environ={}) == wd.WARNING
    assert "unusable" in capsys.readouterr().out
    assert json.loads(state.read_text())["failures"] == 1


def test_non_utf8_from_systemctl_show_is_judged_not_a_crash(
    base: list[str], tmp_path: Path, systemctl: FakeSystemctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bytes that are not UTF-8 in `systemctl show` output: the run goes on and logs them escaped."""
    systemctl.set_unit()
    script = json.loads(systemctl.control.read_text())
    script["raw_show"] = "LoadState=loaded\nActiveState=active\nSubState=running\xff\x1b\nInvocationID=x\xfe\n"
    systemctl.control.write_text(json.dumps(script))
    assert wd.main(["run", *base, *state_flags(tmp_path / "s.json")], environ={}) == wd.WARNING
    out = capsys.readouterr().out
    assert "unit_state=active/running\\ufffd\\x1b" in out


def test_non_utf8_expect_body_and_environment_values(httpserver: HTTPServer, tmp_path: Path) -> None:
    """--expect-body and environment values with bytes that are not UTF-8 work as bytes, never crash."""
    httpserver.expect_request(HEALTH).respond_with_data(b"ok \xff\xfe here", status=200)
    url = httpserver.url_for(HEALTH)
    env = {os.fsencode(k): os.fsencode(v) for k, v in script_env().items()}
    env[b"LEADGEN_WATCHDOG_EXPECT_BODY"] = b"\xff\xfe"
    ok = subprocess.run([sys.executable, SCRIPT, "check", "--url", url], env=env, capture_output=True, timeout=20)
    assert ok.returncode == wd.OK, ok.stderr
    env[b"LEADGEN_WATCHDOG_EXPECT_BODY"] = b"\xfa\xfb"
    bad = subprocess.run([sys.executable, SCRIPT, "check", "--url", url], env=env, capture_output=True, timeout=20)
    assert bad.returncode == wd.CRITICAL and b"reason=body" in bad.stdout and b"\\udcfa\\udcfb" in bad.stdout
    env[b"LEADGEN_WATCHDOG_THRESHOLD"] = b"\xff"
    broken = subprocess.run([sys.executable, SCRIPT, "check", "--url", url], env=env, capture_output=True, timeout=20)
    assert broken.returncode == wd.UNKNOWN and broken.stderr.count(b"\n") == 1
    assert b"LEADGEN_WATCHDOG_THRESHOLD must be" in broken.stderr and b"\\udcff" in broken.stderr


# --- Rule 4: a URL that cannot work is a configuration error -----------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:73536/lead/health", id="port-above-65535"),
        pytest.param("http://127.0.0.1:0/lead/health", id="port-0"),
        pytest.param("http://127.0.0.1:80a/lead/health", id="port-not-a-number"),
        pytest.param("http://127.0.0.1:-1/lead/health", id="port-negative"),
        pytest.param("http://admin:secret@127.0.0.1:8000/lead/health", id="user-password"),
        pytest.param("http://127.0.0.1:8000/lead/h\u00e9alth", id="non-ascii-path"),
        pytest.param("http://127.0.0.1:8000/lead/health\x07", id="bell"),
        pytest.param("http://127.0.0.1:8000/lead/health\r\nX: y", id="crlf"),
        pytest.param("http://[::1:8000/lead/health", id="broken-ipv6"),
        pytest.param("http://127.0.0.1:18082:80/lead/health", id="two-ports"),
        pytest.param("http://api.example:8000/lead/health", id="a-name-to-look-up"),
    ],
)
def test_url_that_cannot_work_is_a_configuration_error(
    url: str, tmp_path: Path, systemctl: FakeSystemctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3, one line naming --url, no probe, no state, and a password never echoed."""
    code = wd.main(["run", "--url", url, "--systemctl", systemctl.path, *state_flags(tmp_path / "s.json")], environ={})
    err = capsys.readouterr().err
    assert code == wd.UNKNOWN and err.count("\n") == 1 and "--url must be" in err
    assert not (tmp_path / "s.json").exists() and systemctl.calls() == []


def test_ipv6_loopback_url_with_port_is_accepted(httpserver: HTTPServer) -> None:
    """The URL rules do not reject a bracketed IPv6 literal with a port."""
    cfg = wd.build_config({"url": "http://[::1]:8000/lead/health"}, {})
    assert cfg.url == "http://[::1]:8000/lead/health"


# --- Rule 5: every line reaches the journal at its priority ------------------


def test_errors_on_stderr_carry_a_priority_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """A bad setting under systemd: '<3>' on stderr, so LogLevelMax=notice keeps it."""
    out = tmp_path / "stream"
    with open(out, "w") as stream:
        info = os.fstat(stream.fileno())
        env = script_env(JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}", LEADGEN_WATCHDOG_THRESHOLD="zero")
        proc = subprocess.run([sys.executable, SCRIPT, "run"], stdout=stream, stderr=stream, env=env, timeout=20)
    assert proc.returncode == wd.UNKNOWN
    assert (
        out.read_text()
        == "<3>leadgen_watchdog.py: LEADGEN_WATCHDOG_THRESHOLD must be an integer from 1 to 1000, got 'zero'\n"
    )


# --- Rule 6: output is safe to show ------------------------------------------

HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\x00\x08\x7f\u009b"


def test_control_characters_from_the_server_are_escaped_everywhere(
    httpserver: HTTPServer, systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ESC, BEL, CR, NUL, DEL and C1 from the body never reach a log line, the state, check or status raw."""
    httpserver.expect_request(HEALTH).respond_with_data(HOSTILE.encode(), status=503)
    flags = ["--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, *state_flags(tmp_path / "s.json")]
    wd.main(["run", *flags], environ={})
    wd.main(["check", *flags], environ={})
    wd.main(["status", *flags], environ={})
    wd.main(["status", "--json", *flags], environ={})
    captured = capsys.readouterr()
    shown = captured.out + captured.err + (tmp_path / "s.json").read_text()
    assert not any(ch in shown for ch in "\x1b\x07\r\x00\x08\x7f\u009b")
    assert "\\x1b]0;owned\\x07" in captured.out


def test_control_characters_in_a_broken_status_line_are_escaped(raw_server, tmp_path: Path) -> None:
    """A garbage status line (the server's own bytes in the error) is shown escaped."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"\x1b[31mHELLO\x07\r\n\r\n")

    server: RawServer = raw_server(handle)
    result = wd.http_probe(wd.build_config({"url": server.url}, {}))
    assert result.reason == "protocol" and "\x1b" not in result.detail and "\x07" not in result.detail


# --- Rule 7: interim responses are skipped -----------------------------------


@pytest.mark.parametrize(
    "interim", [b"103 Early Hints\r\nLink: </a.css>; rel=preload", b"102 Processing", b"100 Continue"]
)
def test_interim_responses_before_the_final_200_are_healthy(raw_server, interim: bytes) -> None:
    """1xx responses before the final one are skipped (RFC 9110 15.2): a 103 then 200 is healthy."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 " + interim + b"\r\n\r\n")
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server: RawServer = raw_server(handle)
    result = wd.http_probe(wd.build_config({"url": server.url}, {}))
    assert (result.ok, result.status) == (True, 200)


def test_endless_interim_responses_are_a_protocol_failure(raw_server) -> None:
    """A server that only ever sends 1xx does not make the probe healthy."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 40)

    server: RawServer = raw_server(handle)
    result = wd.http_probe(wd.build_config({"url": server.url, "timeout": "2"}, {}))
    assert not result.ok


# --- Rule 8: status --json has one schema -------------------------------------


def test_status_json_has_one_key_set_with_or_without_state(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No state, a usable state and an unusable one give the same keys, null where unknown."""
    state = tmp_path / "state.json"
    flags = [*base, *state_flags(state)]

    def report() -> dict:
        capsys.readouterr()
        assert wd.main(["status", "--json", *flags], environ={}) == wd.OK
        return json.loads(capsys.readouterr().out)

    none = report()
    wd.main(["run", *flags], environ={})
    usable = report()
    state.write_text("{")
    unusable = report()
    assert set(none) == set(usable) == set(unusable) == set(wd.STATUS_KEYS)
    assert (none["state"], none["failures"], none["last_check"]) == ("none", None, None)
    assert (usable["state"], usable["failures"], usable["healthy"]) == ("ok", 1, False)
    assert unusable["state"] == "unusable" and unusable["failures"] is None


def test_docs_document_every_status_json_key() -> None:
    """docs/configuration.md's status --json table names every key, so monitoring scripts can rely on it."""
    doc = (Path(SCRIPT).parent / "docs/configuration.md").read_text()
    section = doc.split("\n## status --json\n", 1)[1].split("\n#", 1)[0]
    for key in wd.STATUS_KEYS:
        assert f"| `{key}` |" in section, key


# --- Rule 9: pause and resume never lose to a probing run ---------------------


def test_pause_while_a_run_probes_a_hung_api_succeeds_and_survives_the_run(
    raw_server, systemctl: FakeSystemctl, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pause` while a run holds the lock returns 0 at once; the run finishing afterwards keeps it paused."""
    probing = threading.Event()

    def hang(conn: socket.socket) -> None:
        probing.set()
        time.sleep(8)

    server: RawServer = raw_server(hang)
    state = tmp_path / "state.json"
    flags = ["--url", server.url, "--systemctl", systemctl.path, "--timeout", "3", "--retry-interval", "0"]
    flags += [*state_flags(state), "--threshold", "1"]
    run = subprocess.Popen([sys.executable, SCRIPT, "run", *flags], env=script_env(), stdout=subprocess.PIPE, text=True)
    assert probing.wait(20)  # the run holds the state lock while it probes
    assert wd.main(["pause", "10m", *flags], environ={}) == wd.OK
    assert run.wait(timeout=30) == wd.WARNING
    assert "not counted: watchdog paused" in run.stdout.read()
    assert systemctl.calls("restart") == []
    capsys.readouterr()
    wd.main(["status", "--json", *flags], environ={})
    assert json.loads(capsys.readouterr().out)["paused"] is True


def test_pause_and_resume_reach_the_system_log(
    base: list[str], tmp_path: Path, syslog_lines: list[tuple[int, str]]
) -> None:
    """By hand (stdout not the journal), pause and resume also go to syslog under the watchdog's identifier."""
    flags = [*base, *state_flags(tmp_path / "s.json")]
    wd.main(["pause", "15m", *flags], environ={})
    wd.main(["resume", *flags], environ={})
    assert [p for p, _ in syslog_lines] == [wd.NOTICE, wd.NOTICE]
    assert "watchdog paused for 15m" in syslog_lines[0][1] and "watchdog resumed" in syslog_lines[1][1]


# --- Rule 10: the command line sees the timer's configuration -----------------


def test_command_line_reads_watchdog_env_below_environment_and_flags(
    httpserver: HTTPServer, watchdog_env_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """defaults < watchdog.env < environment < flags; check probes the configured URL; status shows its limits."""
    httpserver.expect_request("/configured").respond_with_data("ok")
    watchdog_env_file.write_text(
        "# settings\n"
        f'LEADGEN_WATCHDOG_URL="{httpserver.url_for("/configured")}"\n'
        "LEADGEN_WATCHDOG_THRESHOLD='1'\n"
        "LEADGEN_WATCHDOG_MAX_RESTARTS=1\n"
        f"LEADGEN_WATCHDOG_STATE_FILE={tmp_path / 'state.json'}\n"
    )
    assert wd.main(["check"], environ={}) == wd.OK
    assert "url=" + httpserver.url_for("/configured") in capsys.readouterr().out
    wd.main(["status"], environ={})
    out = capsys.readouterr().out
    assert "failures" not in out or "/1" in out
    assert wd.build_config({}, {}).threshold == 3  # the file is not in the defaults
    wd.main(["status", "--json"], environ={"LEADGEN_WATCHDOG_THRESHOLD": "7"})
    assert json.loads(capsys.readouterr().out)["threshold"] == 7
    wd.main(["status", "--json", "--threshold", "9"], environ={"LEADGEN_WATCHDOG_THRESHOLD": "7"})
    report = json.loads(capsys.readouterr().out)
    assert (report["threshold"], report["max_restarts"]) == (9, 1)


@pytest.mark.parametrize(
    ("line", "culprit"),
    [
        pytest.param("LEADGEN_WATCHDOG_THRESHOLD=zero", "LEADGEN_WATCHDOG_THRESHOLD must be", id="bad-value"),
        pytest.param("THRESHOLD 3", ":2: not a NAME=value line", id="not-key-value"),
        pytest.param(
            'LEADGEN_WATCHDOG_URL="http://x', ":2: the value of LEADGEN_WATCHDOG_URL must be", id="open-quote"
        ),
    ],
)
def test_bad_watchdog_env_is_one_line_naming_the_culprit(
    watchdog_env_file: Path, line: str, culprit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad line in watchdog.env: exit 3, one line naming the file and line or the variable."""
    watchdog_env_file.write_text("# ok\n" + line + "\n")
    assert wd.main(["check"], environ={}) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and culprit in err


def test_watchdog_env_that_is_a_fifo_does_not_block(
    watchdog_env_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO where watchdog.env should be: exit 3 at once, not a hang."""
    watchdog_env_file.unlink()
    os.mkfifo(watchdog_env_file)
    assert wd.main(["status"], environ={}) == wd.UNKNOWN
    assert "not a regular file" in capsys.readouterr().err


# --- Rule 11: typos are visible ----------------------------------------------


def test_unknown_watchdog_variable_gets_a_notice_naming_it(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """LEADGEN_WATCHDOG_TRESHOLD (a typo) is named in one notice; the command still runs."""
    code = wd.main(["status", *state_flags(tmp_path / "s.json")], environ={"LEADGEN_WATCHDOG_TRESHOLD": "1"})
    assert code == wd.OK
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown setting LEADGEN_WATCHDOG_TRESHOLD" in err


def readable_copy(directory: Path) -> str:
    """The script copied where another user can read it (the checkout may sit in a 0700 directory)."""
    copy = directory / "leadgen_watchdog.py"
    shutil.copy(SCRIPT, copy)
    copy.chmod(0o644)
    return str(copy)


def test_files_root_writes_are_handed_to_the_watchdogs_own_user(tmp_path: Path) -> None:
    """`sudo leadgen-watchdog pause` in a directory owned by the watchdog's user: that user can still run."""
    if os.geteuid() != 0:
        pytest.fail("this test changes owners: run the suite as root, as .ci/run does", pytrace=False)
    shared = Path(tempfile.mkdtemp(prefix="lg-user-"))  # outside root's 0700 pytest tree
    try:
        os.chmod(shared, 0o755)
        runtime = shared / "run"
        runtime.mkdir(mode=0o700)
        os.chown(runtime, 65534, 65534)
        state = runtime / "state.json"
        flags = ["--url", "http://127.0.0.1:9/lead/health", "--systemctl", "/bin/false", "--retry-interval", "0"]
        flags += state_flags(state)
        assert wd.main(["pause", "5m", *flags], environ={}) == wd.OK
        with wd.StateLock(str(state)):
            pass
        for name in ("state.json.pause", "state.json.lock"):
            assert os.stat(runtime / name).st_uid == 65534, name
        proc = subprocess.run(
            ["/usr/bin/python3", readable_copy(shared), "run", *flags], user=65534, group=65534, env=script_env(),
            capture_output=True, text=True, timeout=20, cwd="/",
        )  # fmt: skip
        assert proc.returncode == wd.WARNING, proc.stderr
        assert "not counted: watchdog paused" in proc.stdout
    finally:
        shutil.rmtree(shared)


def test_under_systemd_an_unreadable_watchdog_env_is_silent(
    watchdog_env_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A readable watchdog.env is always read, under a unit (INVOCATION_ID) too: a service running
    `leadgen-watchdog pause` still finds the configured state file."""
    watchdog_env_file.write_text("LEADGEN_WATCHDOG_MAX_RESTARTS=7\n")
    assert wd.main(["status", "--json"], environ={"INVOCATION_ID": "x"}) == wd.OK
    assert json.loads(capsys.readouterr().out)["max_restarts"] == 7


def test_an_unreadable_watchdog_env_is_a_notice_by_hand_and_silent_under_the_unit(tmp_path: Path) -> None:
    """As the watchdog's own user, a root-only watchdog.env: one notice by hand; nothing under systemd."""
    if os.geteuid() != 0:
        pytest.fail("this test changes users: run the suite as root, as .ci/run does", pytrace=False)
    shared = Path(tempfile.mkdtemp(prefix="lg-env-"))
    try:
        os.chmod(shared, 0o755)
        env_file = shared / "watchdog.env"
        env_file.write_text("LEADGEN_WATCHDOG_THRESHOLD=2\n")
        env_file.chmod(0o600)
        code = f"import sys; sys.path.insert(0, {str(Path(readable_copy(shared)).parent)!r}); "
        code += "import leadgen_watchdog as wd; "
        code += f"wd.ENV_FILE = {str(env_file)!r}; sys.exit(wd.main(['check', '--url', 'http://127.0.0.1:9/'], "
        for environ, notices in (("{}", 1), ("{'INVOCATION_ID': 'x'}", 0)):
            proc = subprocess.run(
                ["/usr/bin/python3", "-c", code + f"{environ}))"], user=65534, group=65534,
                capture_output=True, text=True, timeout=20, cwd="/",
            )  # fmt: skip
            assert proc.stderr.count("cannot read") == notices, proc.stderr
    finally:
        shutil.rmtree(shared)


# --- Found by a hostile review -------------------------------------------------


def test_a_run_killed_between_the_write_ahead_and_the_restart_does_not_block_the_next_one(
    base: list[str], tmp_path: Path, systemctl: FakeSystemctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """The intent was saved, then the run died before `systemctl restart`: the budget counts it, the next
    streak may still restart (the InvocationID is unchanged because nothing was restarted)."""
    state = tmp_path / "state.json"
    cfg = wd.build_config({"state_file": str(state), "threshold": "1", "min_outage": "0"}, {})
    unit = wd.UnitStatus("loaded", "active", "running", 1.0, "invocation-1")
    boot = wd.this_boot(wd.CLOCK)
    fresh = wd.State(boot_id=boot[0], boot_time=boot[1])
    failed = wd.CheckResult(False, "status", "HTTP 503", 503)
    intent = wd.decide(fresh, failed, unit, cfg, wd.CLOCK.monotonic(), wd.CLOCK.wall())
    assert intent.action == "restart"
    wd.save_state(str(state), intent.state)  # ... and here the run was killed
    assert wd.main(["run", *base, *state_flags(state), "--threshold", "1"], environ={}) == wd.WARNING
    assert len(systemctl.calls("restart")) == 1
    saved = json.loads(state.read_text())
    assert len(saved["restarts"]) == 2 and saved["last_restart"]["ok"] is True
    assert "killed during or just after its restart" in capsys.readouterr().out


def test_stale_temporary_files_of_killed_runs_are_removed(base: list[str], tmp_path: Path) -> None:
    """The temporary files of the state, pause and metrics files left by a dead process are removed by the
    next run."""
    state, prom = tmp_path / "state.json", tmp_path / "m.prom"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    leftovers = [f".{name}.{pid}.0123456789abcdef.tmp" for name in ("state.json", "state.json.pause", "m.prom")]
    for leftover in leftovers:
        (tmp_path / leftover).write_text("half")
    wd.main(["run", *base, *state_flags(state), "--metrics-file", str(prom)], environ={})
    assert sorted(p.name for p in tmp_path.iterdir() if f".{pid}." in p.name) == []


def test_healthy_api_with_a_broken_systemctl_is_unknown(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A healthy probe but no way to ask systemd (so no way to restart): exit 3 and an error line, not silence."""
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    flags = ["--url", httpserver.url_for(HEALTH), "--systemctl", "/bin/false", *state_flags(tmp_path / "s.json")]
    assert wd.main(["run", *flags], environ={}) == wd.UNKNOWN
    assert "health check ok, but the watchdog cannot ask systemd: systemctl show exited 1" in capsys.readouterr().out


@pytest.mark.parametrize("duration", ["30m", "24h"])
def test_pause_while_a_run_asks_systemd_wins_over_its_restart(
    base: list[str], tmp_path: Path, systemctl: FakeSystemctl, duration: str
) -> None:
    """`pause` returns while the run waits on `systemctl show`: the restart it was about to make is dropped.
    Also the longest pause: it ends 24h after the pause, which is later than 24h after the run's probe."""
    systemctl.behave("show", sleep=3)
    state = tmp_path / "state.json"
    flags = [*base, *state_flags(state), "--threshold", "1"]
    run = subprocess.Popen([sys.executable, SCRIPT, "run", *flags], env=script_env(), stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not systemctl.calls("show") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wd.main(["pause", duration, *flags], environ={}) == wd.OK
    assert run.wait(timeout=30) == wd.WARNING
    assert systemctl.calls("restart") == []
    assert "not counted: watchdog paused" in run.stdout.read()


def test_a_log_stream_that_fails_never_stops_a_restart(
    base: list[str], tmp_path: Path, systemctl: FakeSystemctl
) -> None:
    """stdout a closed pipe: the run still counts and restarts (logging is not a precondition)."""

    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    cfg = wd.build_config({"url": base[1], "systemctl": systemctl.path, "state_file": str(tmp_path / "s.json"),
                           "threshold": "1", "retry_interval": "0", "min_outage": "0"}, {})  # fmt: skip
    assert wd.run_once(cfg, wd.Log(journal=False, verbose=True, stream=Closed())) == wd.WARNING
    assert len(systemctl.calls("restart")) == 1


def test_a_symlinked_pause_file_is_replaced_by_the_next_pause(base: list[str], tmp_path: Path) -> None:
    """A symlink at the pause file is never followed: run ignores it, pause replaces it, its target is kept."""
    state = tmp_path / "state.json"
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    Path(f"{state}.pause").symlink_to(target)
    flags = [*base, *state_flags(state)]
    assert wd.main(["run", *flags], environ={}) == wd.WARNING
    assert wd.main(["pause", "5m", *flags], environ={}) == wd.OK
    assert not Path(f"{state}.pause").is_symlink() and target.read_text() == "keep\n"


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_watchdog_env_that_is_not_a_file_is_one_line_and_exit_3(
    watchdog_env_file: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory or socket where watchdog.env should be: one line naming it, exit 3 (not an internal error)."""
    watchdog_env_file.unlink()
    make_special(watchdog_env_file, kind)
    assert wd.main(["status"], environ={}) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(watchdog_env_file) in err and "internal error" not in err


def test_a_resume_of_nothing_does_not_reset_the_count() -> None:
    """A script calling `resume` every minute cannot hold off a restart; a resume that ends a pause resets."""
    state = wd.State(failures=2, pause_id="a")
    after, _ = wd.with_pause(state, wd.Pause(id="b"), now=100.0)
    assert after.failures == 2
    paused = state._replace(paused_until=200.0)
    after, _ = wd.with_pause(paused, wd.Pause(id="c"), now=100.0)
    assert after.failures == 0 and after.paused_until is None


def test_a_run_that_could_outlive_the_unit_counts_reset_failed_and_the_lock_wait(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--timeout 60 + --restart-timeout 70 fit show + restart, but not reset-failed and the lock wait too."""
    assert wd.main(["check", "--timeout", "60", "--restart-timeout", "70"], environ={}) == wd.UNKNOWN
    assert "= 153s: more than the 140s a run may take" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["pause file", "state file"])
def test_a_pause_longer_than_24h_is_unusable_and_ignored(
    base: list[str], systemctl: FakeSystemctl, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pause` allows at most 24h; a hand-edited pause ten years ahead pauses nothing: counted, restarted."""
    state = tmp_path / "state.json"
    flags = [*base, *state_flags(state), "--threshold", "1", "--grace", "0"]
    assert wd.main(["pause", "10m", *flags], environ={}) == wd.OK
    ten_years = 10 * 365 * 86400
    if where == "pause file":
        path = Path(f"{state}.pause")
        pause = json.loads(path.read_text())
        path.write_text(json.dumps({**pause, "until": pause["until"] + ten_years}))
    else:
        assert wd.main(["run", *flags], environ={}) == wd.WARNING  # paused: the state now carries the pause
        Path(f"{state}.pause").unlink()
        saved = json.loads(state.read_text())
        state.write_text(json.dumps({**saved, "paused_until": saved["paused_until"] + ten_years}))
    capsys.readouterr()
    wd.main(["run", *flags], environ={})
    assert "not counted: watchdog paused" not in capsys.readouterr().out
    assert len(systemctl.calls("restart")) == 1
    wd.main(["status", "--json", *flags], environ={})
    report = json.loads(capsys.readouterr().out)
    assert report["paused"] is False and report["paused_for"] == 0.0


def test_status_shows_the_pause_the_state_carries_when_the_pause_file_is_gone(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run copied the pause into the state, then the pause file went: the next run is paused, so status says so."""
    state = tmp_path / "state.json"
    flags = [*base, *state_flags(state)]
    assert wd.main(["pause", "10m", *flags], environ={}) == wd.OK
    assert wd.main(["run", *flags], environ={}) == wd.WARNING
    Path(f"{state}.pause").unlink()
    capsys.readouterr()
    wd.main(["run", *flags], environ={})
    assert "not counted: watchdog paused" in capsys.readouterr().out
    wd.main(["status", "--json", *flags], environ={})
    report = json.loads(capsys.readouterr().out)
    assert report["paused"] is True and 9 * 60 < report["paused_for"] <= 10 * 60
    assert report["paused_until"] == pytest.approx(json.loads(state.read_text())["paused_until_wall"], abs=1)
    assert wd.main(["resume", *flags], environ={}) == wd.OK
    assert "watchdog resumed (by hand" in capsys.readouterr().out  # not "(it was not paused)"


# --- Issue 18: the third hostile round ------------------------------------------

RACER = r"""
import os, sys, time
stop, targets, dirs = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
seen, swaps, end = set(), 0, time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < end:
    for directory in dirs:
        try:
            seen.update(os.path.join(directory, name) for name in os.listdir(directory) if ".racer" not in name)
        except OSError:
            pass
    for path in list(seen):
        try:
            if os.path.islink(path) or not os.path.exists(path):
                continue
            link = f"{path}.racer"
            os.symlink(targets[swaps % len(targets)], link)
            os.rename(link, path)
            swaps += 1
        except OSError:
            pass
print(swaps)
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside root's 0700 pytest tree, so another user can reach what is in it."""
    if os.geteuid() != 0:
        pytest.fail("this test changes users: run the suite as root, as .ci/run does", pytrace=False)
    shared = Path(tempfile.mkdtemp(prefix="lg-race-"))
    os.chmod(shared, 0o755)
    try:
        yield shared
    finally:
        shutil.rmtree(shared)


def test_no_path_call_follows_a_link_where_another_identity_can_write(
    httpserver: HTTPServer, systemctl: FakeSystemctl, shared_dir: Path
) -> None:
    """Rule 1: a racer running as another uid keeps swapping every name it sees in the runtime and textfile
    directories for symlinks to root's files, while root runs pause, resume and run --metrics-file: no
    target's mode, owner, inode or content changes."""
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    secret = shared_dir / "secret"
    secret.mkdir(mode=0o700)
    targets = []
    for name in ("shadow", "passwd", "sudoers"):
        target = secret / name
        target.write_text(f"{name}: root only\n")
        target.chmod(0o640)
        targets.append(target)
    before = {t: (os.lstat(t).st_mode, os.lstat(t).st_uid, os.lstat(t).st_ino, t.read_bytes()) for t in targets}
    runtime, textfile = shared_dir / "run", shared_dir / "textfile"
    for directory in (runtime, textfile):
        directory.mkdir(mode=0o755)
        os.chown(directory, 65534, 65534)
    stop = shared_dir / "stop"
    racer = subprocess.Popen(
        ["/usr/bin/python3", "-c", RACER, str(stop), ",".join(map(str, targets)), str(runtime), str(textfile)],
        user=65534, group=65534, stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    flags = ["--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, "--retry-interval", "0"]
    flags += [*state_flags(runtime / "state.json"), "--metrics-file", str(textfile / "leadgen.prom")]
    try:
        for _ in range(150):
            for command in (["pause", "5m"], ["resume"], ["run"]):
                wd.main([*command, *flags], environ={})
    finally:
        stop.touch()
        swaps = int(racer.communicate(timeout=30)[0])
    assert swaps > 50  # the racer was there
    after = {t: (os.lstat(t).st_mode, os.lstat(t).st_uid, os.lstat(t).st_ino, t.read_bytes()) for t in targets}
    assert after == before


@pytest.mark.parametrize(
    "name",
    ["state.json.20261206", "state.json.99999999999999999999", "state.json.bak", "m.prom.bak", "m.prom.12"],
)
def test_cleanup_never_deletes_or_dies_on_what_it_did_not_write(
    base: list[str], tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule 9: an operator's file beside the state or metrics file survives the sweep, and never stops a run."""
    state, prom = tmp_path / "state.json", tmp_path / "m.prom"
    (tmp_path / name).write_text("the operator's\n")
    assert wd.main(["run", *base, *state_flags(state), "--metrics-file", str(prom)], environ={}) == wd.WARNING
    assert (tmp_path / name).read_text() == "the operator's\n"
    assert "internal error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "systemd_reads"),
    [
        pytest.param(b"LEADGEN_WATCHDOG_THRESHOLD=1\\", "1LEADGEN_WATCHDOG_MAX_RESTARTS=0", id="trailing-backslash"),
        pytest.param(b"# threshold 1\\", "(the next line swallowed)", id="comment-backslash"),
        pytest.param(b"LEADGEN_WATCHDOG_THRESHOLD=1\r", "1 (CR dropped)", id="crlf"),
        pytest.param(b'LEADGEN_WATCHDOG_URL="http://127.0.0.1:8000/x', "the rest of the file", id="open-quote"),
        pytest.param(b'LEADGEN_WATCHDOG_EXPECT_BODY="a" b', "ab", id="text-after-quotes"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY=a\\tb", "atb", id="backslash-escape"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY=ok ", "ok (space dropped)", id="trailing-space"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY= ok", "ok (space dropped)", id="leading-space"),
        pytest.param(b"LEADGEN_WATCHDOG_THRESHOLD =1", "1", id="space-before-equals"),
        pytest.param(b" LEADGEN_WATCHDOG_THRESHOLD=1", "1", id="space-before-name"),
        pytest.param(b"export LEADGEN_WATCHDOG_THRESHOLD=1", "(nothing)", id="export"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY=\tok", "ok (tab dropped)", id="tab"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY=\x1b[2Jok", "ESC [2J ok", id="control-character"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY=\xffok", "(the unit does not start)", id="not-utf-8"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY=$HOME", "$HOME", id="dollar"),
        pytest.param(b"LEADGEN_WATCHDOG_EXPECT_BODY='a\"b'", 'a"b', id="quote-inside-quotes"),
        pytest.param(b"   ", "(nothing)", id="blank-with-spaces"),
    ],
)
def test_watchdog_env_means_the_same_to_the_command_line_and_to_systemd(
    watchdog_env_file: Path, line: bytes, systemd_reads: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule 5: a line systemd's EnvironmentFile= parser may read differently (tests/e2e/test_envfile.py shows
    how it reads each) is refused: exit 3, one line naming the file and line number, before any probe."""
    watchdog_env_file.write_bytes(b"# settings\n" + line + b"\nLEADGEN_WATCHDOG_MAX_RESTARTS=0\n")
    assert wd.main(["check", "--url", "http://127.0.0.1:9/"], environ={}) == wd.UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{watchdog_env_file}:2: " in err, err


def incident_state(tmp_path: Path, base: list[str]) -> Path:
    """A state written by this version in the middle of an incident: one restart spent, a human alerted."""
    state = tmp_path / "state.json"
    flags = [*base, *state_flags(state), "--threshold", "1", "--max-restarts", "1"]
    wd.main(["run", *flags], environ={})  # restarted
    assert wd.main(["run", *flags], environ={}) == wd.CRITICAL  # withheld: a human is needed
    return state


def kept(report: dict) -> tuple:
    return report["restarts_in_window"], report["restarts_total"]["ok"], report["human_needed"], report["last_alert"]


@pytest.mark.parametrize("change", ["field-added", "field-removed", "incompatible-version"])
def test_the_state_survives_an_upgrade_and_a_rollback(
    base: list[str], tmp_path: Path, change: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule 8: a state from a newer version (an unknown field), an older one (a field missing) or another
    STATE_VERSION keeps the budget, the restarts, the incident and the alert time; the next run still
    withholds the restart the budget does not allow."""
    state = incident_state(tmp_path, base)
    flags = [*base, *state_flags(state), "--threshold", "1", "--max-restarts", "1"]
    capsys.readouterr()
    wd.main(["status", "--json", *flags], environ={})
    before = kept(json.loads(capsys.readouterr().out))
    data = json.loads(state.read_text())
    if change == "field-added":
        data["a_field_of_a_newer_version"] = {"x": 1}
        data["last_check"]["a_newer_check_field"] = True
    elif change == "field-removed":
        del data["summary_checks"], data["unit_stale"], data["last_check"]["note"]
    else:
        data["version"] = wd.STATE_VERSION + 1
        data["failures"] = "a different meaning"
    state.write_text(json.dumps(data))
    wd.main(["status", "--json", *flags], environ={})
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "ok" and kept(report) == before
    wd.main(["run", *flags], environ={})
    assert "restart budget exhausted" in capsys.readouterr().out


def test_the_state_of_a_copy_with_a_field_added_reads_both_ways(base: list[str], tmp_path: Path) -> None:
    """Rule 8 with a real copy of the script that has one more state field: it reads this version's state,
    and this version reads the state it writes, each keeping the budget and the incident."""
    copy = tmp_path / "newer" / "leadgen_watchdog.py"
    copy.parent.mkdir()
    text = Path(SCRIPT).read_text()
    anchor = '    Field("restarts_unknown", _count, 0),'
    assert anchor in text
    copy.write_text(text.replace(anchor, anchor + '\n    Field("a_newer_field", _count, 7),'))
    state = incident_state(tmp_path, base)
    flags = [*base, *state_flags(state), "--threshold", "1", "--max-restarts", "1"]

    def status(script: str) -> dict:
        proc = subprocess.run(
            [sys.executable, script, "status", "--json", *flags], env=script_env(), capture_output=True, text=True
        )
        return json.loads(proc.stdout)

    before = kept(status(SCRIPT))
    assert status(str(copy))["state"] == "ok" and kept(status(str(copy))) == before
    subprocess.run([sys.executable, str(copy), "run", *flags], env=script_env(), capture_output=True, check=False)
    assert json.loads(state.read_text())["a_newer_field"] == 7
    assert status(SCRIPT)["state"] == "ok" and kept(status(SCRIPT)) == before


def test_everything_read_from_disk_is_cleaned_on_output(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule 7: escape sequences and newlines planted in the state's text fields never reach the terminal,
    status --json or a log line raw."""
    state = incident_state(tmp_path, base)
    data = json.loads(state.read_text())
    evil = "\x1b]0;owned\x07\x1b[2J\nFAKE: line\r\u202e"
    data["unit_stale"] = "stale " + evil
    data["last_check"]["detail"] = "detail " + evil
    data["last_check"]["note"] = "note " + evil
    data["last_restart"]["detail"] = "restart " + evil
    state.write_text(json.dumps(data))
    flags = [*base, *state_flags(state)]
    capsys.readouterr()
    wd.main(["status", *flags], environ={})
    wd.main(["status", "--json", *flags], environ={})
    out = capsys.readouterr().out
    for raw in ("\x1b", "\x07", "\r", "\u202e", "\\u001b", "\nFAKE"):  # raw, or JSON-escaped raw
        assert raw not in out, raw
    assert "stale \\x1b]0;owned\\x07" in out
