"""install.sh, third hostile round (issue 19), in scratch roots: one run at a
time, every terminating signal restores, shared files edited by line under
shadow's lock, checkpoints ordered by sequence, rollback that lands where it
says, env files systemd would read differently refused, true messages, and the
API unit's own pre-start checks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import installtree
import pytest
from installtree import BACKUPS, listing, make_source, run, ship_new_version
from test_install_faults import Faults, every_step, fresh, prepare, update

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemctl") and shutil.which("systemd-analyze")), reason="systemd's tools not installed"
)

API_ENV = "etc/motorcade-leadgen/api.env"
WATCHDOG_ENV = "etc/motorcade-leadgen/watchdog.env"
API_UNIT = installtree.REPO / "units/motorcade-leadgen-api.service"


def managed_state(root: Path) -> dict[str, tuple]:
    dests = {row.dest for row in installtree.managed()} | {installtree.TIMER_LINK, installtree.API_LINK}
    return {path: what for path, what in listing(root).items() if path in dests}


def stalling_install(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose `install` waits until the gate file exists: a run held mid-change."""
    bindir, gate = tmp_path / "stall-bin", tmp_path / "gate"
    bindir.mkdir()
    real = shutil.which("install")
    (bindir / "install").write_text(f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.1; done\nexec {real} "$@"\n')
    (bindir / "install").chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}", gate


