#!/usr/bin/python3
"""Restart motorcade-leadgen-api.service when its health check keeps failing.

A systemd timer runs `leadgen_watchdog.py run` every 30 s. Each run probes
GET http://127.0.0.1:8000/lead/health once, keeps a consecutive-failure count
in a state file under /run, and runs `systemctl restart` on the unit when the
count reaches the threshold, within a restart budget. Operators run `check`
for a one-off probe, `status` to read the state, and `pause` / `resume`
around deploys.

Commands:
  run             one watchdog cycle (the default)
  check           probe once and print a verdict; never restarts, writes nothing
  status [--json] print the saved state; no probe
  pause [DUR]     stop counting and restarting for DUR (default 30m, max 24h)
  resume          end a pause

Every option has an environment variable LEADGEN_WATCHDOG_<NAME>; flags beat
environment beats defaults. See --help.

Exit codes (monitoring-plugins convention):
  0 OK        healthy
  1 WARNING   unhealthy but handled: below threshold, in grace, paused,
              unit not active, restarted, or skipped (another run holds the lock)
  2 CRITICAL  a restart was due and failed, or the restart budget withheld it
  3 UNKNOWN   the watchdog could not work: bad configuration, state not
              writable, systemctl missing, unit not found
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import json
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for annotations only: importing typing costs 2 ms a start
    from typing import Callable, Mapping, Optional

VERSION = "2.0.0"
PROG = "leadgen_watchdog.py"
ENV_PREFIX = "LEADGEN_WATCHDOG_"
STATE_VERSION = 1
BODY_CAP = 64 * 1024  # bytes of the health body read at most
EXCERPT_CHARS = 120  # body characters shown in a log line
LOCK_WAIT = 3.0  # seconds a run waits for another run's lock before skipping
SHOW_TIMEOUT = 10.0  # seconds for `systemctl show` / `reset-failed`
PAUSE_DEFAULT = "30m"
PAUSE_MAX = 24 * 3600
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_SLACK = 2.0  # seconds two views of one boot's start time may differ by

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3

# sd-daemon(3) priority prefixes, understood by journald on a stdout stream.
CRIT, ERR, WARN, NOTICE, INFO = 2, 3, 4, 5, 6

# Unit states in which a failing probe is expected and not the API's fault.
TRANSITIONAL = ("activating", "deactivating", "reloading")


class WatchdogError(Exception):
    """An expected failure: one line for the operator and an exit code."""

    def __init__(self, message: str, code: int = UNKNOWN) -> None:
        super().__init__(message)
        self.code = code


# --- Configuration ----------------------------------------------------------


def parse_duration(text: str) -> float:
    """'90', '1.5', '90s', '15m', '2h' -> seconds; ValueError otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def parse_status_list(text: str) -> tuple:
    """'200,204,300-302' -> ((200, 200), (204, 204), (300, 302))."""
    ranges = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", part)
        if not match:
            raise ValueError(text)
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 100 <= low <= high <= 599:
            raise ValueError(text)
        ranges.append((low, high))
    return tuple(ranges)


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(text)
    return value in ("1", "true", "yes", "on")


def integer(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise ValueError(text)
        return int(text)

    return convert


def seconds(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        value = parse_duration(text)
        if not low <= value <= high or value == 0 < low:
            raise ValueError(text)
        return value

    return convert


def http_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"[\x00-\x20\x7f]", text):
        raise ValueError(text)
    return text


def unit_name(text: str) -> str:
    if len(text) > 255 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9:_.@-]*\.service", text):
        raise ValueError(text)
    return text


def file_path(text: str) -> str:
    if not text.strip() or text.endswith("/") or os.path.isdir(text):
        raise ValueError(text)
    return text


def nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text


# Records are namedtuples, not frozen dataclasses: the dataclasses module and
# its class setup cost 17 ms a start, a third of the whole check (bench/).


class Option(namedtuple("Option", "flag default convert rule help")):
    """A setting: --flag, its default text, converter, the rule it must meet, help."""

    __slots__ = ()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag[2:].upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


