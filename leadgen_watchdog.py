#!/usr/bin/python3
"""Restart motorcade-leadgen-api.service when its health check keeps failing.

A systemd timer runs `/usr/local/sbin/leadgen-watchdog run` every 30 s (the
installed launcher of this file). Each run probes
GET http://127.0.0.1:8000/lead/health, keeps a consecutive-failure count in a
state file under /run, and runs `systemctl restart` on the unit when the
count reaches the threshold, within a restart budget. Once a failure is
counted, the run probes again every --retry-interval until the API is
healthy, the threshold is reached, or the unit's state says not to count.
Operators run `check` for a one-off probe, `status` to read the state, and
`pause` / `resume` around deploys.

Commands:
  run             one watchdog cycle (the default)
  check           probe once and print a verdict; never restarts, writes nothing
  status [--json] print the saved state; no probe
  pause [--owner TOKEN] [DUR]
                  stop counting and restarting for DUR (default 30m, max 24h)
  resume [--owner TOKEN]
                  end a pause: the operator's (the default owner) ends every
                  pause, another owner's only its own

Settings: defaults < /etc/motorcade-leadgen/watchdog.env < environment
(LEADGEN_WATCHDOG_<NAME>) < flags, the same for the timer and by hand.

Exit codes (monitoring-plugins convention):
  0 OK        healthy
  1 WARNING   unhealthy but handled: below threshold, in grace, paused,
              unit not active, restarted, a human already alerted for this
              incident (reminder not yet due), or skipped (lock held)
  2 CRITICAL  a human is needed: a restart failed or the budget withheld it;
              once per incident, then once per --remind
  3 UNKNOWN   the watchdog could not work: bad configuration, state not
              usable or writable, systemctl missing or failing, unit not found
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import http.client
import json
import math
import os
import re
import signal
import socket
import ssl
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for annotations only: importing typing costs 2 ms a start
    from typing import Callable, Mapping, Optional

VERSION = "2.1.0"
IDENTIFIER = "motorcade-leadgen-watchdog"  # the unit's SyslogIdentifier=
ENV_PREFIX = "LEADGEN_WATCHDOG_"
DOC_DIR = "/usr/local/share/doc/motorcade-leadgen"  # where install.sh puts README.md and docs/
ENV_FILE = "/etc/motorcade-leadgen/watchdog.env"  # what the unit's EnvironmentFile= reads
STATE_VERSION = 2
STATE_CAP = 256 * 1024  # bytes of state read at most; more is unusable
ENV_FILE_CAP = 64 * 1024
BODY_CAP = 64 * 1024  # bytes of the health body read at most
EXCERPT_CHARS = 120  # body characters shown in a log line
INTERIM_MAX = 16  # 1xx interim responses skipped at most before the final one
LOCK_WAIT = 3.0  # seconds a run waits for another run's lock before skipping
SHOW_TIMEOUT = 10.0  # seconds for `systemctl show` / `reset-failed` / `journalctl`
JOURNALCTL = "journalctl"  # reads why a restart failed
CAUSE_TIMEOUT = 5.0  # seconds for each of `systemctl show -p Result` and `journalctl` after a failed restart
RUN_LIMIT = 140.0  # seconds a run may take: below the unit's TimeoutStartSec=150s
PAUSE_DEFAULT = "30m"
PAUSE_MAX = 24 * 3600
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_SLACK = 2.0  # seconds two views of one boot's start time may differ by
RESTARTS_KEPT = 1000  # restart times kept in the state at most

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


# --- Safe text --------------------------------------------------------------

_UNSAFE = re.compile(r"[^\x20-\x7e]")


def clean(text: object) -> str:
    """Printable ASCII only: control characters, non-ASCII and undecodable bytes become escapes.

    A health body or an error from the server must not rewrite an operator's
    terminal or turn a journal entry into a binary blob."""
    return _UNSAFE.sub(lambda m: ascii(m.group())[1:-1], str(text))


# --- Configuration ----------------------------------------------------------


def parse_duration(text: str) -> float:
    """'90', '1.5', '90s', '15m', '2h' -> seconds; ValueError otherwise."""
    match = re.fullmatch(r"(\d{1,9}(?:\.\d{1,6})?)([smh]?)", text.strip())
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
        if not re.fullmatch(r"\s*\d{1,9}\s*", text) or not low <= int(text) <= high:
            raise ValueError(text)
        return int(text)

    return convert


def duration(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        value = parse_duration(text)
        if not low <= value <= high or value == 0 < low:
            raise ValueError(text)
        return value

    return convert


def http_url(text: str) -> str:
    """An http(s) URL that urllib will send as written; ValueError for anything else."""
    if not text.isascii() or re.search(r"[\x00-\x20\x7f]", text):
        raise ValueError(text)  # non-ASCII must be percent-encoded; no spaces or control characters
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise ValueError(text)  # user:password@ would never be sent, and would be logged
    hostport = parts.netloc.rpartition("]")[2]  # after an IPv6 literal
    port = hostport.rpartition(":")[2] if ":" in hostport else ""
    if hostport.count(":") > 1 or (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
        raise ValueError(text)  # urllib would fall back to the default port, or fail obscurely
    if parts.hostname != "localhost" and not _ip_literal(parts.hostname):
        raise ValueError(text)  # a name lookup is outside the SIGALRM deadline: it could hang the run
    return text


def _ip_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


def unit_name(text: str) -> str:
    if len(text) > 255 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9:_.@-]*\.service", text):
        raise ValueError(text)
    return text


def file_path(text: str) -> str:
    if not text.strip() or text.endswith("/") or "\x00" in text or not text.isprintable():
        raise ValueError(text)
    return text


def nonempty(text: str) -> str:
    if not text.strip() or "\x00" in text:
        raise ValueError(text)
    return text


def body_text(text: str) -> bytes:
    """The --expect-body substring as the bytes to look for (undecodable argv bytes kept as they were)."""
    if not text.strip() or "\x00" in text or len(os.fsencode(text)) > 1024:
        raise ValueError(text)
    return os.fsencode(text)


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
           "an http:// or https:// URL whose host is an IP address or localhost, with a port from 1 to 65535 "
           "if any, no user:password@, ASCII only (percent-encode the rest) and no spaces", "health URL to probe"),
    Option("--unit", "motorcade-leadgen-api.service", unit_name,
           "a plain unit name like NAME.service", "systemd unit to restart"),
    Option("--threshold", "3", integer(1, 1000),
           "an integer from 1 to 1000", "consecutive counted failures that trigger a restart"),
    Option("--min-outage", "20s", duration(0, 3600),
           f"a duration from 0 to 1h {DURATION}",
           "restart only once the failure has lasted this long since its first counted probe (0: at the threshold)"),
    Option("--timeout", "5", duration(0.001, 60),
           f"a duration above 0 and at most 60s {DURATION}", "deadline for the whole request"),
    Option("--retry-interval", "5s", duration(0, 60),
           f"a duration from 0 to 60s {DURATION}", "once a failure is counted, probe again after this (0: next run)"),
    Option("--grace", "60", duration(0, 86400),
           f"a duration from 0 to 24h {DURATION}", "failures not counted this long after the unit became active"),
    Option("--max-restarts", "3", integer(0, 1000),
           "an integer from 0 to 1000", "restarts allowed within the window (0: never restart)"),
    Option("--restart-window", "1800", duration(1, 7 * 86400),
           f"a duration from 1s to 7 days {DURATION}", "the restart budget's window"),
    Option("--restart-timeout", "90", duration(0.001, 110),
           f"a duration above 0 and at most 110s {DURATION}", "how long `systemctl restart` may take"),
    Option("--remind", "1h", duration(0, 7 * 86400),
           f"a duration from 0 to 7 days {DURATION}", "repeat the human-needed exit 2 this often (0: every run)"),
    Option("--recovered-after", "60s", duration(0, 86400),
           f"a duration from 0 to 24h {DURATION}",
           "an incident that needed a human ends once the API has been healthy this long "
           "(0: at the first healthy probe)"),
    Option("--expect-status", "200-299", parse_status_list,
           "status codes 100-599 or ranges, like 200-299 or 200,204,300-302", "healthy status codes"),
    Option("--expect-body", None, body_text,
           "a string of 1 to 1024 bytes, not only spaces", "a substring the body must contain"),
    Option("--state-file", "/run/motorcade-leadgen-watchdog/state.json", file_path,
           "a file path, not a directory", "the failure counter's state file"),
    Option("--metrics-file", None, file_path,
           "a file path ending in .prom", "node_exporter textfile to write on every run (unset: none)"),
    Option("--systemctl", "systemctl", nonempty,
           "a command name or path", "the systemctl command"),
    Option("--verbose", "off", parse_bool,
           "one of 1, true, yes, on, 0, false, no, off", "also log healthy runs; tracebacks on internal errors"),
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
            raise WatchdogError(f"{source} must be {option.rule}, got {clean(repr(raw))}") from None
    cfg = Config(**values)
    if cfg.metrics_file is not None and not cfg.metrics_file.endswith(".prom"):
        raise WatchdogError(
            f"--metrics-file must end in .prom (node_exporter reads no other), got {cfg.metrics_file!r}"
        )
    worst = LOCK_WAIT + worst_probe_and_restart(cfg)
    if worst > RUN_LIMIT:
        raise WatchdogError(
            f"lock wait {LOCK_WAIT:g}s + --timeout {cfg.timeout:g}s + systemctl show and reset-failed "
            f"{2 * SHOW_TIMEOUT:g}s + --restart-timeout {cfg.restart_timeout:g}s = {worst:g}s: more than the "
            f"{RUN_LIMIT:g}s a run may take (the unit's TimeoutStartSec=150s would kill it mid-restart)"
        )
    return cfg


def worst_probe_and_restart(cfg: Config) -> float:
    """The longest one probe can take with what may follow it: show, reset-failed, restart."""
    return cfg.timeout + 2 * SHOW_TIMEOUT + cfg.restart_timeout


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_BARE = re.compile(r"[^\"'\\$`\s](?:[^\"'\\$`]*[^\"'\\$`\s])?")  # no quote, \, $, `; not blank-edged
_ENV_QUOTED = re.compile(r"\"[^\"'\\$`]*\"|'[^\"'\\$`]*'")  # the whole value in one pair of quotes


def parse_env_file(data: bytes, path: str) -> dict:
    """The lines of an env file that systemd's EnvironmentFile= parser and this one read identically.

    A blank line (nothing at all), a comment (# or ; first), or NAME=VALUE with nothing before NAME, no
    space around =, and VALUE empty, plain (no quote, backslash, $ or `, no blank at either end) or wholly
    inside one pair of quotes with none of those inside. Anything else (CR, control characters, non-UTF-8,
    a trailing backslash, `export`, spaces around =) is an error naming the file and line: systemd would
    read it differently, or the operator would not see what it sets. tests/e2e/test_envfile.py holds this
    to systemd's own parser."""
    values = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        where = f"{clean(path)}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WatchdogError(f"{where}: not UTF-8; refused") from None
        if "\r" in line:
            raise WatchdogError(f"{where}: a carriage return (CRLF line ends?); refused")
        if not line.isprintable():
            raise WatchdogError(f"{where}: a control character (tab, NUL, ...) in {clean(line[:80])!r}; refused")
        if line.endswith("\\"):
            raise WatchdogError(f"{where}: a trailing backslash (systemd joins the next line to it); refused")
        if not line or line[0] in "#;":
            continue
        name, equals, value = line.partition("=")
        if not equals or not _ENV_NAME.fullmatch(name):
            raise WatchdogError(
                f"{where}: not a NAME=value line (nothing before NAME, no space around =): {clean(line[:80])!r}"
            )
        if _ENV_QUOTED.fullmatch(value):
            value = value[1:-1]
        elif value and not _ENV_BARE.fullmatch(value):
            raise WatchdogError(
                f"{where}: the value of {name} must be plain (no quote, backslash, $ or `, no space at either end) "
                "or wholly inside one pair of quotes with none of those inside; refused"
            )
        values[name] = value
    return values