@contextlib.contextmanager
def held_run(source: Path, root: Path, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """An install of a new version held mid-change (after its checkpoint) for the with-block; it must then finish 0."""
    ship_new_version(source)
    path, gate = stalling_install(tmp_path)
    first = subprocess.Popen(
        ["sh", str(source / "install.sh"), "--root", str(root)],
        env={**os.environ, "PATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if line.startswith("checkpoint:"):
                break
        yield first
    finally:
        gate.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err


# --- rule 1: one run at a time ---------------------------------------------------


def test_rule1_a_second_run_waits_then_names_the_holders_pid_and_mode(source: Path, root: Path, tmp_path: Path) -> None:
    """While one run changes the tree, a second waits LEADGEN_INSTALL_LOCK_WAIT, then exits 1 naming the holder's
    pid and mode and changing nothing; --dry-run and --list need no lock; the first run then completes."""
    run(source, root)
    with held_run(source, root, tmp_path) as first:
        during = listing(root)
        env = {**os.environ, "LEADGEN_INSTALL_LOCK_WAIT": "1"}
        for args in [(), ("--uninstall",), ("--rollback",)]:
            second = run(source, root, *args, check=False, env=env)
            assert second.returncode == 1, (args, second.stdout, second.stderr)
            assert f"pid {first.pid}, mode install" in second.stderr and "nothing changed" in second.stderr, args
            assert listing(root) == during, args
        assert run(source, root, "--dry-run", env=env).returncode == 0
        assert run(source, None, "--list", env=env).returncode == 0
    assert "nothing to change" in run(source, root).stdout


def test_rule1_a_plan_or_dry_run_during_a_run_says_so_and_never_takes_its_checkpoint_over(
    source: Path, root: Path, tmp_path: Path
) -> None:
    """--plan and --dry-run do not wait for the lock, but while a run holds it they say so (pid and mode) and
    never call that run's checkpoint a killed run's to take over (an Ansible --check during a deploy)."""
    run(source, root)
    with held_run(source, root, tmp_path) as first:
        during = listing(root)
        for args in [("--plan",), ("--dry-run",)]:
            look = run(source, root, *args, check=False)
            assert look.returncode == 0, (args, look.stderr)
            assert f"an install.sh run (pid {first.pid}, mode install) holds" in look.stderr, args
            assert "did not finish" not in look.stdout + look.stderr, args
            assert listing(root) == during, args
    assert run(source, root, "--plan").stdout == ""


# --- rule 2: every terminating signal restores; a restore cannot be cut short -----

SIGNALS = ["HUP", "INT", "TERM", "QUIT", "PIPE"]


@pytest.mark.parametrize("sig", SIGNALS)
def test_rule2_every_signal_at_every_step_restores_even_when_signalled_again(tmp_path: Path, sig: str) -> None:
    """An update; SIG<sig> to the whole process group at each changing step, and again at the restore's first
    step: exit 1, the signal named, restored (or nothing changed), the second signal held, the tree as before."""
    source, template, args = prepare(tmp_path, update)
    faults = Faults(tmp_path, source)
    clean_root = tmp_path / "clean"
    assert faults.run(fresh(template, clean_root), args).returncode == 0
    steps = faults.count(clean_root)
    before = listing(template)

    def check(at: int) -> None:
        root = fresh(template, tmp_path / f"root-{at}")
        proc = faults.run(root, args, at=at, kill=sig, again=True)
        failed = faults.step(root, at)
        assert proc.returncode == 1, (failed, proc.stdout, proc.stderr)
        assert f"interrupted (SIG{sig})" in proc.stderr, (failed, proc.stderr)
        restored = "restored: the managed files" in proc.stderr or "nothing was changed" in proc.stderr
        assert restored, (failed, proc.stderr)
        if faults.count(root) > at:  # the restore ran a step: the second signal came and was held
            assert f"SIG{sig} arrived during the restore; held until it ended" in proc.stderr, (failed, proc.stderr)
        assert listing(root) == before, failed
        shutil.rmtree(root)

    every_step(steps, check)


# --- rule 3: shared files are edited by line --------------------------------------


def test_rule3_a_rollback_keeps_subid_lines_other_tools_added(source: Path, root: Path) -> None:
    """useradd adds bob's range after the last run; --rollback leaves /etc/subuid and /etc/subgid as they are."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    for name in ("subuid", "subgid"):
        with (root / "etc" / name).open("a") as f:
            f.write("bob:4000000000:65536\n")
    now = {name: (root / "etc" / name).read_text() for name in ("subuid", "subgid")}
    run(source, root, "--rollback")
    for name in ("subuid", "subgid"):
        assert (root / "etc" / name).read_text() == now[name], name


def ranges(text: str) -> list[tuple[str, int, int]]:
    rows = [line.split(":") for line in text.splitlines() if line]
    return [(who, int(start), int(start) + int(count)) for who, start, count in rows]


@pytest.mark.parametrize(
    "existing",
    [
        pytest.param("alice:2147483647:65536\n", id="inside-the-default"),
        pytest.param("alice:100000:65536\nbig:2000000000:2294967295\n", id="top-taken"),
        pytest.param("alice:4294901759:65536\n", id="at-the-top"),
    ],
)
def test_rule3_the_containers_range_overlaps_no_existing_range(source: Path, root: Path, existing: str) -> None:
    """Ranges already handed out: the containers line added after them overlaps none, and they stay unchanged."""
    (root / "etc").mkdir()
    for name in ("subuid", "subgid"):
        (root / "etc" / name).write_text(existing)
    run(source, root)
    for name in ("subuid", "subgid"):
        text = (root / "etc" / name).read_text()
        assert text.startswith(existing)
        rows = ranges(text)
        (ours,) = [row for row in rows if row[0] == "containers"]
        assert ours[2] - ours[1] >= 65536 and ours[2] <= 4294967295
        for other in rows:
            if other is not ours:
                assert ours[2] <= other[1] or ours[1] >= other[2], (ours, other)


def test_rule3_the_containers_line_is_added_under_shadows_lock(source: Path, root: Path) -> None:
    """While another tool holds lckpwdf's lock (an fcntl lock on etc/.pwd.lock), /etc/subuid is not touched;
    once it is released, the run adds its line."""
    (root / "etc").mkdir()
    lock = root / "etc/.pwd.lock"
    lock.write_text("")
    fd = os.open(lock, os.O_WRONLY)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen(
            ["sh", str(source / "install.sh"), "--root", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        assert not (root / "etc/subuid").exists()
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "containers:" in (root / "etc/subuid").read_text()


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "dangling-symlink"])
def test_rule3_a_subid_file_that_is_not_a_regular_file_is_refused_and_restored(
    source: Path, root: Path, tmp_path: Path, kind: str
) -> None:
    """/etc/subuid a directory, FIFO or symlink: never written through; exit 1, restored, the tree as before."""
    (root / "etc").mkdir()
    target = root / "etc/subuid"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("alice:100000:65536\n")
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(elsewhere)
    else:
        target.symlink_to(tmp_path / "missing")
    before = listing(root)
    proc = run(source, root, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "restored:" in proc.stderr and "etc/subuid" in proc.stderr
    assert listing(root) == before
    assert elsewhere.read_text() == "alice:100000:65536\n"


# --- rule 4: checkpoints are ordered by a sequence, not the clock ----------------------


def test_rule4_a_clock_stepped_back_does_not_change_what_rollback_undoes(
    source: Path, root: Path, tmp_path: Path
) -> None:
    """v1 now, v2 with the clock six years back: --rollback undoes v2 (gives v1), not the first install."""
    run(source, root)
    v1 = managed_state(root)
    ship_new_version(source)
    bindir = tmp_path / "oldclock"
    bindir.mkdir()
    (bindir / "date").write_text("#!/bin/sh\necho 20200101T000000Z\n")
    (bindir / "date").chmod(0o755)
    run(source, root, env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    run(source, root, "--rollback")
    assert managed_state(root) == v1


# --- rule 5: a dry run changes nothing, anywhere -------------------------------------


def test_rule5_a_dry_run_of_every_mode_runs_no_changing_command(tmp_path: Path) -> None:
    """A recorder in front of every changing command: a dry run of install, update, --set, --rollback [NAME] and
    --uninstall runs none of them on the tree, and says it changed nothing."""
    source = make_source(tmp_path / "src")
    faults = Faults(tmp_path, source)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = faults.run(empty, ("--dry-run",))
    assert proc.returncode == 0 and faults.count(empty) == 0, proc.stdout + proc.stderr
    root = tmp_path / "root"
    root.mkdir()
    run(source, root)
    ship_new_version(source)
    run(source, root)
    second = installtree.checkpoints(root)[-1].name
    ship_new_version(source, "2.0.2")
    modes = [(), ("--set", "LEADGEN_IMAGE=localhost/x:2"), ("--rollback",), ("--rollback", second), ("--uninstall",)]
    for args in modes:
        before = listing(root)
        proc = faults.run(root, ("--dry-run", *args))
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert faults.count(root) == 0, (args, (faults.work(root) / "log").read_text())
        assert "nothing was changed" in proc.stdout and "rolled back to" not in proc.stdout, args
        assert listing(root) == before, args


# --- rule 7: rollback undoes the run it names and nothing older ------------------------


def test_rule7_rollback_after_an_image_only_release_restores_the_previous_image(source: Path, root: Path) -> None:
    """Release 1, then an image-only release 2 (--set): --rollback restores release 1's image line, keeps the
    watchdog and every other line of api.env (the operator's own edit included)."""
    run(source, root, "--set", "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1")
    api_env = root / API_ENV
    with api_env.open("a") as f:
        f.write("LEADGEN_MEMORY=1g\n")
    installed = {k: v for k, v in managed_state(root).items() if k != API_ENV}
    proc = run(source, root, "--set", "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:2")
    assert "nothing to change" not in proc.stdout
    assert "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:2\n" in api_env.read_text()
    release = installtree.checkpoints(root)[-1].name
    proc = run(source, root, "--rollback")
    assert proc.stdout.splitlines()[-1] == f"rolled back to {release}"
    text = api_env.read_text()
    assert "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1\n" in text and ":2" not in text
    assert text.endswith("LEADGEN_MEMORY=1g\n")
    assert {k: v for k, v in managed_state(root).items() if k != API_ENV} == installed


@pytest.mark.parametrize(
    "setting",
    ["LEADGEN_IMAGE=a b'", "LEADGEN_IMAGE=x\\", "OTHER=1", "LEADGEN_IMAGE=$(id)", "LEADGEN_IMAGE=x\ny", "LEADGEN_X"],
)
def test_rule7_a_bad_set_is_a_usage_error_before_anything_changes(source: Path, root: Path, setting: str) -> None:
    """--set must be LEADGEN_NAME=VALUE in the env-file grammar: exit 2, one line, nothing written."""
    proc = run(source, root, "--set", setting, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1
    assert list(root.iterdir()) == []


# --- rule 11: env files systemd would read differently are refused ---------------------


@pytest.mark.parametrize("name", [API_ENV, WATCHDOG_ENV])
@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"LEADGEN_MEMORY=512m\r\n", id="crlf"),
        pytest.param(b'LEADGEN_IMAGE="localhost/x:1\n', id="unbalanced-quote"),
        pytest.param(b"LEADGEN_IMAGE=localhost/x:1\\\n", id="trailing-backslash"),
        pytest.param(b"export LEADGEN_MEMORY=512m\n", id="export"),
        pytest.param(b"LEADGEN_MEMORY = 512m\n", id="spaces-around-equals"),
        pytest.param(b"LEADGEN_IMAGE=caf\xe9\n", id="not-utf8"),
        pytest.param(b"  \n", id="blank-with-spaces"),
    ],
)
def test_rule11_an_env_file_systemd_would_read_differently_is_refused(
    source: Path, root: Path, name: str, line: bytes
) -> None:
    """A line systemd's EnvironmentFile= and the watchdog would read differently: exit 1 naming file and line,
    nothing changed, even with a new version to install."""
    run(source, root)
    env = root / name
    env.write_bytes(env.read_bytes() + line)
    number = env.read_bytes().count(b"\n") + (0 if line.endswith(b"\n") else 1)
    ship_new_version(source)
    before = listing(root)
    proc = run(source, root, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"/{name} line {number}:" in proc.stderr and "nothing" not in proc.stdout
    assert listing(root) == before


AGREEMENT_LINES = [
    b"# was C:\\",  # a comment ending in a backslash: systemd 252 joins the next line to it
    b"# no-break\xc2\xa0space",
    b"LEADGEN_WATCHDOG_THRESHOLD=5\xe2\x80\x8b",  # a zero-width space at the end
    b"# line\xe2\x80\xa8separator",
    b"LEADGEN_WATCHDOG_THRESHOLD=\t5",
    b"LEADGEN_WATCHDOG_THRESHOLD='5'",
    b'LEADGEN_WATCHDOG_THRESHOLD="5"',
    b"LEADGEN_WATCHDOG_URL=http://127.0.0.1:8000/lead/health",
    b"; a comment",
    b"LEADGEN_WATCHDOG_THRESHOLD=5 ",
    b"LEADGEN_WATCHDOG_THRESHOLD='5",
    b"LEADGEN_WATCHDOG_THRESHOLD=caf\xc3\xa9",
]


@pytest.mark.parametrize("line", AGREEMENT_LINES, ids=range(len(AGREEMENT_LINES)))
def test_rule11_install_sh_and_the_watchdog_refuse_the_same_lines(source: Path, root: Path, line: bytes) -> None:
    """One grammar: install.sh refuses a watchdog.env line exactly when the watchdog's own parser does (a
    line only install.sh let through would run the timer with a value the operator did not see)."""
    import leadgen_watchdog as wd

    try:
        wd.parse_env_file(line + b"\n", "watchdog.env")
        refused = False
    except wd.WatchdogError:
        refused = True
    run(source, root)
    env = root / WATCHDOG_ENV
    env.write_bytes(env.read_bytes() + line + b"\n")
    proc = run(source, root, check=False)
    assert (proc.returncode == 1) == refused, (line, proc.returncode, proc.stderr)


def test_rule11_the_shipped_templates_pass_the_grammar(source: Path, root: Path) -> None:
    """Both templates as shipped, and with every commented default uncommented, install cleanly."""
    run(source, root)
    for name in (API_ENV, WATCHDOG_ENV):
        env = root / name
        env.write_text(re.sub(r"^#(LEADGEN_[A-Z_]+=)", r"\1", env.read_text(), flags=re.MULTILINE))
    ship_new_version(source)
    run(source, root)


# --- rule 14: uninstall removes everything it made -------------------------------------


def test_rule14_uninstall_removes_the_metrics_textfile(source: Path, root: Path) -> None:
    """The watchdog's metrics textfile goes with it (node_exporter would serve a stale sample for ever);
    other textfiles in that directory stay."""
    run(source, root)
    textfiles = root / "var/lib/prometheus/node-exporter"
    textfiles.mkdir(parents=True)
    (textfiles / "leadgen_watchdog.prom").write_text("leadgen_watchdog_up 1\n")
    (textfiles / "other.prom").write_text("other 1\n")
    with (root / WATCHDOG_ENV).open("a") as f:
        f.write("LEADGEN_WATCHDOG_METRICS_FILE=/var/lib/prometheus/node-exporter/leadgen_watchdog.prom\n")
    state = root / "run/motorcade-leadgen-watchdog"
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")
    (state / "state.json.pause").write_text("{}")
    run(source, root, "--uninstall")
    assert sorted(p.name for p in textfiles.iterdir()) == ["other.prom"]
    assert not state.exists()


# --- rule 15: the API unit's own failures are readable at -p err -------------------------


def prestart_scripts() -> list[str]:
    """The API unit's ExecStartPre= shell scripts, as sh receives them."""
    text = API_UNIT.read_text().replace("\\\n", "\n")
    scripts = re.findall(r"^ExecStartPre=/bin/sh -c '(.*?)'$", text, flags=re.MULTILINE | re.DOTALL)
    assert len(scripts) >= 4
    return scripts


def test_rule15_every_prestart_reason_is_logged_at_priority_err() -> None:
    """Each pre-start check's message to stderr carries systemd's <3> prefix: journalctl -p err shows it."""
    for script in prestart_scripts():
        for echo in re.findall(r'echo "([^"]*)" >&2', script):
            assert echo.startswith(("<3>", "<4>")), echo
        for echo in re.findall(r'echo "([^"]*)" >&2; exit 1', script):
            assert echo.startswith("<3>"), echo


DEFAULTS = {
    "LEADGEN_IMAGE": "localhost/x:1",
    "LEADGEN_CONTAINER_PORT": "8000",
    "LEADGEN_MEMORY": "512m",
    "LEADGEN_PIDS_LIMIT": "256",
    "LEADGEN_CPUS": "1.0",
    "LEADGEN_LOG_MAX_SIZE": "10m",
    "LEADGEN_TMP_SIZE": "64m",
}


def cap_check(**values: str) -> subprocess.CompletedProcess[str]:
    (script,) = [s for s in prestart_scripts() if "LEADGEN_PIDS_LIMIT" in s]
    env = {"PATH": os.environ["PATH"], **DEFAULTS, **values}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEADGEN_MEMORY", "0"),
        ("LEADGEN_MEMORY", "0m"),
        ("LEADGEN_TMP_SIZE", "0"),
        ("LEADGEN_TMP_SIZE", "00g"),
        ("LEADGEN_LOG_MAX_SIZE", "0k"),
        ("LEADGEN_PIDS_LIMIT", "0"),
        ("LEADGEN_PIDS_LIMIT", "-1"),
        ("LEADGEN_PIDS_LIMIT", "99999999999999999999"),
        ("LEADGEN_CPUS", "0.0"),
        ("LEADGEN_MEMORY", ""),
    ],
)
def test_rule10_a_cap_that_means_no_limit_is_refused_with_one_err_line(name: str, value: str) -> None:
    """Zero, negative or past-the-kernel caps read as 'unlimited': the pre-start check refuses, one <3> line."""
    assert cap_check().returncode == 0
    proc = cap_check(**{name: value})
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"<3>{name}=[{value}]") and proc.stderr.count("\n") == 1, proc.stderr