DURATION = "(like 90, 90s, 15m, 2h)"
OPTIONS = (
    Option("--url", "http://127.0.0.1:8000/lead/health", http_url,
           "an http:// or https:// URL with a host and no spaces", "health URL to probe"),
    Option("--unit", "motorcade-leadgen-api.service", unit_name,
           "a plain unit name like NAME.service", "systemd unit to restart"),
    Option("--threshold", "3", integer(1, 1000),
           "an integer from 1 to 1000", "consecutive counted failures that trigger a restart"),
    Option("--timeout", "5", seconds(0.001, 300),
           f"a duration above 0 and at most 300s {DURATION}", "deadline for the whole request"),
    Option("--grace", "60", seconds(0, 86400),
           f"a duration from 0 to 24h {DURATION}", "failures not counted this long after the unit became active"),
    Option("--max-restarts", "3", integer(0, 1000),
           "an integer from 0 to 1000", "restarts allowed within the window (0: never restart)"),
    Option("--restart-window", "1800", seconds(1, 7 * 86400),
           f"a duration from 1s to 7 days {DURATION}", "the restart budget's window"),
    Option("--restart-timeout", "90", seconds(0.001, 3600),
           f"a duration above 0 and at most 1h {DURATION}", "how long `systemctl restart` may take"),
    Option("--expect-status", "200-299", parse_status_list,
           "status codes 100-599 or ranges, like 200-299 or 200,204,300-302", "healthy status codes"),
    Option("--expect-body", None, nonempty,
           "a non-empty string", "a substring the body must contain"),
    Option("--state-file", "/run/motorcade-leadgen-watchdog/state.json", file_path,
           "a file path, not a directory", "the failure counter's state file"),
    Option("--systemctl", "systemctl", nonempty,
           "a command name or path", "the systemctl command"),
    Option("--verbose", "off", parse_bool,
           "one of 1, true, yes, on, 0, false, no, off", "also log healthy runs"),
)  # fmt: skip


# One field per option, named by Option.dest; expect_status holds (low, high) ranges.
Config = namedtuple("Config", [option.dest for option in OPTIONS])


def build_config(flags: Mapping[str, object], environ: Mapping[str, str]) -> Config:
    """Defaults < environment < flags; every value is validated here and only here."""
    values = {}
    for option in OPTIONS:
        raw, source = option.default, f"default of {option.flag}"
        if environ.get(option.env):  # an empty variable counts as unset
            raw, source = environ[option.env], option.env
        if option.dest in flags:
            raw, source = flags[option.dest], option.flag
        if raw is True:  # a bare --verbose
            raw = "on"
        try:
            values[option.dest] = None if raw is None else option.convert(raw)
        except ValueError:
            raise WatchdogError(f"{source} must be {option.rule}, got {raw!r}") from None
    return Config(**values)


# --- Records ----------------------------------------------------------------


# One probe: ok, reason (ok refused timeout status body protocol error), a
# detail for humans, the HTTP status if any, latency in seconds, a body excerpt.
CheckResult = namedtuple("CheckResult", "ok reason detail status latency body", defaults=(None, 0.0, ""))

# systemd's view of the unit; active_enter_monotonic in seconds of CLOCK_MONOTONIC, 0 if never active.
UnitStatus = namedtuple("UnitStatus", "load_state active_state sub_state active_enter_monotonic invocation_id")

# A finished command; returncode None when it timed out.
Completed = namedtuple("Completed", "returncode stdout stderr")

# The saved state. boot_id, boot_time: the boot whose monotonic clock the
# times below use (boot_time: wall clock at monotonic 0); failures: counted in
# a row; invocation_id: the unit's InvocationID at the last counted failure;
# failing_since(_mono): first failure in a row (wall, monotonic); restarts:
# monotonic times of restart attempts in the window; paused_until(_wall): end
# of a pause; last_check, last_restart: dicts for `status`; version: the format.
State = namedtuple(
    "State",
    "boot_id boot_time failures invocation_id failing_since failing_since_mono restarts "
    "paused_until paused_until_wall last_check last_restart version",
    defaults=(None, 0, "", None, None, (), None, None, None, None, STATE_VERSION),
)