def read_env_file(path: str, note: Callable[[str], None]) -> dict:
    """The settings of watchdog.env, {} when it is absent; unreadable is a notice, not an error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except PermissionError as error:
        note(f"cannot read {path} ({error.strerror}): using defaults, environment and flags only")
        return {}
    except OSError as error:  # a socket (ENXIO), a loop, ...
        raise WatchdogError(f"cannot read {path}: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WatchdogError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(ENV_FILE_CAP + 1)
    if len(raw) > ENV_FILE_CAP:
        raise WatchdogError(f"{path} is larger than {ENV_FILE_CAP} bytes")
    return parse_env_file(raw, path)


def unknown_variables(environ: Mapping[str, str]) -> list:
    known = {option.env for option in OPTIONS}
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


# --- Records ----------------------------------------------------------------


# One probe: ok, reason (ok refused timeout status body protocol error), a
# detail for humans, the HTTP status if any, latency in seconds, a body excerpt.
CheckResult = namedtuple("CheckResult", "ok reason detail status latency body", defaults=(None, 0.0, ""))

# systemd's view of the unit; active_enter_monotonic in seconds of CLOCK_MONOTONIC, 0 if never active;
# need_reload: systemd's NeedDaemonReload; file_mtime: wall mtime of its unit file (0 if unknown);
# error: why systemd's view could not be had ("" when it could).
UnitStatus = namedtuple(
    "UnitStatus",
    "load_state active_state sub_state active_enter_monotonic invocation_id need_reload file_mtime error",
    defaults=("", "", "", 0.0, "", False, 0.0, ""),
)

# A finished command; returncode None when it timed out. stdout and stderr are text.
Completed = namedtuple("Completed", "returncode stdout stderr")


def _finite(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and abs(value) < 1e13  # no bool, NaN or Infinity


def _text(value: object) -> bool:
    return type(value) is str and len(value) <= 4096


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= 10**9


def _flag(value: object) -> bool:
    return type(value) is bool


def _maybe(valid: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or valid(value)


def _times(value: object) -> bool:
    return type(value) in (list, tuple) and len(value) <= RESTARTS_KEPT and all(_finite(t) for t in value)


# A field of a saved record: its name, the check its value must pass, its default.
Field = namedtuple("Field", "name valid default")


def _record(fields: tuple) -> Callable[[object], bool]:
    """A nested record: the fields it has are valid (a missing one takes its default, an unknown one, written by
    another version, is dropped when loaded)."""
    return lambda value: type(value) is dict and all(f.valid(value[f.name]) for f in fields if f.name in value)


# last_check: the last probe, for `status`.
CHECK_FIELDS = (
    Field("wall", _finite, 0.0),
    Field("ok", _flag, False),
    Field("reason", _text, ""),
    Field("detail", _text, ""),
    Field("status", _maybe(lambda v: type(v) is int and 100 <= v <= 999), None),
    Field("latency", _finite, 0.0),
    Field("note", _text, ""),
)
# last_restart: ok is None while the restart runs (written ahead: a killed run still counted it).
RESTART_FIELDS = (Field("wall", _finite, 0.0), Field("ok", _maybe(_flag), None), Field("detail", _text, ""))
# limits: the settings the last run used, shown by `status`.
LIMIT_FIELDS = tuple(
    Field(name, _finite, 0) for name in ("threshold", "max_restarts", "restart_window", "grace", "retry_interval")
)

# The state file, one field per entry. Monotonic times (seconds of
# CLOCK_MONOTONIC on the boot named by boot_id/boot_time, wall clock at
# monotonic 0) drive the windows; *_wall fields are for display.
STATE_FIELDS = (
    Field("version", lambda v: type(v) is int and v == STATE_VERSION, STATE_VERSION),
    Field("boot_id", _text, ""),
    Field("boot_time", _maybe(_finite), None),
    Field(
        "failures", lambda v: _count(v) and v <= 1000, 0
    ),  # consecutive counted failures since the last healthy probe or restart
    Field("invocation_id", _text, ""),  # the unit's InvocationID at the last counted failure
    Field("restarted_invocation", _text, ""),  # the InvocationID the last restart attempt was made on
    Field("incident_since", _maybe(_finite), None),  # wall time of the incident's first counted failure
    Field("incident_since_mono", _maybe(_finite), None),
    Field("streak_since", _maybe(_finite), None),  # monotonic time of the streak's first counted failure
    Field("healthy_since", _maybe(_finite), None),  # monotonic time of the first healthy probe of an open incident
    Field("human_needed", _flag, False),  # a restart failed or was withheld in this incident
    Field("alerted", _maybe(_finite), None),  # monotonic time of the incident's last exit 2
    Field("alerted_wall", _maybe(_finite), None),
    Field("restarts", _times, ()),  # monotonic times of restart attempts still in the window
    Field("restarts_ok", _count, 0),  # since boot, for the metrics
    Field("restarts_failed", _count, 0),
    Field("restarts_withheld", _count, 0),
    Field("restarts_unknown", _count, 0),  # written ahead, never settled: the run was killed
    Field("paused_until", _maybe(_finite), None),  # copied from the pause file
    Field("paused_until_wall", _maybe(_finite), None),
    Field("pause_id", _text, ""),  # the pause or resume last applied: a new one resets the count
    Field("last_check", _maybe(_record(CHECK_FIELDS)), None),
    Field("last_restart", _maybe(_record(RESTART_FIELDS)), None),
    Field("limits", _maybe(_record(LIMIT_FIELDS)), None),
    Field("summary_since", _maybe(_finite), None),  # the hourly healthy summary: since, checks, latency range
    Field("summary_checks", _count, 0),
    Field("summary_min", _maybe(_finite), None),
    Field("summary_max", _maybe(_finite), None),
    Field("metrics_failing", _flag, False),  # the last metrics write failed (logged once)
    Field("unit_stale", _text, ""),  # why the running unit predates its installed file ("" when it does not)
)
State = namedtuple("State", [f.name for f in STATE_FIELDS], defaults=[f.default for f in STATE_FIELDS])
# What a state of another STATE_VERSION (an incompatible change) still gives: the budget and the incident.
CARRIED = (
    "boot_id", "boot_time", "restarts", "restarts_ok", "restarts_failed", "restarts_withheld", "restarts_unknown",
    "incident_since", "incident_since_mono", "human_needed", "alerted", "alerted_wall",
    "paused_until", "paused_until_wall",
)  # fmt: skip

# One owner's pause in the pause file: monotonic and wall end.
OWNER = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
OPERATOR = "operator"  # the default owner; its `resume` ends every pause
OWNED_FIELDS = (
    Field("owner", lambda v: type(v) is str and OWNER.fullmatch(v) is not None, OPERATOR),
    Field("until", _finite, 0.0),
    Field("until_wall", _finite, 0.0),
)


def _owned(value: object) -> bool:
    return type(value) in (list, tuple) and len(value) <= 64 and all(_record(OWNED_FIELDS)(v) for v in value)


# The pause file, written by `pause` and `resume` without the run lock, read by every run.
PAUSE_FIELDS = (
    Field("id", _text, ""),
    Field("boot_id", _text, ""),
    Field("boot_time", _maybe(_finite), None),
    Field("until", _maybe(_finite), None),  # monotonic, the latest end of the pauses in force; None when none
    Field("until_wall", _maybe(_finite), None),
    Field("pauses", _owned, ()),  # every pause in force: {owner, until, until_wall}
)
Pause = namedtuple("Pause", [f.name for f in PAUSE_FIELDS], defaults=[f.default for f in PAUSE_FIELDS])
NESTED = {"last_check": CHECK_FIELDS, "last_restart": RESTART_FIELDS, "limits": LIMIT_FIELDS, "pauses": OWNED_FIELDS}

# The whole outcome of one probe: action "none" or "restart", the exit code,
# the lines to log as (priority, message, fields), the new state (for a
# restart: the intent, to be saved before acting), the line announcing a
# restart, and whether a quick re-probe is worth it.
Decision = namedtuple("Decision", "action code lines state announce retry", defaults=(None, False))


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
    """key=value pairs, quoting values that hold spaces or quotes; every value made safe to show (clean)."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = clean(value)
        if not text or re.search(r'[\s"=]', text):
            text = '"' + text.replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def status_expected(status: int, ranges: tuple) -> bool:
    return any(low <= status <= high for low, high in ranges)