def test_rule15_an_app_env_file_others_can_read_is_warned_about_by_the_unit(tmp_path: Path) -> None:
    """The app env file holds the API's secrets: 0644 (what touch makes) gets a <4> warning naming the chmod."""
    app = tmp_path / "app.env"
    app.write_text("")
    (script,) = [s for s in prestart_scripts() if "LEADGEN_APP_ENV_FILE" in s and "find" in s]
    env = {"PATH": os.environ["PATH"], "LEADGEN_APP_ENV_FILE": str(app)}
    app.chmod(0o600)
    quiet = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert (quiet.returncode, quiet.stderr) == (0, "")
    app.chmod(0o644)
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"<4>application env file {app} holds the API secrets and other users may read it; " + (
        f"close it: chmod 0600 {app}\n"
    )
    app.unlink()
    missing = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and f"install -m 0600 /dev/null {app}" in missing.stderr


# --- rule 16: messages name what they mean ----------------------------------------------


def test_rule16_rollback_ends_naming_the_checkpoint_it_undid(source: Path, root: Path) -> None:
    """v1, v2; --rollback's last line is 'rolled back to <v2's checkpoint>', not a file a function left behind."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    name = installtree.checkpoints(root)[-1].name
    proc = run(source, root, "--rollback")
    assert proc.stdout.splitlines()[-1] == f"rolled back to {name}"


def test_rule16_a_dry_run_never_says_rolled_back(source: Path, root: Path) -> None:
    """--rollback --dry-run says what it would do, never that it rolled back."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    proc = run(source, root, "--rollback", "--dry-run")
    assert "rolled back" not in proc.stdout + proc.stderr
    assert "would roll back to" in proc.stdout