class Clock:
    """Monotonic time for windows, wall time for display."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


CLOCK = Clock()


# --- Pure helpers -----------------------------------------------------------


def format_duration(seconds: float) -> str:
    seconds = round(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes}m" if not rest else f"{minutes}m{rest:02d}s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h" if not rest else f"{hours}h{rest // 60:02d}m"


def format_wall(stamp: Optional[float]) -> str:
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))


def kv(**fields: object) -> str:
    """key=value pairs, quoting values that hold spaces or quotes."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if not text or re.search(r'[\s"=\\]', text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def status_expected(status: int, ranges: tuple) -> bool:
    return any(low <= status <= high for low, high in ranges)


def excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def judge_response(cfg: Config, status: int, body: bytes, latency: float) -> CheckResult:
    shown = excerpt(body)
    if not status_expected(status, cfg.expect_status):
        return CheckResult(False, "status", f"HTTP {status}", status, latency, shown)
    if cfg.expect_body is not None and cfg.expect_body.encode() not in body:
        detail = f"body lacks {cfg.expect_body!r}"
        return CheckResult(False, "body", detail, status, latency, shown)
    return CheckResult(True, "ok", f"HTTP {status}", status, latency, shown)


def classify_error(error: BaseException, timeout: float) -> tuple:
    """Map an exception from urllib to (reason, detail)."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, (_Deadline, socket.timeout, TimeoutError)):
        return "timeout", f"no complete response within {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(error, (http.client.HTTPException, ConnectionResetError, BrokenPipeError)):
        name = type(error).__name__
        text = str(error).strip()
        return "protocol", f"{name}: {text}" if text else name
    if isinstance(error, ssl.SSLError):
        return "error", f"TLS: {error}"
    return "error", f"{type(error).__name__}: {error}"


def parse_show(text: str) -> UnitStatus:
    """Parse `systemctl show -p ...` key=value output."""
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        entered = int(props.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    except ValueError:
        entered = 0.0
    return UnitStatus(
        load_state=props.get("LoadState", ""),
        active_state=props.get("ActiveState", ""),
        sub_state=props.get("SubState", ""),
        active_enter_monotonic=entered,
        invocation_id=props.get("InvocationID", ""),
    )


def restarts_in_window(state: State, cfg: Config, now: float) -> tuple:
    return tuple(t for t in state.restarts if now - t < cfg.restart_window)


def paused_left(state: State, now: float) -> float:
    return max((state.paused_until or 0.0) - now, 0.0)


# What a failed probe means: action is ignore, count, restart or withhold.
Verdict = namedtuple("Verdict", "action failures why", defaults=("",))


def assess(state: State, unit: UnitStatus, cfg: Config, now: float) -> Verdict:
    """Decide what one failed probe means, given systemd's view of the unit."""
    if unit.active_state == "inactive":
        return Verdict("ignore", state.failures, "unit is inactive (stopped by an operator?)")
    if unit.active_state in TRANSITIONAL:
        return Verdict("ignore", state.failures, f"unit is {unit.active_state}")
    if unit.active_state == "active" and unit.active_enter_monotonic > 0:
        up = now - unit.active_enter_monotonic
        if up < cfg.grace:
            why = f"starting up: active for {format_duration(up)} of {format_duration(cfg.grace)} grace"
            return Verdict("ignore", state.failures, why)
    failures = state.failures
    why = ""
    if failures and unit.invocation_id and unit.invocation_id != state.invocation_id:
        failures, why = 0, "unit was restarted since the last failure (new InvocationID), count starts over"
    failures += 1
    if failures < cfg.threshold:
        return Verdict("count", failures, why)
    recent = restarts_in_window(state, cfg, now)
    if len(recent) >= cfg.max_restarts:
        if cfg.max_restarts == 0:
            why = "restarts disabled (--max-restarts 0)"
        else:
            next_in = min(recent) + cfg.restart_window - now
            why = (
                f"restart budget exhausted ({len(recent)} in the last {format_duration(cfg.restart_window)}), "
                f"next allowed in {format_duration(next_in)}"
            )
        return Verdict("withhold", failures, why)
    return Verdict("restart", failures, why)