def excerpt(body: bytes) -> str:
    text = clean(" ".join(body.decode("utf-8", "replace").split()))
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def judge_response(cfg: Config, status: int, body: bytes, latency: float) -> CheckResult:
    shown = excerpt(body)
    if not status_expected(status, cfg.expect_status):
        return CheckResult(False, "status", f"HTTP {status}", status, latency, shown)
    if cfg.expect_body is not None and cfg.expect_body not in body:
        detail = f"body lacks {clean(repr(os.fsdecode(cfg.expect_body)))}"
        return CheckResult(False, "body", detail, status, latency, shown)
    return CheckResult(True, "ok", f"HTTP {status}", status, latency, shown)


def classify_error(error: BaseException, timeout: float) -> tuple:
    """Map an exception from urllib to (reason, detail); the detail is safe to show."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, (_Deadline, socket.timeout, TimeoutError)):
        return "timeout", f"no complete response within {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(error, (http.client.HTTPException, ConnectionResetError, BrokenPipeError)):
        name = type(error).__name__
        text = clean(str(error).strip())[:200]
        return "protocol", f"{name}: {text}" if text else name
    if isinstance(error, ssl.SSLError):
        return "error", clean(f"TLS: {error}")[:200]
    return "error", clean(f"{type(error).__name__}: {error}")[:200]


def parse_show(text: str) -> UnitStatus:
    """Parse `systemctl show -p ...` key=value output."""
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        entered = int(props.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    except ValueError:
        entered = 0.0
    return UnitStatus(
        need_reload=props.get("NeedDaemonReload") == "yes",
        load_state=clean(props.get("LoadState", "")),
        active_state=clean(props.get("ActiveState", "")),
        sub_state=clean(props.get("SubState", "")),
        active_enter_monotonic=entered,
        invocation_id=clean(props.get("InvocationID", ""))[:64],
    )


def restarts_in_window(state: State, cfg: Config, now: float) -> tuple:
    return tuple(t for t in state.restarts if 0 <= now - t < cfg.restart_window)


def pause_left(until: Optional[float], now: float) -> float:
    """Seconds of pause left. A run's `now` may be up to a run old, so a `pause 24h` can end a little more than
    PAUSE_MAX after it; one ending further ahead than that was never issued by `pause`: no pause."""
    left = (until or 0.0) - now
    return left if 0.0 < left <= PAUSE_MAX + RUN_LIMIT else 0.0


def paused_left(state: State, now: float) -> float:
    return pause_left(state.paused_until, now)


def pause_in_force(state: Optional[State], pause: Optional[Pause]) -> tuple:
    """(until, until_wall) of the pause the next run obeys: the pause file's latest, else the one the state carries."""
    if pause is not None:
        return pause.until, pause.until_wall
    return (state.paused_until, state.paused_until_wall) if state else (None, None)


def same_boot(record: tuple, boot_id: str, boot_time: float) -> bool:
    """Were the record's monotonic times taken on this boot?

    The boot id says so exactly; when the ids differ, equal boot start times
    mean one kernel seen through two /proc views (a sandboxed unit inside a
    container sees the kernel's boot id, a shell there the container's)."""
    if record.boot_id == boot_id:
        return True
    return record.boot_time is not None and abs(record.boot_time - boot_time) < BOOT_SLACK


def _loaded(value: object, nested: Optional[tuple] = None) -> object:
    """A value read from disk as the records hold it: text made safe to show (clean), nested records with
    exactly their known fields, lists as tuples."""
    if type(value) is str:
        return clean(value)
    if type(value) is dict and nested:
        return {f.name: _loaded(value.get(f.name, f.default)) for f in nested}
    if type(value) in (list, tuple):
        return tuple(_loaded(item, nested) for item in value)
    return value


def record_from_json(data: object, fields: tuple, record: Callable) -> tuple:
    """A record of `fields` from decoded JSON; ValueError naming the first invalid field.

    A missing field takes its default and an unknown one (written by a newer or older version) is ignored,
    so an upgrade or a rollback keeps every field both versions know. Text goes through clean()."""
    if type(data) is not dict:
        raise ValueError("not a JSON object")
    for field in fields:
        if field.name in data and not field.valid(data[field.name]):
            raise ValueError(f"bad value for {field.name!r}")
    return record(**{f.name: _loaded(data.get(f.name, f.default), NESTED.get(f.name)) for f in fields})


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not _finite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _small_int(text: str) -> int:
    if len(text) > 16:
        raise ValueError(f"{text[:20]}... is out of range")
    return int(text)


def decode_json(raw: bytes) -> object:
    """Strict JSON: no NaN, no Infinity, no 1e400, no huge integers, no deep nesting; ValueError."""
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float, parse_int=_small_int
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None


def limits_used(cfg: Config) -> dict:
    return {f.name: getattr(cfg, f.name) for f in LIMIT_FIELDS}


def line(priority: int, message: str, **fields: object) -> tuple:
    return (priority, message, fields)


def with_pause(state: State, pause: Optional[Pause], now: float) -> tuple:
    """Apply the operator's latest pause or resume. A pause, or a resume that ends one, starts the count over;
    a resume of nothing changes nothing (a script resuming every minute cannot hold off a restart)."""
    if pause is None or pause.id == state.pause_id:
        return state, False
    was_paused = paused_left(state, now) > 0
    state = state._replace(paused_until=pause.until, paused_until_wall=pause.until_wall, pause_id=pause.id)
    if pause.until is not None or was_paused:
        state = state._replace(failures=0, invocation_id="")
    return state, True


def check_record(result: CheckResult, wall: float, note: str = "") -> dict:
    return {
        "wall": wall,
        "ok": result.ok,
        "reason": result.reason,
        "detail": clean(result.detail)[:400],
        "status": result.status,
        "latency": round(result.latency, 4),
        "note": clean(note)[:400],
    }


def _summarised(state: State, result: CheckResult, now: float) -> tuple:
    """Fold a healthy probe into the hourly summary; the summary line when an hour is full."""
    since = state.summary_since if state.summary_since is not None and 0 <= now - state.summary_since else now
    checks = state.summary_checks + 1
    low = min(result.latency, state.summary_min if state.summary_min is not None else result.latency)
    high = max(result.latency, state.summary_max if state.summary_max is not None else result.latency)
    if now - since < 3600:
        return state._replace(summary_since=since, summary_checks=checks, summary_min=low, summary_max=high), []
    summary = line(
        NOTICE,
        f"healthy: {checks} checks in the last {format_duration(now - since)}",
        latency=f"{low * 1000:.1f}-{high * 1000:.1f}ms",
    )
    return state._replace(summary_since=now, summary_checks=0, summary_min=None, summary_max=None), [summary]


def _escalate(state: State, lines: list, what: str, cfg: Config, now: float, wall: float) -> Decision:
    """A human is needed: exit 2 once per incident, then once per --remind; exit 1 in between."""
    state = state._replace(human_needed=True)
    due = state.alerted is None or not 0 <= now - state.alerted < cfg.remind
    if due:
        lines.append(line(CRIT, f"{what}; a human is needed", unit=cfg.unit))
        state = state._replace(alerted=now, alerted_wall=wall)
        return Decision("none", CRITICAL, lines, state)
    ago = format_duration(now - state.alerted)
    left = format_duration(state.alerted + cfg.remind - now)
    lines.append(line(WARN, f"{what}; alerted {ago} ago, reminder in {left}", unit=cfg.unit))
    return Decision("none", WARNING, lines, state)


def stale_unit(unit: UnitStatus, boot_time: float) -> str:
    """Why the running unit is not what its installed file says ("" when it is)."""
    if unit.error or unit.active_state != "active":
        return ""
    if unit.need_reload:
        return "its unit file changed on disk and systemd has not reloaded it"
    if unit.file_mtime and unit.active_enter_monotonic and unit.file_mtime - boot_time > unit.active_enter_monotonic:
        return "it was started before its unit file was last installed"
    return ""


def _noticed_stale(state: State, unit: Optional[UnitStatus], cfg: Config, lines: list) -> State:
    """Say once (at warning) that the running API predates its installed unit; say when that is over."""
    if unit is None or unit.error:
        return state
    why = stale_unit(unit, state.boot_time or 0.0)
    if why and why != state.unit_stale:
        how = "sudo ./install.sh --restart-api (or systemctl daemon-reload && systemctl restart UNIT)"
        lines.append(
            line(WARN, f"the running API predates its installed unit: {why}; apply it with {how}", unit=cfg.unit)
        )
    return state._replace(unit_stale=why)