def test_checkpoint_names_carry_a_sequence(source: Path, root: Path) -> None:
    """Checkpoints are NNNNNN-<UTC time>, numbered from 1 in the order the runs took them."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    names = [p.name for p in (root / BACKUPS).iterdir()]
    assert sorted(n[:7] for n in names) == ["000001-", "000002-"]


def test_a_killed_run_releases_the_lock(source: Path, root: Path, tmp_path: Path) -> None:
    """kill -9 of a run holding the lock (its whole group): the next run takes the lock at once and converges."""
    path, _ = stalling_install(tmp_path)
    first = subprocess.Popen(
        ["sh", str(source / "install.sh"), "--root", str(root)],
        env={**os.environ, "PATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("checkpoint:"):
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    proc = run(source, root, env={**os.environ, "LEADGEN_INSTALL_LOCK_WAIT": "0"})
    assert "did not finish; this run completes it" in proc.stdout
    assert not list(root.rglob("*.new"))


# --- rule 12: interpreter upgrades do not void checkpoints -------------------------------

PYCACHE = "usr/local/lib/motorcade-leadgen/__pycache__"


def as_other_interpreter(root: Path, tag: str = "cpython-39") -> None:
    """Make the tree and its checkpoints look installed by another Python: its bytecode under another tag."""
    for pyc in root.rglob("leadgen_watchdog.cpython-*.pyc"):
        pyc.rename(pyc.with_name(f"leadgen_watchdog.{tag}.pyc"))
    for manifest in (root / BACKUPS).glob("*/MANIFEST"):
        text = re.sub(r"leadgen_watchdog\.cpython-\d+\.pyc", f"leadgen_watchdog.{tag}.pyc", manifest.read_text())
        manifest.write_text(text)


def test_rule12_bytecode_of_another_interpreter_is_replaced_and_its_checkpoints_stay_usable(
    source: Path, root: Path
) -> None:
    """Installed under 'Python 3.9' (cpython-39 bytecode, checkpoints naming it), updated under this one: the
    old bytecode goes, this interpreter's comes; --rollback of that update returns to 3.9's exact tree, plus this
    interpreter's bytecode (built, not restored); an uninstall leaves no bytecode of any interpreter."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    as_other_interpreter(root)
    before = managed_state(root) | {p: w for p, w in listing(root).items() if p.startswith(PYCACHE)}
    ship_new_version(source, "2.0.2")
    run(source, root)
    names = sorted(p.name for p in (root / PYCACHE).iterdir())
    assert names == [f"leadgen_watchdog.{sys.implementation.cache_tag}.pyc"], names
    run(source, root, "--rollback")
    after = managed_state(root) | {p: w for p, w in listing(root).items() if p.startswith(PYCACHE)}
    ours = f"{PYCACHE}/leadgen_watchdog.{sys.implementation.cache_tag}.pyc"
    assert after.pop(ours)[0] == "file"
    assert after == before
    run(source, root, "--uninstall")
    assert not (root / "usr/local/lib/motorcade-leadgen").exists()