# --- Side effects -----------------------------------------------------------


class Log:
    """One line per event on stdout; sd-daemon priority prefixes for journald."""

    def __init__(self, journal: bool, verbose: bool, stream=None) -> None:
        self.journal = journal
        self.verbose = verbose
        self.stream = stream

    def __call__(self, priority: int, message: str, **fields: object) -> None:
        if priority >= INFO and not self.verbose:
            return
        pairs = kv(**fields)
        line = f"{message} {pairs}" if pairs else message
        if self.journal:
            line = f"<{priority}>{line}"
        stream = self.stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()


def stdout_is_journal(environ: Mapping[str, str], stream=None) -> bool:
    """True when stdout is the journald stream systemd gave us (systemd.exec(5))."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat((stream or sys.stdout).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class _Deadline(BaseException):
    """Raised by SIGALRM inside the probe; BaseException so no library swallows it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Deadline()


class _KeepResponse(urllib.request.HTTPErrorProcessor):
    """Hand every response back as it is: no redirects followed, no HTTPError."""

    def http_response(self, request, response):
        return response

    https_response = http_response


def _fetch(cfg: Config) -> tuple:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _KeepResponse())
    request = urllib.request.Request(
        cfg.url, headers={"Connection": "close", "User-Agent": f"leadgen-watchdog/{VERSION}"}
    )
    with opener.open(request, timeout=cfg.timeout) as response:
        body = response.read(BODY_CAP)
        if len(body) < BODY_CAP and response.length:  # Content-Length promised more
            raise http.client.IncompleteRead(body, response.length)
        return response.status, body


def http_probe(cfg: Config) -> CheckResult:
    """GET the health URL once; --timeout bounds the whole request.

    Socket timeouts restart with every byte received, so a SIGALRM timer ends
    a trickling response at the deadline. Off the main thread (no signals)
    the socket timeout alone applies.
    """
    start = time.monotonic()
    try:
        try:
            previous = signal.signal(signal.SIGALRM, _on_alarm)
        except ValueError:  # not the main thread
            status, body = _fetch(cfg)
        else:
            try:
                signal.setitimer(signal.ITIMER_REAL, cfg.timeout)
                try:
                    status, body = _fetch(cfg)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            finally:
                signal.signal(signal.SIGALRM, previous)
    except (_Deadline, Exception) as error:  # every failure is a result
        reason, detail = classify_error(error, cfg.timeout)
        return CheckResult(False, reason, detail, latency=time.monotonic() - start)
    return judge_response(cfg, status, body, time.monotonic() - start)


def run_systemctl(argv: list, timeout: float) -> Completed:
    """Run one command with a timeout; WatchdogError when it cannot be run at all."""
    import subprocess

    try:
        proc = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr or b""
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        return Completed(None, "", text)
    except OSError as error:
        raise WatchdogError(f"--systemctl cannot be run: {argv[0]}: {error.strerror}") from None
    return Completed(proc.returncode, proc.stdout, proc.stderr)


def this_boot(clock: Clock, path: str = BOOT_ID_FILE) -> tuple:
    """(boot id, wall-clock time of monotonic zero) of the running kernel."""
    try:
        with open(path) as handle:
            boot_id = handle.read().strip()
    except OSError:
        boot_id = "unknown"
    return boot_id, clock.wall() - clock.monotonic()