def not_counted(unit: UnitStatus, cfg: Config, now: float) -> str:
    """Why a failed probe is not the API's fault right now ("" when it counts)."""
    if unit.active_state == "inactive":
        return "unit is inactive (stopped by an operator?)"
    if unit.active_state not in ("active", "failed"):  # activating, reloading, maintenance, refreshing, ...
        return f"unit is {unit.active_state or 'in an unknown state'}"
    up = now - unit.active_enter_monotonic
    if unit.active_state == "active" and unit.active_enter_monotonic > 0 and up < cfg.grace:
        return f"starting up: active for {format_duration(up)} of {format_duration(cfg.grace)} grace"
    return ""


def _healthy(state: State, result: CheckResult, cfg: Config, now: float, lines: list) -> State:
    """A healthy probe ends the failure streak; it ends the incident too, unless a human was needed: that
    incident ends once the API has stayed healthy for --recovered-after (a flapping API stays one incident).
    Lines say so. The time of the last page is kept: pages are rate-limited per unit, not per incident."""
    if state.incident_since_mono is not None and state.human_needed and cfg.recovered_after:
        since = state.healthy_since if state.healthy_since is not None else now
        if now - since < cfg.recovered_after:
            if state.healthy_since is None:
                lines.append(
                    line(
                        NOTICE,
                        "health check ok; the incident stays open until the API has been healthy for "
                        f"{format_duration(cfg.recovered_after)} (--recovered-after)",
                        url=cfg.url,
                    )
                )
            return state._replace(failures=0, healthy_since=since)
    if state.incident_since_mono is not None:
        lasted = format_duration(now - state.incident_since_mono)
        if state.human_needed:
            lines.append(line(NOTICE, "incident over: health check recovered", lasted=lasted, url=cfg.url))
        else:
            streak = state.failures or None  # 0 right after a restart: the restart ended the streak
            lines.append(line(NOTICE, "health check recovered", after=lasted, failures=streak, url=cfg.url))
    else:
        latency = f"{result.latency * 1000:.1f}ms"
        lines.append(line(INFO, "health check ok", status=result.status, latency=latency))
    state, summary = _summarised(state, result, now)
    lines.extend(summary)
    incident = {"incident_since": None, "incident_since_mono": None, "human_needed": False, "healthy_since": None}
    return state._replace(failures=0, **incident)


def withheld_because(state: State, unit: UnitStatus, recent: tuple, cfg: Config, now: float) -> str:
    """Why a restart that is due must not happen ("" when it may)."""
    if unit.invocation_id and unit.invocation_id == state.restarted_invocation:
        if state.last_restart and state.last_restart["ok"] is False:
            return "the last restart of this activation timed out and may still be under way (InvocationID unchanged)"
        return "this activation of the unit was already restarted (InvocationID unchanged)"
    if len(recent) < cfg.max_restarts:
        return ""
    if cfg.max_restarts == 0:
        return "restarts disabled (--max-restarts 0)"
    next_in = format_duration(min(recent) + cfg.restart_window - now)
    window = format_duration(cfg.restart_window)
    return f"restart budget exhausted ({len(recent)} in the last {window}), next allowed in {next_in}"


def decide(
    state: State, result: CheckResult, unit: Optional[UnitStatus], cfg: Config, now: float, wall: float
) -> Decision:
    """What one probe means: the whole decision, nothing done. `unit` is None when it was not asked."""
    lines = []
    state = _noticed_stale(state._replace(limits=limits_used(cfg)), unit, cfg, lines)

    def done(code: int, state: State, note: str = "", **extra: object) -> Decision:
        return Decision("none", code, lines, state._replace(last_check=check_record(result, wall, note)), **extra)

    if result.ok:
        state = _healthy(state, result, cfg, now, lines)
        if unit is not None and unit.error:  # it could not restart the API if it had to
            lines.append(line(ERR, f"health check ok, but the watchdog cannot ask systemd: {unit.error}"))
            return done(UNKNOWN, state, unit.error)
        return done(OK, state)

    fields = {"reason": result.reason, "detail": result.detail, "url": cfg.url}
    state = state._replace(healthy_since=None)
    left = paused_left(state, now)
    if left:
        lines.append(
            line(WARN, "health check failed, not counted: watchdog paused", **fields, paused_for=format_duration(left))
        )
        return done(WARNING, state, "paused")
    if unit is None or unit.error:
        why = unit.error if unit is not None else "systemd's view of the unit is unknown"
        lines.append(line(ERR, f"health check failed, cannot judge: {why}", **fields))
        return done(UNKNOWN, state, why)

    why = not_counted(unit, cfg, now)
    if why:
        lines.append(line(WARN, f"health check failed, not counted: {why}", **fields))
        return done(WARNING, state, why)

    failures = state.failures
    if failures and unit.invocation_id and unit.invocation_id != state.invocation_id:
        lines.append(line(NOTICE, "unit was restarted since the last failure (new InvocationID), count starts over"))
        failures = 0
    streak_since = now if not failures else state.streak_since
    if streak_since is None:  # a streak saved by an older version
        streak_since = state.incident_since_mono if state.incident_since_mono is not None else now
    failures = min(failures + 1, cfg.threshold)
    summary = {"summary_since": None, "summary_checks": 0, "summary_min": None, "summary_max": None}
    state = state._replace(failures=failures, invocation_id=unit.invocation_id, streak_since=streak_since, **summary)
    if state.incident_since_mono is None:
        state = state._replace(incident_since=wall, incident_since_mono=now)
    unit_state = f"{unit.active_state}/{unit.sub_state}"
    if failures < cfg.threshold:
        lines.append(
            line(WARN, "health check failed", **fields, failures=f"{failures}/{cfg.threshold}", unit_state=unit_state)
        )
        return done(WARNING, state, "counted", retry=True)
    lasted = now - streak_since
    if lasted < cfg.min_outage:
        lines.append(
            line(
                WARN,
                "health check failed, restart deferred: a brief blip never restarts",
                **fields,
                failures=f"{failures}/{cfg.threshold}",
                failing_for=format_duration(lasted),
                min_outage=format_duration(cfg.min_outage),
            )
        )
        return done(WARNING, state, "counted", retry=True)

    recent = restarts_in_window(state, cfg, now)
    why = withheld_because(state, unit, recent, cfg, now)
    if why:
        lines.append(line(WARN, "health check failed, restart withheld", **fields, unit_state=unit_state))
        state = state._replace(restarts_withheld=state.restarts_withheld + 1)
        before = (state.last_check or {}).get("note") == "withheld"  # the last check was withheld too
        what = f"restart still withheld: {why}" if before else f"NOT restarting: {why}"
        decision = _escalate(state, lines, what, cfg, now, wall)
        return decision._replace(state=decision.state._replace(last_check=check_record(result, wall, "withheld")))

    lines.append(
        line(WARN, "health check failed", **fields, failures=f"{failures}/{cfg.threshold}", unit_state=unit_state)
    )
    restarts = (*recent, now)
    attempt = {"wall": wall, "ok": None, "detail": "in progress"}
    intent = state._replace(restarts=restarts, last_restart=attempt, restarted_invocation=unit.invocation_id)
    announce = line(
        ERR,
        f"restarting unit after {failures} consecutive failures",
        unit=cfg.unit,
        budget=f"{len(restarts)}/{cfg.max_restarts}",
    )
    return Decision(
        "restart", WARNING, lines, intent._replace(last_check=check_record(result, wall, "restarting")), announce
    )


def settle(
    intent: State, ok: bool, detail: str, cfg: Config, now: float, wall: float, *, refused: bool = True
) -> Decision:
    """The outcome of the restart `intent` announced: the count starts over either way.

    Only a restart that worked (or may have: `refused` False, a timeout) marks the unit's activation as
    restarted; one systemd refused or failed leaves the next streak on the same activation free to try."""
    started = intent.last_restart["wall"] if intent.last_restart else wall
    state = intent._replace(
        failures=0, invocation_id="", last_restart={"wall": started, "ok": ok, "detail": one_line(detail, 600)}
    )
    if not ok and refused:
        state = state._replace(restarted_invocation="")
    if ok:
        state = state._replace(restarts_ok=state.restarts_ok + 1)
        return Decision("none", WARNING, [line(WARN, "restart done", unit=cfg.unit, detail=detail)], state)
    state = state._replace(restarts_failed=state.restarts_failed + 1)
    return _escalate(state, [], f"restart failed: {detail}", cfg, now, wall)


INTERRUPTED = "outcome unknown: the watchdog was killed during or just after this restart"


def interrupted(state: State) -> tuple:
    """A restart written ahead but never settled: the run was killed. It stays counted in the budget.

    Whether systemd restarted the unit is unknown, so the next streak may
    restart it again (within the budget) even on the same InvocationID."""
    restart = state.last_restart
    if not restart or restart["ok"] is not None or restart["detail"] == INTERRUPTED:
        return state, []
    state = state._replace(
        last_restart={**restart, "detail": INTERRUPTED},
        restarted_invocation="",
        restarts_unknown=state.restarts_unknown + 1,
    )
    lines = [line(ERR, "the previous run was killed during or just after its restart; that restart stays counted")]
    return state, lines


# --- Side effects -----------------------------------------------------------


class Log:
    """One line per event; sd-daemon priority prefixes when the stream is the journal."""

    def __init__(self, journal: bool, verbose: bool, stream=None) -> None:
        self.journal = journal
        self.verbose = verbose
        self.stream = stream

    def __call__(self, priority: int, message: str, **fields: object) -> None:
        if priority >= INFO and not self.verbose:
            return
        pairs = kv(**fields)
        text = clean(message) + (f" {pairs}" if pairs else "")
        if self.journal:
            text = f"<{priority}>{text}"
        stream = self.stream or sys.stdout
        try:
            stream.write(text + "\n")
            stream.flush()
        except OSError:  # a closed pipe or a full disk must never stop counting or a restart
            pass

    def lines(self, lines: list) -> None:
        for priority, message, fields in lines:
            self(priority, message, **fields)