# --- rule 6: every mode is resumable and recorded ---------------------------------------


def test_rule6_a_killed_uninstall_is_completed_and_a_rollback_lands_on_the_state_before_it(tmp_path: Path) -> None:
    """kill -9 of --uninstall at each changing step; the next --uninstall completes it; --rollback then returns
    the whole installed state from before the killed run, never a half-uninstalled one."""
    source = make_source(tmp_path / "src")
    template = tmp_path / "template"
    template.mkdir()
    run(source, template)
    ship_new_version(source)
    run(source, template)
    installed = managed_state(template)
    faults = Faults(tmp_path, source)
    clean = tmp_path / "clean"
    assert faults.run(fresh(template, clean), ("--uninstall",)).returncode == 0
    steps = faults.count(clean)

    def check(at: int) -> None:
        root = fresh(template, tmp_path / f"root-{at}")
        killed = faults.run(root, ("--uninstall",), at=at, kill=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        run(source, root, "--uninstall")
        assert not (root / "usr/local/sbin/leadgen-watchdog").exists()
        run(source, root, "--rollback")
        # /etc/subuid and /etc/subgid are edited by line (rule 3): the same line back, not the same file
        subid = {name: (template / name).read_text() for name in ("etc/subuid", "etc/subgid")}
        assert {name: (root / name).read_text() for name in subid} == subid, faults.step(root, at)
        now = {k: v for k, v in managed_state(root).items() if k not in subid}
        assert now == {k: v for k, v in installed.items() if k not in subid}, faults.step(root, at)
        shutil.rmtree(root)

    every_step(steps, check)