def same_boot(state: State, boot_id: str, boot_time: float) -> bool:
    """Were the state's monotonic times taken on this boot?

    The boot id says so exactly; when the ids differ, equal boot start times
    mean one kernel seen through two /proc views (a sandboxed unit inside a
    container sees the kernel's boot id, a shell there the container's)."""
    if state.boot_id == boot_id:
        return True
    return state.boot_time is not None and abs(state.boot_time - boot_time) < BOOT_SLACK


def load_state(path: str, boot: tuple, log: Log) -> State:
    """The saved state, stamped with this boot; a fresh one (logged) when it is missing or unusable."""
    boot_id, boot_time = boot
    fresh = State(boot_id=boot_id, boot_time=boot_time)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(1024 * 1024)
    except FileNotFoundError:
        log(INFO, "no state yet, starting fresh", state=path)
        return fresh
    except OSError as error:
        raise WatchdogError(f"cannot read state file {path}: {error.strerror}") from None
    problem = None
    try:
        data = json.loads(raw)
        state = state_from_json(data)
    except ValueError as error:
        problem = f"unreadable ({error})" if raw.strip() else "empty"
    else:
        if not same_boot(state, boot_id, boot_time):
            problem = "from another boot"
    if problem:
        log(NOTICE, f"state file {problem}, starting fresh", state=path)
        return fresh
    return state._replace(boot_id=boot_id, boot_time=boot_time)