def is_journal(environ: Mapping[str, str], stream) -> bool:
    """True when `stream` is the journald stream systemd gave us (JOURNAL_STREAM, systemd.exec(5))."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def to_syslog(priority: int, message: str) -> None:
    """One line to the system log under the watchdog's identifier (journald reads /dev/log)."""
    import syslog

    syslog.openlog(IDENTIFIER, 0, syslog.LOG_DAEMON)
    syslog.syslog(priority, clean(message))
    syslog.closelog()


class _Deadline(BaseException):
    """Raised by SIGALRM inside the probe; BaseException so no library swallows it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Deadline()


class _FinalResponse(http.client.HTTPResponse):
    """Skips 1xx interim responses (103 Early Hints, ...): RFC 9110 section 15.2.

    http.client skips only 100 Continue by itself."""

    def _read_status(self):
        version, status, reason = super()._read_status()
        for _ in range(INTERIM_MAX):
            if not 102 <= status < 200:
                break
            http.client.parse_headers(self.fp)  # the interim response's headers, discarded
            version, status, reason = super()._read_status()
        return version, status, reason


class _Connection(http.client.HTTPConnection):
    response_class = _FinalResponse


class _TLSConnection(http.client.HTTPSConnection):
    response_class = _FinalResponse


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's handlers on connections that skip interim responses."""

    def http_open(self, request):
        return self.do_open(_Connection, request)

    def https_open(self, request):
        return self.do_open(_TLSConnection, request, context=self._context)


class _KeepResponse(urllib.request.HTTPErrorProcessor):
    """Hand every response back as it is: no redirects followed, no HTTPError."""

    def http_response(self, request, response):
        return response

    https_response = http_response