def state_from_json(data: object) -> State:
    """Validate a decoded state; ValueError for anything foreign."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
    number = (int, float)
    kinds = {
        "boot_id": (str,),
        "boot_time": (*number, type(None)),
        "failures": (int,),
        "invocation_id": (str,),
        "failing_since": (*number, type(None)),
        "failing_since_mono": (*number, type(None)),
        "restarts": (list,),
        "paused_until": (*number, type(None)),
        "paused_until_wall": (*number, type(None)),
        "last_check": (dict, type(None)),
        "last_restart": (dict, type(None)),
        "version": (int,),
    }
    for key, value in data.items():
        if key not in kinds or not isinstance(value, kinds[key]) or isinstance(value, bool):
            raise ValueError(f"bad field {key!r}")
    if "boot_id" not in data or data.get("failures", 0) < 0:
        raise ValueError("missing boot_id or negative failures")
    if not all(isinstance(t, number) and not isinstance(t, bool) for t in data.get("restarts", [])):
        raise ValueError("bad field 'restarts'")
    return State(**{**data, "restarts": tuple(data.get("restarts", ()))})


def save_state(path: str, state: State) -> None:
    """Write atomically: a 0600 temporary file beside the target, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    data = json.dumps(state._asdict(), indent=1, sort_keys=True).encode() + b"\n"
    try:
        fd, temp = tempfile.mkstemp(prefix=".state-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as error:
        raise WatchdogError(f"cannot write state file {path}: {error.strerror}") from None


class StateLock:
    """An flock on PATH.lock; waits up to `wait` seconds, then reports busy."""

    def __init__(self, state_file: str, wait: float = LOCK_WAIT) -> None:
        self.path = state_file + ".lock"
        self.wait = wait
        self.fd = -1

    def __enter__(self) -> bool:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            if not os.path.isdir(directory):
                os.mkdir(directory, 0o700)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise WatchdogError(f"state not writable: {error.filename}: {error.strerror}") from None
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def query_unit(cfg: Config, systemctl: Callable) -> UnitStatus:
    argv = [
        cfg.systemctl,
        "show",
        "--property=LoadState,ActiveState,SubState,ActiveEnterTimestampMonotonic,InvocationID",
        cfg.unit,
    ]
    done = systemctl(argv, SHOW_TIMEOUT)
    if done.returncode != 0:
        what = "timed out" if done.returncode is None else f"exited {done.returncode}"
        raise WatchdogError(f"systemctl show {what}: {done.stderr.strip() or 'no stderr'}", CRITICAL)
    unit = parse_show(done.stdout)
    if unit.load_state == "not-found" or not unit.load_state:
        raise WatchdogError(f"--unit {cfg.unit!r} not found by systemd (LoadState={unit.load_state or '?'})")
    return unit


def restart_unit(cfg: Config, unit: UnitStatus, systemctl: Callable, log: Log) -> tuple:
    """Restart the unit; (ok, detail). A failed unit is reset first so start limits allow it."""
    commands = []
    if unit.active_state == "failed":
        commands.append(([cfg.systemctl, "reset-failed", cfg.unit], SHOW_TIMEOUT))
    commands.append(([cfg.systemctl, "restart", cfg.unit], cfg.restart_timeout))
    start = time.monotonic()
    for argv, timeout in commands:
        log(NOTICE, "+ " + " ".join(argv))
        done = systemctl(argv, timeout)
        if done.returncode is None:
            return False, f"{argv[1]} timed out after {format_duration(timeout)}"
        if done.returncode != 0:
            return False, f"{argv[1]} exited {done.returncode}: {done.stderr.strip() or 'no stderr'}"
    return True, f"restarted in {time.monotonic() - start:.1f}s"


def check_record(result: CheckResult, wall: float, note: str = "") -> dict:
    return {
        "wall": wall,
        "ok": result.ok,
        "reason": result.reason,
        "detail": result.detail,
        "status": result.status,
        "latency": round(result.latency, 4),
        "note": note,
    }


def run_once(
    cfg: Config,
    log: Log,
    *,
    probe: Callable[[Config], CheckResult] = http_probe,
    systemctl: Callable[[list, float], Completed] = run_systemctl,
    clock: Clock = CLOCK,
    boot: Optional[tuple] = None,
) -> int:
    """One watchdog cycle under the state lock. Returns the exit code."""
    with StateLock(cfg.state_file) as locked:
        if not locked:
            log(NOTICE, "skipped: another watchdog run holds the state lock", lock=cfg.state_file + ".lock")
            return WARNING
        state = load_state(cfg.state_file, boot or this_boot(clock), log)
        state, code = _cycle(cfg, state, log, probe=probe, systemctl=systemctl, clock=clock)
        save_state(cfg.state_file, state)
        return code


def _cycle(cfg: Config, state: State, log: Log, *, probe, systemctl, clock: Clock) -> tuple:
    result = probe(cfg)
    now, wall = clock.monotonic(), clock.wall()
    fields = {"reason": result.reason, "detail": result.detail, "url": cfg.url}

    def checked(state: State, code: int, note: str = "") -> tuple:
        """The cycle's outcome: the state with this check recorded, and the exit code."""
        return state._replace(last_check=check_record(result, wall, note)), code

    if result.ok:
        if state.failing_since_mono is not None:
            lasted = format_duration(now - state.failing_since_mono)
            log(NOTICE, "health check recovered", after=lasted, failures=state.failures, url=cfg.url)
        else:
            log(INFO, "health check ok", status=result.status, latency=f"{result.latency * 1000:.1f}ms")
        state = state._replace(failures=0, failing_since=None, failing_since_mono=None)
        return checked(state, OK)

    if state.failing_since_mono is None:
        state = state._replace(failing_since=wall, failing_since_mono=now)
    left = paused_left(state, now)
    if left:
        log(WARN, "health check failed, not counted: watchdog paused", **fields, paused_for=format_duration(left))
        return checked(state, WARNING, "paused")

    try:
        unit = query_unit(cfg, systemctl)
    except WatchdogError as error:
        log(ERR if error.code == UNKNOWN else CRIT, f"health check failed, cannot judge: {error}", **fields)
        return checked(state, error.code, str(error))

    verdict = assess(state, unit, cfg, now)
    counted = {"failures": f"{verdict.failures}/{cfg.threshold}"}
    if verdict.why and verdict.action in ("count", "restart"):  # the count started over
        log(NOTICE, verdict.why, unit=cfg.unit)
    if verdict.action == "ignore":
        log(WARN, f"health check failed, not counted: {verdict.why}", **fields, **counted)
        return checked(state, WARNING, verdict.why)

    state = state._replace(failures=verdict.failures, invocation_id=unit.invocation_id)
    log(WARN, "health check failed", **fields, **counted, unit_state=f"{unit.active_state}/{unit.sub_state}")
    if verdict.action == "count":
        return checked(state, WARNING, "counted")
    if verdict.action == "withhold":
        log(CRIT, f"NOT restarting: {verdict.why}", unit=cfg.unit, **counted)
        return checked(state, CRITICAL, verdict.why)

    recent = (*restarts_in_window(state, cfg, now), now)
    budget = f"{len(recent)}/{cfg.max_restarts}"
    log(ERR, f"restarting unit after {verdict.failures} consecutive failures", unit=cfg.unit, budget=budget)
    try:
        ok, detail = restart_unit(cfg, unit, systemctl, log)
    except WatchdogError as error:  # systemctl vanished between show and restart
        log(ERR, f"restart impossible: {error}", unit=cfg.unit)
        return checked(state, error.code, str(error))
    state = state._replace(restarts=recent, last_restart={"wall": wall, "ok": ok, "detail": detail})
    if not ok:
        log(CRIT, "restart failed", unit=cfg.unit, detail=detail, **counted)
        return checked(state, CRITICAL, "restart failed")
    log(NOTICE, "restart done", unit=cfg.unit, detail=detail)
    return checked(state._replace(failures=0, invocation_id=""), WARNING, "restart ok")


def check_once(cfg: Config, *, probe: Callable[[Config], CheckResult] = http_probe) -> int:
    """The operator's one-off probe: a Nagios-style verdict line, no state."""
    result = probe(cfg)
    word = "OK" if result.ok else "CRITICAL"
    fields = {
        "reason": None if result.ok else result.reason,
        "detail": None if result.ok else result.detail,
        "status": result.status,
        "latency": f"{result.latency * 1000:.1f}ms",
        "url": cfg.url,
        "body": result.body if result.status is not None else None,
    }
    message = "health check passed" if result.ok else "health check failed"
    print(f"{word}: {message} {kv(**fields)} | time={result.latency:.6f}s")
    return OK if result.ok else CRITICAL


def status_report(cfg: Config, state: Optional[State], now: float) -> dict:
    if state is None:
        return {"state_file": cfg.state_file, "state": "none"}
    recent = restarts_in_window(state, cfg, now)
    return {
        "state_file": cfg.state_file,
        "state": "ok",
        "last_check": state.last_check,
        "failures": state.failures,
        "threshold": cfg.threshold,
        "failing_since": state.failing_since,
        "last_restart": state.last_restart,
        "restarts_in_window": len(recent),
        "max_restarts": cfg.max_restarts,
        "restart_window": cfg.restart_window,
        "paused_for": paused_left(state, now),
        "paused_until": state.paused_until_wall if paused_left(state, now) else None,
        "grace": cfg.grace,
    }


def print_status(report: dict) -> None:
    if report["state"] == "none":
        print(f"no state at {report['state_file']}: the watchdog has not run since boot")
        return
    check = report["last_check"]
    if check:
        verdict = "healthy" if check.get("ok") else f"failed reason={check.get('reason')}"
        note = f" ({check['note']})" if check.get("note") else ""
        print(f"last check:   {format_wall(check.get('wall'))}  {verdict} {check.get('detail', '')}{note}")
    else:
        print("last check:   never")
    print(f"failures:     {report['failures']}/{report['threshold']}")
    restart = report["last_restart"]
    if restart:
        outcome = "ok" if restart.get("ok") else "FAILED"
        print(f"last restart: {format_wall(restart.get('wall'))}  {outcome} {restart.get('detail', '')}")
    else:
        print("last restart: none since boot")
    window = format_duration(report["restart_window"])
    print(f"restarts:     {report['restarts_in_window']}/{report['max_restarts']} in the last {window}")
    if report["paused_for"]:
        until = format_wall(report["paused_until"])
        print(f"paused:       yes, until {until} ({format_duration(report['paused_for'])} left)")
    else:
        print("paused:       no")
    print(f"grace:        {format_duration(report['grace'])} after the unit becomes active")


def set_pause(cfg: Config, seconds: float, log: Log, clock: Clock = CLOCK) -> int:
    """Pause (seconds > 0) or resume (0). The failure count starts over either way."""
    with StateLock(cfg.state_file) as locked:
        if not locked:
            raise WatchdogError(f"state file {cfg.state_file} is locked by a running watchdog; try again")
        state = load_state(cfg.state_file, this_boot(clock), log)
        now, wall = clock.monotonic(), clock.wall()
        reset = {"failures": 0, "failing_since": None, "failing_since_mono": None}
        if seconds:
            state = state._replace(paused_until=now + seconds, paused_until_wall=wall + seconds, **reset)
            log(NOTICE, "watchdog paused", duration=format_duration(seconds), until=format_wall(wall + seconds))
        else:
            was = paused_left(state, now)
            state = state._replace(paused_until=None, paused_until_wall=None, **reset)
            log(NOTICE, "watchdog resumed" if was else "watchdog resumed (was not paused)")
        save_state(cfg.state_file, state)
    return OK


def show_status(cfg: Config, *, as_json: bool, clock: Clock = CLOCK) -> int:
    quiet = Log(journal=False, verbose=False, stream=sys.stderr)
    state = None
    if os.path.exists(cfg.state_file):
        state = load_state(cfg.state_file, this_boot(clock), quiet)
    report = status_report(cfg, state, clock.monotonic())
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print_status(report)
    return OK


# --- Command line -----------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are configuration errors: one line, exit 3."""

    def error(self, message: str) -> None:
        raise WatchdogError(message)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in OPTIONS:
        extra = {"action": "store_true"} if option.flag == "--verbose" else {"metavar": option.dest.upper()}
        common.add_argument(
            option.flag,
            default=argparse.SUPPRESS,
            help=f"{option.help} [env {option.env}, default {option.default or 'unset'}]",
            **extra,
        )
    parser = _Parser(
        prog=PROG,
        description="Health watchdog for motorcade-leadgen-api.service (Wave 2 runtime hardening).",
        epilog="Exit codes: 0 OK, 1 WARNING (handled), 2 CRITICAL (a human is needed), 3 UNKNOWN (watchdog broken).",
        parents=[common],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("run", "one watchdog cycle: probe, count, restart when due (default)"),
        ("check", "probe once and print a verdict; exit 0 healthy, 2 unhealthy, 3 bad config"),
        ("status", "print the saved state, no probe"),
        ("pause", "stop counting and restarting for a while (default 30m, at most 24h)"),
        ("resume", "end a pause"),
    ):
        sub = commands.add_parser(name, help=text, description=text, parents=[common], allow_abbrev=False)
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print the state as JSON")
        if name == "pause":
            sub.add_argument("duration", nargs="?", default=PAUSE_DEFAULT, help="like 90s, 15m, 2h (default 30m)")
    return parser


def main(argv: Optional[list] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        args = vars(build_parser().parse_args(argv))
        cfg = build_config(args, environ)
        log = Log(journal=stdout_is_journal(environ), verbose=cfg.verbose)
        command = args.get("command") or "run"
        if command == "check":
            return check_once(cfg)
        if command == "status":
            return show_status(cfg, as_json=args.get("json", False))
        if command == "pause":
            try:
                seconds = parse_duration(args["duration"])
            except ValueError:
                seconds = -1.0
            if not 1 <= seconds <= PAUSE_MAX:
                duration = args["duration"]
                raise WatchdogError(f"pause DURATION must be from 1s to 24h (like 90s, 15m, 2h), got {duration!r}")
            return set_pause(cfg, seconds, log)
        if command == "resume":
            return set_pause(cfg, 0, log)
        return run_once(cfg, log)
    except WatchdogError as error:
        sys.stderr.write(f"{PROG}: {error}\n")
        return error.code


if __name__ == "__main__":
    sys.exit(main())