def _fetch(cfg: Config) -> tuple:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Handler(), _KeepResponse())
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
    """Run one command with a timeout; WatchdogError when it cannot be run at all. Output decoded safely."""
    import subprocess

    try:
        proc = subprocess.run(argv, check=False, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as expired:
        return Completed(None, "", (expired.stderr or b"").decode("utf-8", "replace"))
    except OSError as error:
        raise WatchdogError(f"--systemctl cannot be run: {clean(argv[0])}: {error.strerror}") from None
    return Completed(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def this_boot(clock: Clock, path: str = BOOT_ID_FILE) -> tuple:
    """(boot id, wall-clock time of monotonic zero) of the running kernel."""
    try:
        with open(path, "rb") as handle:
            boot_id = clean(handle.read(64).decode("ascii", "replace").strip())
    except OSError:
        boot_id = "unknown"
    return boot_id, clock.wall() - clock.monotonic()


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def refuse_special(path: str, what: str) -> None:
    """WatchdogError when PATH exists as anything but a regular file or a symlink; it is left as it is."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise WatchdogError(f"cannot use {what} {clean(path)}: {error.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise WatchdogError(f"{what} {clean(path)} is {_kind(mode)}, not a regular file; left as it is")


def open_regular(path: str, flags: int, what: str, mode: int = 0o600) -> Optional[int]:
    """PATH opened without following a symlink or blocking; None when it is missing.

    WatchdogError when it is not a regular file (checked before and after opening)."""
    refuse_special(path, what)
    return open_no_follow(path, flags, what, mode)


def open_no_follow(
    name: str, flags: int, what: str, mode: int = 0o600, dir_fd: Optional[int] = None, shown: str = ""
) -> Optional[int]:
    """NAME (in dir_fd, when given) opened without following a symlink or blocking; None when it is
    missing. WatchdogError when it is not a regular file. `shown` is the path messages name."""
    shown = clean(shown or name)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise WatchdogError(f"{what} {shown} is a symlink; not followed") from None
        raise WatchdogError(f"cannot open {what} {shown}: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WatchdogError(f"{what} {shown} is not a regular file; left as it is")
    return fd


def read_regular(path: str, what: str, cap: int) -> Optional[bytes]:
    """The bytes of a regular file (at most cap + 1), None when missing. A symlink is never followed."""
    fd = open_regular(path, os.O_RDONLY, what)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(cap + 1)
        except OSError as error:
            raise WatchdogError(f"cannot read {what} {clean(path)}: {error.strerror}") from None


def hand_over(fd: int, directory_fd: int) -> None:
    """Run by root (sudo leadgen-watchdog pause), give a file it just created to its directory's owner.

    Under the unprivileged unit, the watchdog's own user owns its runtime
    directory; a root-owned 0600 pause or lock file there would lock it out.
    Only descriptors are used: that user may swap any name in the directory."""
    if os.geteuid() != 0:
        return
    info = os.fstat(directory_fd)
    if info.st_uid != 0:
        os.fchown(fd, info.st_uid, info.st_gid)


def open_directory(path: str, what: str) -> tuple:
    """(descriptor of PATH's directory, PATH's base name): every later step works on the descriptor."""
    directory, base = os.path.split(os.path.abspath(path))
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), base
    except OSError as error:
        raise WatchdogError(f"cannot write {what} {clean(path)}: {clean(directory)}: {error.strerror}") from None


# A temporary file beside its target: .BASE.PID.RANDOM.tmp. The random part makes the name unpredictable
# (nobody can plant a symlink there first); the pattern is the only one remove_stale_temps deletes.
TEMP_NAME = re.compile(r"\.(.+)\.([0-9]{1,7})\.[0-9a-f]{16}\.tmp")
PID_MAX_FILE = "/proc/sys/kernel/pid_max"
PID_LIMIT = 4194304  # the kernel's highest pid_max (PID_MAX_LIMIT on 64-bit)


def temp_name(base: str) -> str:
    return f".{base}.{os.getpid()}.{os.urandom(8).hex()}.tmp"


def replace_file(path: str, data: bytes, what: str, mode: int = 0o600) -> None:
    """Write a new file beside PATH, then rename it over PATH: readers never see half a file.

    The directory may be writable by another user (the watchdog's own, or
    node_exporter's textfile directory): the temporary file is created with
    O_EXCL|O_NOFOLLOW under an unpredictable name, and its owner, mode and
    contents are set on the descriptor, never by name. A symlink at PATH is
    replaced, its target never written; anything else that is not a regular
    file is refused and left as it is."""
    refuse_special(path, what)
    directory_fd, base = open_directory(path, what)
    temp = temp_name(base)
    try:
        fd = os.open(
            temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory_fd
        )
        try:
            try:
                hand_over(fd, directory_fd)
                os.fchmod(fd, mode)  # not narrowed or widened by the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, base, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=directory_fd)
            except OSError:
                pass
            raise
    except OSError as error:
        raise WatchdogError(f"cannot write {what} {clean(path)}: {error.strerror}") from None
    finally:
        os.close(directory_fd)


def pid_max(path: str = PID_MAX_FILE) -> int:
    try:
        with open(path, "rb") as handle:
            return min(int(handle.read(16).strip()), PID_LIMIT)
    except (OSError, ValueError):
        return PID_LIMIT


def remove_stale_temps(path: str, log: Optional[Callable] = None) -> None:
    """Remove temporary files of PATH (see replace_file) whose process is gone: left by a kill mid-write.

    Only names of replace_file's own pattern, with a pid within pid_max, are touched; an operator's
    state.json.20261206 or leadgen.prom.bak is not. A file that cannot be removed is skipped (said once
    per run when a log is given); nothing here stops a run."""
    directory, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except OSError:
        return
    highest = pid_max()
    for name in names:
        match = TEMP_NAME.fullmatch(name)
        if not match or match.group(1) != base:
            continue
        pid = int(match.group(2))
        if not 0 < pid <= highest or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except OSError:
            continue  # alive, as another user
        try:
            os.unlink(os.path.join(directory, name))
        except OSError as error:
            if log is not None:
                log(NOTICE, f"cannot remove a stale temporary file {clean(name)}: {error.strerror}")


def load_state(path: str, boot: tuple) -> tuple:
    """(state, problem): the saved state stamped with this boot, or a fresh one and why it was unusable."""
    boot_id, boot_time = boot
    fresh = State(boot_id=boot_id, boot_time=boot_time)
    if os.path.islink(path):
        return fresh, "a symlink (not followed; it will be replaced)"
    raw = read_regular(path, "state file", STATE_CAP)
    if raw is None:
        return fresh, "missing"
    try:
        if not raw.strip():
            raise ValueError("empty")
        if len(raw) > STATE_CAP:
            raise ValueError(f"larger than {STATE_CAP} bytes")
        data = decode_json(raw)
        if type(data) is dict and data.get("version", STATE_VERSION) != STATE_VERSION:
            # Another STATE_VERSION: an incompatible change. The budget and the incident carry over.
            valid = {f.name: f.valid for f in STATE_FIELDS}
            data = {k: v for k, v in data.items() if k in CARRIED and valid[k](v)}
        state = record_from_json(data, STATE_FIELDS, State)
    except ValueError as error:
        return fresh, f"unusable ({clean(error)[:120]})"
    if not same_boot(state, boot_id, boot_time):
        return fresh, "from another boot"
    return state._replace(boot_id=boot_id, boot_time=boot_time), ""


def save_state(path: str, state: State) -> None:
    data = dict(state._asdict(), restarts=list(state.restarts[-RESTARTS_KEPT:]))
    replace_file(path, json.dumps(data, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n", "state file")


def pause_path(state_file: str) -> str:
    return state_file + ".pause"


def load_pause(state_file: str, boot: tuple) -> Optional[Pause]:
    """The operator's latest pause or resume on this boot; None when there is none or it is unusable.

    A symlink there is not followed (treated as no pause; the next pause or resume replaces it)."""
    if os.path.islink(pause_path(state_file)):
        return None
    raw = read_regular(pause_path(state_file), "pause file", 4096)
    if raw is None:
        return None
    try:
        pause = record_from_json(decode_json(raw), PAUSE_FIELDS, Pause)
    except ValueError:
        return None
    return pause if same_boot(pause, *boot) else None


class StateLock:
    """An flock on PATH.lock; waits up to `wait` seconds, then reports busy."""

    def __init__(self, state_file: str, wait: float = LOCK_WAIT) -> None:
        self.path = state_file + ".lock"
        self.wait = wait
        self.fd = -1

    def __enter__(self) -> bool:
        ensure_directory(self.path)
        refuse_special(self.path, "lock file")
        directory_fd, base = open_directory(self.path, "lock file")
        try:
            self.fd = self._open(directory_fd, base)
        finally:
            os.close(directory_fd)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def _open(self, directory_fd: int, base: str) -> int:
        """The lock file, created (and handed over) if missing; an existing one is opened as it is, never
        handed over (it may be a hard link to a file the directory's owner must not get)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        for _ in range(10):  # the name may be removed and created again between the two opens
            try:
                fd = os.open(base, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=directory_fd)
            except FileExistsError:
                pass
            except OSError as error:
                raise WatchdogError(f"cannot open lock file {clean(self.path)}: {error.strerror}") from None
            else:
                try:
                    hand_over(fd, directory_fd)
                except OSError as error:
                    os.close(fd)
                    raise WatchdogError(
                        f"cannot hand the lock file {clean(self.path)} over: {error.strerror}"
                    ) from None
                return fd
            fd = open_no_follow(base, os.O_RDWR, "lock file", dir_fd=directory_fd, shown=self.path)
            if fd is not None:
                return fd
        raise WatchdogError(f"cannot open lock file {clean(self.path)}: it keeps disappearing")

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def ensure_directory(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise WatchdogError(f"state not writable: {clean(directory)}: {error.strerror}") from None


def query_unit(cfg: Config, systemctl: Callable) -> UnitStatus:
    """systemd's view of the unit; a UnitStatus whose error says why when it cannot be had."""
    argv = [
        cfg.systemctl,
        "show",
        "--property=LoadState,ActiveState,SubState,ActiveEnterTimestampMonotonic,InvocationID,"
        "NeedDaemonReload,FragmentPath",
        cfg.unit,
    ]
    try:
        done = systemctl(argv, SHOW_TIMEOUT)
    except WatchdogError as error:
        return UnitStatus(error=str(error))
    if done.returncode != 0:
        what = "timed out" if done.returncode is None else f"exited {done.returncode}"
        return UnitStatus(error=f"systemctl show {what}: {clean(done.stderr.strip())[:200] or 'no stderr'}")
    unit = parse_show(done.stdout)
    fragment = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line).get("FragmentPath", "")
    if fragment:
        try:
            unit = unit._replace(file_mtime=os.stat(fragment).st_mtime)
        except OSError:
            pass
    if unit.load_state == "not-found" or not unit.load_state:
        return unit._replace(error=f"--unit {cfg.unit!r} not found by systemd (LoadState={unit.load_state or '?'})")
    return unit


def one_line(text: str, limit: int = 200) -> str:
    """TEXT as one safe line: whitespace (newlines too) folded to spaces, cut at a word with '...' if long."""
    text = clean(" ".join(text.split()))
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0] if " " in text[: limit - 3] else text[: limit - 3]
    return cut.rstrip(" ,;:") + "..."


def first_line(text: str) -> str:
    """The first non-blank line of a command's stderr (systemctl's second line is a 'See ...' hint)."""
    return next((one_line(part) for part in text.splitlines() if part.strip()), "")


_CAUSE = re.compile(r"error|fail|not |cannot|can't|denied|refused|invalid|missing|unreadable", re.IGNORECASE)


def failure_cause(cfg: Config, systemctl: Callable, timeout: float) -> str:
    """Why the unit failed to start, from systemd (its Result) and the journal (the last error line its own
    commands logged in that activation): 'unit Result=exit-code, its last error: ...'; '' when neither says.
    Each of its two commands may take `timeout` seconds: what the restart left of --restart-timeout."""
    argv = [cfg.systemctl, "show", "--property=Result,InvocationID", cfg.unit]
    try:
        done = systemctl(argv, timeout)
    except WatchdogError:
        return ""
    if done.returncode != 0:
        return ""
    props = dict(part.split("=", 1) for part in done.stdout.splitlines() if "=" in part)
    result = props.get("Result", "")
    if result in ("", "success"):  # the unit did not fail (a refused restart): its journal says nothing of why
        return ""
    parts = [f"unit Result={one_line(result, 40)}"]
    invocation = props.get("InvocationID", "")
    if re.fullmatch(r"[0-9a-f]{32}", invocation):
        argv = [JOURNALCTL, f"_SYSTEMD_UNIT={cfg.unit}", f"_SYSTEMD_INVOCATION_ID={invocation}"]
        argv += ["--lines=20", "--output=cat", "--no-pager", "--quiet"]
        try:
            done = systemctl(argv, timeout)
        except WatchdogError:  # no journalctl: systemd's Result is all there is
            done = Completed(1, "", "")
        said = [text for text in done.stdout.splitlines() if text.strip()] if done.returncode == 0 else []
        errors = [text for text in said if _CAUSE.search(text)] or said
        if errors:
            parts.append(f"its last error: {one_line(errors[-1], 240)}")
    return ", ".join(parts)


def restart_unit(cfg: Config, unit: UnitStatus, systemctl: Callable, log: Log) -> tuple:
    """Restart the unit; (ok, detail, refused). A failed unit is reset first so start limits allow it.

    refused is True when the restart surely did not happen (a command failed, or reset-failed timed out
    before the restart was asked); a restart that timed out may still be under way. The detail of a
    failure is one line that names the cause: systemctl's message, the unit's Result, its last error."""
    commands = []
    if unit.active_state == "failed":
        commands.append(([cfg.systemctl, "reset-failed", cfg.unit], SHOW_TIMEOUT))
    commands.append(([cfg.systemctl, "restart", cfg.unit], cfg.restart_timeout))
    start = time.monotonic()
    for argv, timeout in commands:
        log(NOTICE, "+ " + " ".join(argv))
        try:
            done = systemctl(argv, timeout)
        except WatchdogError as error:  # systemctl vanished between show and restart
            return False, str(error), True
        if done.returncode is None:
            return False, f"{argv[1]} timed out after {format_duration(timeout)}", argv[1] != "restart"
        if done.returncode != 0:
            detail = f"{argv[1]} exited {done.returncode}: {first_line(done.stderr) or 'no stderr'}"
            spare = min(CAUSE_TIMEOUT, (timeout - (time.monotonic() - start)) / 2)  # within the run's limit
            cause = failure_cause(cfg, systemctl, spare) if argv[1] == "restart" and spare >= 0.5 else ""
            return False, f"{detail}; {cause}" if cause else detail, True
    return True, f"restarted in {time.monotonic() - start:.1f}s", False


METRICS = (
    ("probe_success", "gauge", "1 if the last health probe was healthy, else 0"),
    ("probe_duration_seconds", "gauge", "Latency of the last health probe"),
    ("consecutive_failures", "gauge", "Consecutive counted failures after this run"),
    ("failure_threshold", "gauge", "Consecutive counted failures that trigger a restart (--threshold)"),
    (
        "restarts_total",
        "counter",
        "Restarts done (ok), failed, withheld by the budget, or of unknown outcome (the run was killed), since boot",
    ),
    ("last_restart_timestamp_seconds", "gauge", "Wall time of the last restart attempt, 0 if none since boot"),
    ("paused", "gauge", "1 while the watchdog is paused"),
    ("pause_end_timestamp_seconds", "gauge", "Wall time the latest pause in force ends, 0 when none"),
    ("incident", "gauge", "1 while a human is needed: a restart failed or was withheld, no recovery since"),
    ("last_run_timestamp_seconds", "gauge", "Wall time of this watchdog run"),
)


def metrics_text(state: State, cfg: Config, now: float, wall: float, last_run: Optional[float] = None) -> str:
    """node_exporter textfile exposition of one run: HELP and TYPE for each metric, no timestamps.

    `wall` is the clock now; `last_run` the wall time of the last run, when that was earlier (a `pause`).
    A pause ends on the monotonic clock, so its end is published as now plus what is left of it: a wall
    clock stepped since the `pause` moves the end with it."""
    left = paused_left(state, now)
    check = state.last_check or {}
    restart = state.last_restart or {}
    values = {
        "probe_success": [("", 1 if check.get("ok") else 0)],
        "probe_duration_seconds": [("", check.get("latency", 0.0))],
        "consecutive_failures": [("", state.failures)],
        "failure_threshold": [("", cfg.threshold)],
        "restarts_total": [
            ('{result="ok"}', state.restarts_ok),
            ('{result="failed"}', state.restarts_failed),
            ('{result="withheld"}', state.restarts_withheld),
            ('{result="unknown"}', state.restarts_unknown),
        ],
        "last_restart_timestamp_seconds": [("", restart.get("wall", 0))],
        "paused": [("", 1 if left else 0)],
        "pause_end_timestamp_seconds": [("", round(wall + left, 3) if left else 0)],
        "incident": [("", 1 if state.human_needed else 0)],
        "last_run_timestamp_seconds": [("", round(wall if last_run is None else last_run, 3))],
    }
    out = []
    for name, kind, text in METRICS:
        full = f"leadgen_watchdog_{name}"
        out.append(f"# HELP {full} {text}.\n# TYPE {full} {kind}\n")
        out.extend(f"{full}{labels} {value!r}\n" for labels, value in values[name])
    return "".join(out)


def publish_metrics(
    cfg: Config, state: State, log: Log, now: float, wall: float, last_run: Optional[float] = None
) -> State:
    """Write the textfile when --metrics-file is set; a failure is logged once and changes nothing else."""
    if cfg.metrics_file is None:
        return state
    try:
        replace_file(cfg.metrics_file, metrics_text(state, cfg, now, wall, last_run).encode(), "metrics file", 0o644)
    except WatchdogError as error:
        if not state.metrics_failing:
            log(WARN, f"metrics not written: {error}")
        return state._replace(metrics_failing=True)
    if state.metrics_failing:
        log(NOTICE, "metrics written again", metrics_file=cfg.metrics_file)
    return state._replace(metrics_failing=False)


def run_once(
    cfg: Config,
    log: Log,
    *,
    probe: Callable[[Config], CheckResult] = http_probe,
    systemctl: Callable[[list, float], Completed] = run_systemctl,
    clock: Clock = CLOCK,
    boot: Optional[tuple] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """One watchdog run under the state lock: probe, decide, act; re-probe while a failure streak builds."""
    started = clock.monotonic()  # before the lock wait: all of it counts against RUN_LIMIT
    refuse_special_paths(cfg)
    with StateLock(cfg.state_file) as locked:
        if not locked:
            log(NOTICE, "skipped: another watchdog run holds the state lock", lock=cfg.state_file + ".lock")
            return WARNING
        remove_stale_temps(cfg.state_file, log)
        remove_stale_temps(pause_path(cfg.state_file), log)
        if cfg.metrics_file is not None:
            remove_stale_temps(cfg.metrics_file, log)
        boot = boot or this_boot(clock)
        state, problem = load_state(cfg.state_file, boot)
        if problem == "missing":
            log(NOTICE, "no state yet (first run since boot), starting fresh", state=cfg.state_file)
        elif problem:
            log(NOTICE, f"state file {problem}, starting fresh", state=cfg.state_file)
        state, lines = interrupted(state)
        log.lines(lines)
        while True:
            result = probe(cfg)
            now, wall = clock.monotonic(), clock.wall()
            state, _ = with_pause(state, load_pause(cfg.state_file, boot), now)
            unit = None if paused_left(state, now) else query_unit(cfg, systemctl)  # also when healthy: stale unit
            decision = decide(state, result, unit, cfg, now, wall)
            if decision.action == "restart":  # a pause issued while systemd was asked wins over the restart
                state, paused = with_pause(state, load_pause(cfg.state_file, boot), now)
                if paused:
                    decision = decide(state, result, unit, cfg, now, wall)
            log.lines(decision.lines)
            if decision.action == "restart":
                try:
                    save_state(cfg.state_file, decision.state)  # write-ahead: a killed run has counted it
                except WatchdogError as error:
                    raise WatchdogError(f"cannot record the restart, not restarting: {error}") from None
                log(*decision.announce[:2], **decision.announce[2])
                ok, detail, refused = restart_unit(cfg, unit, systemctl, log)
                decision = settle(decision.state, ok, detail, cfg, clock.monotonic(), clock.wall(), refused=refused)
                log.lines(decision.lines)
            save_state(cfg.state_file, decision.state)  # the metrics show only what is saved
            state = publish_metrics(cfg, decision.state, log, now, wall)
            if state.metrics_failing != decision.state.metrics_failing:
                save_state(cfg.state_file, state)
            if not decision.retry or not cfg.retry_interval:
                return decision.code
            worst = cfg.retry_interval + worst_probe_and_restart(cfg)
            if clock.monotonic() - started + worst > RUN_LIMIT:
                log(NOTICE, f"no re-probe in this run: it could not finish within {RUN_LIMIT:g}s; the next run goes on")
                return decision.code
            sleep(cfg.retry_interval)


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


# `status --json`: every key, always; null where the value is unknown.
STATUS_KEYS = (
    "state_file", "state", "problem", "healthy", "last_check", "failures", "threshold",
    "incident", "incident_since", "human_needed", "last_alert", "last_restart",
    "restarts_in_window", "max_restarts", "restart_window", "restarts_total",
    "paused", "paused_until", "paused_for", "pauses", "grace", "limits_used", "unit_stale",
)  # fmt: skip


def status_report(
    cfg: Config, state: Optional[State], problem: str, pause: Optional[Pause], now: float, wall: float
) -> dict:
    """The `status` report: one schema (STATUS_KEYS), with or without a usable state. A pause's end is
    now plus what is left of it (pauses run on the monotonic clock), true after a wall-clock step."""
    until, _ = pause_in_force(state, pause)
    left = pause_left(until, now)
    report = dict.fromkeys(STATUS_KEYS)
    report.update(
        state_file=cfg.state_file,
        state="ok" if state else ("none" if problem == "missing" else "unusable"),
        problem=None if state or problem == "missing" else problem,
        threshold=cfg.threshold,
        max_restarts=cfg.max_restarts,
        restart_window=cfg.restart_window,
        grace=cfg.grace,
        paused=bool(left),
        paused_until=wall + left if left else None,
        paused_for=left,
        pauses=[
            {"owner": p["owner"], "until": wall + pause_left(p["until"], now), "for": pause_left(p["until"], now)}
            for p in pauses_in_force(state, pause, now)
        ],
    )
    if state:
        check = state.last_check
        report.update(
            healthy=None if check is None else check["ok"],
            last_check=check,
            failures=state.failures,
            incident=state.incident_since is not None,
            incident_since=state.incident_since,
            human_needed=state.human_needed,
            last_alert=state.alerted_wall,
            last_restart=state.last_restart,
            restarts_in_window=len(restarts_in_window(state, cfg, now)),
            restarts_total={
                "ok": state.restarts_ok,
                "failed": state.restarts_failed,
                "withheld": state.restarts_withheld,
                "unknown": state.restarts_unknown,
            },
            limits_used=state.limits,
            unit_stale=state.unit_stale or None,
        )
    return report


def print_status(report: dict) -> None:
    if report["state"] == "none":
        print(f"no state at {clean(report['state_file'])}: the watchdog has not run since boot")
    elif report["state"] == "unusable":
        print(
            f"state:        UNUSABLE at {clean(report['state_file'])}: {report['problem']}; the next run starts fresh"
        )
    else:
        check = report["last_check"]
        if check:
            verdict = "healthy" if check["ok"] else f"failed reason={check['reason']}"
            note = f" ({check['note']})" if check["note"] else ""
            print(clean(f"last check:   {format_wall(check['wall'])}  {verdict} {check['detail']}{note}"))
        else:
            print("last check:   never")
        print(f"failures:     {report['failures']}/{report['threshold']}")
        if report["incident"]:
            need = "a human is needed" if report["human_needed"] else "the watchdog is handling it"
            alert = f", last alert {format_wall(report['last_alert'])}" if report["last_alert"] else ""
            print(f"incident:     open since {format_wall(report['incident_since'])}: {need}{alert}")
        else:
            print("incident:     none")
        restart = report["last_restart"]
        if restart:
            outcome = {True: "ok", False: "FAILED", None: "IN PROGRESS"}[restart["ok"]]
            outcome = "UNKNOWN" if restart["detail"] == INTERRUPTED else outcome
            print(clean(f"last restart: {format_wall(restart['wall'])}  {outcome} {restart['detail']}"))
        else:
            print("last restart: none since boot")
        window = format_duration(report["restart_window"])
        print(f"restarts:     {report['restarts_in_window']}/{report['max_restarts']} in the last {window}")
        totals = report["restarts_total"]
        print(
            f"since boot:   {totals['ok']} ok, {totals['failed']} failed, {totals['withheld']} withheld, "
            f"{totals['unknown']} unknown (the run was killed)"
        )
        if report["unit_stale"]:
            print(f"API unit:     STALE: the running API predates its installed unit: {report['unit_stale']}")
        used = report["limits_used"]
        if used and (used["threshold"], used["max_restarts"]) != (report["threshold"], report["max_restarts"]):
            print(
                f"NOTE:         the last run used threshold {used['threshold']:g} and budget "
                f"{used['max_restarts']:g} in {format_duration(used['restart_window'])}, not the settings shown"
            )
    if report["paused"]:
        until = format_wall(report["paused_until"])
        print(f"paused:       yes, until {until} ({format_duration(report['paused_for'])} left)")
        for owned in report["pauses"]:
            print(f"  by {owned['owner']}: until {format_wall(owned['until'])} ({format_duration(owned['for'])} left)")
    else:
        print("paused:       no")
    print(f"grace:        {format_duration(report['grace'])} after the unit becomes active")


def refuse_special_paths(cfg: Config) -> None:
    """The state, its lock and its pause file are regular files or absent; anything else stops the command."""
    refuse_special(cfg.state_file, "state file")
    refuse_special(cfg.state_file + ".lock", "lock file")
    refuse_special(pause_path(cfg.state_file), "pause file")


def pauses_in_force(state: Optional[State], pause: Optional[Pause], now: float) -> list:
    """Every pause in force as {owner, until, until_wall}, latest end first. A pause written by an older
    version (or carried only by the state) is the operator's."""
    if pause is not None and pause.pauses:
        owned = [dict(p) for p in pause.pauses]
    else:
        until, until_wall = pause_in_force(state, pause)
        owned = [{"owner": OPERATOR, "until": until, "until_wall": until_wall or 0.0}] if until else []
    return sorted((p for p in owned if pause_left(p["until"], now)), key=lambda p: -p["until"])


def owned_pauses(before: list, owner: str, seconds: float, now: float, wall: float) -> tuple:
    """(pauses in force after OWNER's pause or resume, pauses it ended), latest end first."""
    if seconds:
        mine = [p["until"] for p in before if p["owner"] == owner]
        until = max([now + seconds, *mine])  # never shortens the owner's longer pause
        after = [p for p in before if p["owner"] != owner]
        after.append({"owner": owner, "until": until, "until_wall": wall + (until - now)})
        ended = []
    else:
        ended = before if owner == OPERATOR else [p for p in before if p["owner"] == owner]
        after = [p for p in before if p not in ended]
    return sorted(after, key=lambda p: -p["until"]), ended


def pause_message(after: list, ended: list, owner: str, seconds: float, now: float) -> str:
    """What a pause or resume did, naming every owner it touched and every pause still in force."""
    mine = next((p for p in after if p["owner"] == owner), None)
    others = [p for p in after if p["owner"] != owner]
    by = "" if owner == OPERATOR else f" by {owner}"
    if seconds and mine:
        message = (
            f"watchdog paused{by} for {format_duration(mine['until'] - now)}, until {format_wall(mine['until_wall'])}"
        )
        if mine["until"] > now + seconds + 1:
            message += " (its longer pause in force is kept)"
    elif [p["owner"] for p in ended] == [owner]:
        message = f"pause{by} ended" if others else "watchdog resumed"
    elif ended:
        message = "watchdog resumed: ended the pause" + ("s" if len(ended) > 1 else "") + " of "
        message += ", ".join(f"{p['owner']} (until {format_wall(p['until_wall'])})" for p in ended)
    else:
        message = "watchdog resumed (it was not paused)" if not by else f"resume{by}: it had no pause in force"
    if others:
        message += "; still paused by " + ", ".join(
            f"{p['owner']} until {format_wall(p['until_wall'])}" for p in others
        )
    return message + " (by hand: the failure count starts over)"


def _lock_directory(fd: int, path: str) -> None:
    """An flock on the state directory: two `pause` or `resume` commands read and write the pause file one
    at a time (runs do not take it: a run probing a hung API never delays a pause)."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise WatchdogError(f"another pause or resume holds {clean(path)}; try again") from None
            time.sleep(0.05)


def set_pause(
    cfg: Config,
    seconds: float,
    log: Log,
    *,
    owner: str = OPERATOR,
    clock: Clock = CLOCK,
    syslog: Optional[Callable] = None,
) -> int:
    """Pause (seconds > 0) or resume (0) for OWNER, at once: a run in progress applies it at its next probe.

    A pause never shortens a longer one in force. `resume` by the operator ends every pause; by another
    owner (automation: install.sh), only its own. The pause file is written without the run lock, so a
    run probing a hung API cannot delay it or overwrite it. The failure count starts over either way."""
    refuse_special_paths(cfg)
    boot = this_boot(clock)
    ensure_directory(cfg.state_file)
    directory_fd, _ = open_directory(cfg.state_file, "pause file")
    try:
        _lock_directory(directory_fd, os.path.dirname(os.path.abspath(cfg.state_file)))
        now, wall = clock.monotonic(), clock.wall()
        try:  # an unreadable pause or state must not stop a pause or resume
            state, problem = load_state(cfg.state_file, boot)
            state = None if problem else state
            before = pauses_in_force(state, load_pause(cfg.state_file, boot), now)
        except WatchdogError:
            state, before = None, []
        after, ended = owned_pauses(before, owner, seconds, now, wall)
        latest = after[0] if after else None
        pause = Pause(
            id=f"{wall:.6f}-{os.getpid()}",
            boot_id=boot[0],
            boot_time=boot[1],
            until=latest["until"] if latest else None,
            until_wall=latest["until_wall"] if latest else None,
            pauses=tuple(after),
        )
        data = json.dumps(pause._asdict(), sort_keys=True, allow_nan=False).encode() + b"\n"
        replace_file(pause_path(cfg.state_file), data, "pause file")
    finally:
        os.close(directory_fd)
    message = pause_message(after, ended, owner, seconds, now)
    log(NOTICE, message)
    if syslog is not None:
        syslog(NOTICE, message)
    if cfg.metrics_file is not None and state is not None:
        shown, _ = with_pause(state, pause, now)  # as the next run will see it
        last_run = (state.last_check or {}).get("wall", 0.0)
        publish_metrics(cfg, shown._replace(metrics_failing=False), log, now, wall, last_run)
    return OK


def show_status(cfg: Config, *, as_json: bool, clock: Clock = CLOCK) -> int:
    refuse_special_paths(cfg)
    boot = this_boot(clock)
    state, problem = load_state(cfg.state_file, boot)
    pause = load_pause(cfg.state_file, boot)
    report = status_report(cfg, None if problem else state, problem, pause, clock.monotonic(), clock.wall())
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    else:
        print_status(report)
    return OK


# --- Command line -----------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are configuration errors: one line, exit 3."""

    def error(self, message: str) -> None:
        raise WatchdogError(clean(message))


def build_parser(prog: str) -> argparse.ArgumentParser:
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
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the documentation paths whole
        description="Health watchdog for motorcade-leadgen-api.service (Wave 2 runtime hardening).\n"
        f"Settings: defaults < {ENV_FILE} < environment < flags.",
        epilog="Exit codes: 0 OK, 1 WARNING (handled), 2 CRITICAL (a human is needed), 3 UNKNOWN (watchdog broken).\n"
        f"Documentation: {DOC_DIR}/docs/configuration.md (every setting),\n"
        "docs/operations.md (on-call), docs/runbook.md (alerts), README.md beside them.",
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
            sub.add_argument("--json", action="store_true", help="print the state as JSON (one schema: README)")
        if name == "pause":
            sub.add_argument("duration", nargs="?", default=PAUSE_DEFAULT, help="like 90s, 15m, 2h (default 30m)")
        if name in ("pause", "resume"):
            sub.add_argument(
                "--owner",
                default=OPERATOR,
                help=f"who pauses: automation uses its own token, and its resume ends only its pause; "
                f"`resume` by {OPERATOR} (the default) ends every pause",
            )
    return parser


def main(
    argv: Optional[list] = None,
    environ: Optional[Mapping[str, str]] = None,
    *,
    env_file: Optional[str] = None,
    syslog: Optional[Callable] = None,
    site: Optional[Mapping[str, str]] = None,
) -> int:
    """The command line. Every failure is one line on stderr and exit 3; never a traceback unless --verbose.

    site: settings install.sh chose for this host (the installed launcher passes them, e.g. the metrics
    file where node_exporter is), below watchdog.env, the environment and the flags, as under the unit."""
    environ = os.environ if environ is None else environ
    called = os.path.basename(sys.argv[0]) if argv is None else ""
    prog = called if called and not called.startswith("-") else "leadgen_watchdog.py"  # not `python3 -c`
    errors = Log(journal=is_journal(environ, sys.stderr), verbose=True, stream=sys.stderr)
    words = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in words or environ.get(ENV_PREFIX + "VERBOSE", "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    try:
        args = vars(build_parser(prog).parse_args(argv))
        notes = []
        # Under the unit, systemd has loaded watchdog.env (EnvironmentFile=) as root; an
        # unprivileged watchdog that may not read it again says nothing about it.
        from_file = read_env_file(env_file or ENV_FILE, notes.append)
        if environ.get("INVOCATION_ID"):
            notes = []
        settings = {**(site or {}), **{k: v for k, v in from_file.items() if k.startswith(ENV_PREFIX)}}
        merged = {**settings, **{k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}}
        cfg = build_config(args, merged)
        for note in notes:
            errors(NOTICE, f"{prog}: {note}")
        for name in unknown_variables(merged):
            errors(NOTICE, f"{prog}: unknown setting {name} ignored (a typo?)")
        journal = is_journal(environ, sys.stdout)
        log = Log(journal=journal, verbose=cfg.verbose)
        command = args.get("command") or "run"
        if command == "check":
            return check_once(cfg)
        if command == "status":
            return show_status(cfg, as_json=args.get("json", False))
        if command in ("pause", "resume"):
            seconds = 0.0
            if command == "pause":
                try:
                    seconds = parse_duration(args["duration"])
                except ValueError:
                    seconds = -1.0
                if not 1 <= seconds <= PAUSE_MAX:
                    duration = clean(repr(args["duration"]))
                    raise WatchdogError(f"pause DURATION must be from 1s to 24h (like 90s, 15m, 2h), got {duration}")
            owner = args.get("owner", OPERATOR)
            if not OWNER.fullmatch(owner):
                raise WatchdogError(
                    "--owner must be 1 to 32 of a-z 0-9 . _ - starting with a letter or digit, "
                    f"got {clean(repr(owner))}"
                )
            return set_pause(cfg, seconds, log, owner=owner, syslog=None if journal else (syslog or to_syslog))
        return run_once(cfg, log)
    except WatchdogError as error:
        errors(ERR, f"{prog}: {error}")
        return error.code
    except Exception as error:  # a bug or an unforeseen environment: exit 3, never 1 (SuccessExitStatus=1)
        if verbose:
            import traceback

            for text in traceback.format_exc().splitlines():
                errors(ERR, text)
        hint = "" if verbose else " (--verbose shows the traceback)"
        errors(ERR, f"{prog}: internal error: {type(error).__name__}: {str(error)[:300]}{hint}")
        return UNKNOWN


if __name__ == "__main__":
    sys.exit(main())
