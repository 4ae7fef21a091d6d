"""install.sh, fourth round (issue 19, the rest), in scratch roots: every mode is
resumable and recorded (a killed --rollback or --uninstall is finished by the
next run, once, and a later --rollback lands on a whole state), --uninstall
takes out the /etc/subuid and /etc/subgid line install.sh added and nothing
else, a restore whose reader is gone is still a restore, the pause fallback
only for a watchdog that predates owners, and the watchdog may write only its
own runtime directory."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import installtree
import pytest
from installtree import listing, make_source, run, ship_new_version
from test_install_faults import Faults, every_step, fresh

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemctl") and shutil.which("systemd-analyze")), reason="systemd's tools not installed"
)

LAUNCHER = "usr/local/sbin/leadgen-watchdog"
SUBID = ("etc/subuid", "etc/subgid")
OURS = "containers:2147483647:2147483648"


def managed_state(root: Path) -> dict[str, tuple]:
    """The managed files and both enablement links, exactly (checkpoints left out)."""
    dests = {row.dest for row in installtree.managed()} | {installtree.TIMER_LINK, installtree.API_LINK}
    return {path: what for path, what in listing(root).items() if path in dests}


def subids(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text() for name in SUBID}


# --- rule 6: every mode is resumable and recorded ------------------------------------------


def test_rule6_a_killed_rollback_is_completed_by_the_next_rollback(tmp_path: Path) -> None:
    """v1, v2, v3; kill -9 of --rollback at each changing step; the next --rollback says once that it completes
    the killed one and lands on v2 exactly (not v3, not v1); one more --rollback gives v1."""
    source = make_source(tmp_path / "src")
    template = tmp_path / "template"
    template.mkdir()
    run(source, template)
    v1 = managed_state(template)
    ship_new_version(source, "2.0.1")
    run(source, template)
    v2 = managed_state(template)
    ship_new_version(source, "2.0.2")
    run(source, template)
    faults = Faults(tmp_path, source)
    clean = tmp_path / "clean"
    assert faults.run(fresh(template, clean), ("--rollback",)).returncode == 0
    steps = faults.count(clean)

    def check(at: int) -> None:
        root = fresh(template, tmp_path / f"root-{at}")
        killed = faults.run(root, ("--rollback",), at=at, kill=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        step = faults.step(root, at)
        complete = [cp for cp in installtree.checkpoints(root) if (cp / "MANIFEST").exists()]
        done = run(source, root, "--rollback")
        resumed = [line for line in done.stdout.splitlines() if "did not finish" in line]
        if len(complete) == 4:  # the killed run's checkpoint was complete: it is taken over, said once
            assert len(resumed) == 1 and resumed[0].endswith("this run completes it"), (step, done.stdout)
        assert managed_state(root) == v2, (step, done.stdout)
        again = run(source, root, "--rollback")
        assert "did not finish" not in again.stdout, step
        assert managed_state(root) == v1, step
        shutil.rmtree(root)

    every_step(steps, check)


def kill_midway(tmp_path: Path, source: Path, root: Path, args: tuple[str, ...]) -> None:
    """kill -9 of a run of install.sh half-way through its changing steps (its checkpoint complete)."""
    faults = Faults(tmp_path, source)
    probe = fresh(root, tmp_path / "probe")
    assert faults.run(probe, args).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    after = next(i for i, line in enumerate(log, 1) if " mv -f " in line and "MANIFEST" in line)
    killed = faults.run(root, args, at=(after + faults.count(probe)) // 2, kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    shutil.rmtree(probe)


def test_rule6_a_named_rollback_of_a_run_that_took_over_a_killed_one_lands_on_a_whole_state(
    source: Path, root: Path, tmp_path: Path
) -> None:
    """v1, v2; an update to v3 killed half-way; a re-run completes it; --rollback NAME of that re-run returns to v2
    exactly, never to the half-updated tree the re-run started from."""
    run(source, root)
    ship_new_version(source, "2.0.1")
    run(source, root)
    v2 = managed_state(root)
    ship_new_version(source, "2.0.2")
    unit = source / "units/motorcade-leadgen-watchdog.service"
    unit.write_text(unit.read_text().replace("Description=", "Description=v3 "))
    kill_midway(tmp_path, source, root, ())
    assert managed_state(root) != v2
    rerun = run(source, root)
    assert "did not finish; this run completes it" in rerun.stdout
    name = installtree.checkpoints(root)[-1].name
    run(source, root, "--rollback", name)
    assert managed_state(root) == v2


def test_rule6_a_killed_rollback_then_an_install_then_a_rollback_lands_on_a_whole_state(
    source: Path, root: Path, tmp_path: Path
) -> None:
    """v1, v2; --rollback killed half-way; an install (of v2, nothing new) takes its place and records itself,
    saying so; --rollback then returns to v2 exactly, the state before the killed rollback."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    v2 = managed_state(root)
    kill_midway(tmp_path, source, root, ("--rollback",))
    proc = run(source, root)
    (line,) = [line for line in proc.stdout.splitlines() if "did not finish" in line]
    assert line.startswith("the rollback run that saved checkpoint") and "takes its place" in line
    run(source, root, "--rollback")
    assert managed_state(root) == v2
    assert "did not finish" not in run(source, root).stdout


def test_rule6_an_uninstall_cut_short_after_its_commit_gives_no_false_undo_advice(
    source: Path, root: Path, tmp_path: Path
) -> None:
    """--uninstall killed after it marked its checkpoint finished (removing the runtime state): the next
    --uninstall finishes the leftovers, and any undo it advises works; the subuid line install.sh added goes."""
    run(source, root)
    state = root / "run/motorcade-leadgen-watchdog"
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")
    faults = Faults(tmp_path, source)
    probe = fresh(root, tmp_path / "probe")
    assert faults.run(probe, ("--uninstall",)).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if "rm -rf" in line and "motorcade-leadgen-watchdog" in line)
    assert "FINISHED" in log[at - 2], log[at - 2]
    killed = faults.run(root, ("--uninstall",), at=at, kill=True)
    assert killed.returncode == -signal.SIGKILL
    proc = run(source, root, "--uninstall")
    assert not state.exists()
    assert OURS not in (root / "etc/subuid").read_text()
    assert "removed what an earlier --uninstall left" in proc.stdout, proc.stdout
    if "--rollback" in proc.stdout:  # advice must hold
        run(source, root, "--rollback")
        assert (root / LAUNCHER).exists()


@pytest.mark.parametrize("sig", ["HUP", "INT", "TERM", "QUIT", "PIPE"])
def test_rule8_a_signal_after_an_uninstall_is_committed_never_says_as_before(
    source: Path, root: Path, tmp_path: Path, sig: str
) -> None:
    """SIG<sig> to the whole group while --uninstall removes the runtime state, after its checkpoint is marked
    finished: exit 1 would claim 'as before'; the run ends its last steps instead (state, the subuid line) and
    exits 0, and the next --uninstall has nothing left to do."""
    run(source, root)
    state = root / "run/motorcade-leadgen-watchdog"
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")
    faults = Faults(tmp_path, source)
    probe = fresh(root, tmp_path / "probe")
    assert faults.run(probe, ("--uninstall",)).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if "rm -rf" in line and "motorcade-leadgen-watchdog" in line)
    proc = faults.run(root, ("--uninstall",), at=at, kill=sig)
    assert proc.returncode == 0, proc.stderr
    assert not state.exists() and not (root / LAUNCHER).exists()
    assert subids(root) == {name: "" for name in SUBID}
    assert "nothing to remove" in run(source, root, "--uninstall").stdout


# --- rule 3: --uninstall removes the subuid/subgid line install.sh added, and only that --------


def test_rule3_uninstall_removes_only_the_line_install_sh_added(source: Path, root: Path) -> None:
    """alice's range before, bob's added after the install, an update and a rollback between: --uninstall takes
    out exactly install.sh's containers line, says so, and leaves alice's and bob's lines byte for byte."""
    (root / "etc").mkdir()
    for name in SUBID:
        (root / name).write_text("alice:100000:65536\n")
    run(source, root)
    for name in SUBID:
        assert (root / name).read_text() == f"alice:100000:65536\n{OURS}\n"
        with (root / name).open("a") as f:
            f.write("bob:165536:65536\n")
    ship_new_version(source)
    run(source, root)
    run(source, root, "--rollback")
    proc = run(source, root, "--uninstall")
    for name in SUBID:
        assert (root / name).read_text() == "alice:100000:65536\nbob:165536:65536\n", name
        assert f"removed {OURS} from {root / name}" in proc.stdout
    assert "kept" not in proc.stdout


def test_rule3_uninstall_after_a_reinstall_removes_the_line_again_and_never_someone_elses(
    source: Path, root: Path
) -> None:
    """install, uninstall, install again, uninstall again: the line the second install added goes too. Then an
    admin writes the same text; a re-install (adding nothing) and --uninstall leave it: install.sh's record of its
    own line was used up when that line went."""
    run(source, root)
    run(source, root, "--uninstall")
    assert subids(root) == {name: "" for name in SUBID}
    run(source, root)
    assert subids(root) == {name: f"{OURS}\n" for name in SUBID}
    run(source, root, "--uninstall")
    assert subids(root) == {name: "" for name in SUBID}
    for name in SUBID:
        (root / name).write_text(f"{OURS}\n")
    run(source, root)
    run(source, root, "--uninstall")
    assert subids(root) == {name: f"{OURS}\n" for name in SUBID}


@pytest.mark.parametrize(
    ("before", "after_install"),
    [
        pytest.param("containers:300000:65536\n", None, id="there-before"),
        pytest.param("", "containers:2147483647:65536\n", id="changed-since"),
    ],
)
def test_rule3_uninstall_keeps_a_containers_line_install_sh_did_not_write(
    source: Path, root: Path, before: str, after_install: str | None
) -> None:
    """A containers line that was there before install.sh, or that someone changed since: --uninstall leaves it
    byte for byte and says so in one line."""
    (root / "etc").mkdir()
    for name in SUBID:
        (root / name).write_text(before)
    run(source, root)
    if after_install is not None:
        for name in SUBID:
            (root / name).write_text(after_install)
    now = subids(root)
    proc = run(source, root, "--uninstall")
    assert subids(root) == now
    kept = [line for line in proc.stdout.splitlines() if line.startswith("kept")]
    assert kept, proc.stdout
    assert all("etc/subuid" in line or "etc/subgid" in line for line in kept)
    assert "removed containers" not in proc.stdout


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_rule3_uninstall_never_writes_through_a_subuid_that_is_not_a_regular_file(
    source: Path, root: Path, tmp_path: Path, kind: str
) -> None:
    """/etc/subuid replaced by a directory, FIFO or symlink after the install: --uninstall removes the watchdog,
    writes nothing through it, names the line it could not remove; /etc/subgid's line goes as usual."""
    run(source, root)
    target = root / "etc/subuid"
    target.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(f"{OURS}\n")
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(elsewhere)
    proc = run(source, root, "--uninstall")
    assert not (root / LAUNCHER).exists()
    assert elsewhere.read_text() == f"{OURS}\n"
    assert f"could not remove {OURS} from {target}" in proc.stderr, proc.stderr
    assert (root / "etc/subgid").read_text() == ""


def test_rule3_uninstall_removes_the_line_under_shadows_lock(source: Path, root: Path) -> None:
    """While another tool holds lckpwdf's lock (etc/.pwd.lock), --uninstall leaves /etc/subuid alone; once it is
    released, the line goes."""
    (root / "etc").mkdir()
    lock = root / "etc/.pwd.lock"
    lock.write_text("")
    run(source, root)
    fd = os.open(lock, os.O_WRONLY)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen(
            ["sh", str(source / "install.sh"), "--root", str(root), "--uninstall"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        assert (root / "etc/subuid").read_text() == f"{OURS}\n"
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert subids(root) == {name: "" for name in SUBID}


# --- rule 2 / rule 8: a restore whose reader is gone is still a restore ----------------------


def test_rule2_a_restore_through_a_dead_pipe_completes_and_exits_1(source: Path, root: Path, tmp_path: Path) -> None:
    """install.sh ... 2>&1 | head: the reader goes away after the subuid lines were added; the run stops (SIGPIPE),
    restores everything, and exits 1, not 4: output that cannot be written never fails the restore."""
    bindir, gate = tmp_path / "bin", tmp_path / "gate"
    bindir.mkdir()
    real = shutil.which("systemctl")
    (bindir / "systemctl").write_text(
        f'#!/bin/sh\ncase "$*" in *" enable "*) while [ ! -e "{gate}" ]; do sleep 0.1; done ;; esac\nexec {real} "$@"\n'
    )
    (bindir / "systemctl").chmod(0o755)
    proc = subprocess.Popen(
        ["sh", str(source / "install.sh"), "--root", str(root)],
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    added = 0
    for line in proc.stdout:
        added += line.startswith("added containers:")
        if line.startswith("+ systemctl") and " enable " in line:
            break
    assert added == 2
    proc.stdout.close()  # the reader is gone
    gate.touch()
    assert proc.wait(timeout=120) == 1
    assert list(root.iterdir()) == []


def test_rule8_the_advice_after_an_incomplete_restore_of_a_first_install_works(tmp_path: Path) -> None:
    """A first install fails half-way and its restore fails too: exit 4, the checkpoint kept, and the command the
    message names (not --rollback, which refuses to undo a first install) runs and removes what it installed."""
    source = make_source(tmp_path / "src")
    faults = Faults(tmp_path, source)
    probe = tmp_path / "probe"
    probe.mkdir()
    assert faults.run(probe, ()).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if line.split()[1] == "mv" and "leadgen-watchdog " in line + " ")
    root = tmp_path / "root"
    root.mkdir()
    proc = faults.run(root, (), at=at, again=True)
    assert proc.returncode == 4, proc.stderr
    advice = re.search(r"install\.sh (--.*)$", proc.stderr.splitlines()[-1])
    assert advice, proc.stderr
    fixed = run(source, root, *advice.group(1).split(), check=False)
    assert fixed.returncode == 0, (advice.group(1), fixed.stdout, fixed.stderr)
    assert not (root / LAUNCHER).exists() and not (root / "usr/local/lib/motorcade-leadgen").exists()


# --- rule 9: failures blame the right thing ---------------------------------------------------


def watchdog_function(tmp_path: Path, launcher: str) -> subprocess.CompletedProcess[str]:
    """install.sh's own watchdog() (cut from the script) run with a stand-in launcher that logs its argv."""
    text = (installtree.REPO / "install.sh").read_text()
    body = re.search(r"^watchdog\(\) \{.*?^\}$", text, flags=re.MULTILINE | re.DOTALL)
    assert body
    fake = tmp_path / "leadgen-watchdog"
    fake.write_text(f'#!/bin/sh\necho "$*" >>"{tmp_path}/calls"\n{launcher}')
    fake.chmod(0o755)
    script = f'info() {{ printf "%s\\n" "$*"; }}\nLAUNCHER={fake}\n{body.group(0)}\nwatchdog resume\n'
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


def test_rule9_only_a_watchdog_that_predates_pause_owners_gets_the_plain_resume(tmp_path: Path) -> None:
    """resume --owner install.sh failing with exit 3 for any reason but an unknown --owner (here: its state file
    cannot be written) is passed on as it is: no plain resume, which would end the operator's own pause too. The
    launcher of an older checkpoint refuses --owner as an unknown argument (argparse, exit 3): then, and only then,
    the plain resume runs."""
    broken = tmp_path / "broken"
    broken.mkdir()
    proc = watchdog_function(broken, 'echo "ERROR: cannot write state file: Read-only file system" >&2\nexit 3\n')
    assert proc.returncode == 3
    assert "cannot write state file" in proc.stderr
    assert (broken / "calls").read_text() == "resume --owner install.sh\n"
    old = tmp_path / "old"
    old.mkdir()
    launcher = (
        'case "$*" in *--owner*) echo "leadgen-watchdog: unrecognized arguments: --owner install.sh" >&2; exit 3;; '
        "esac\nexit 0\n"
    )
    proc = watchdog_function(old, launcher)
    assert proc.returncode == 0, proc.stderr
    assert (old / "calls").read_text() == "resume --owner install.sh\nresume\n"


# --- least privilege: the watchdog writes only its own runtime directory ---------------------


@pytest.mark.parametrize("polkit", [False, True], ids=["root-mode", "user-mode"])
def test_the_watchdog_may_write_nothing_outside_its_runtime_directory(source: Path, root: Path, polkit: bool) -> None:
    """With node_exporter there, in either mode: the installed unit and its drop-ins grant no ReadWritePaths=
    (the metrics file is in the runtime directory, behind a root-owned link): a sandboxed root could otherwise
    write any textfile node_exporter serves."""
    (root / "var/lib/prometheus/node-exporter").mkdir(parents=True)
    if polkit:
        installtree.add_polkitd(root)
    run(source, root)
    unit = root / "etc/systemd/system/motorcade-leadgen-watchdog.service"
    texts = [unit.read_text(), *(p.read_text() for p in sorted(Path(f"{unit}.d").glob("*.conf")))]
    assert (Path(f"{unit}.d") / "50-root-mode.conf").exists() != polkit
    granted = [line for text in texts for line in text.splitlines() if line.startswith("ReadWritePaths=")]
    assert granted == []
    assert "Environment=LEADGEN_WATCHDOG_METRICS_FILE=/run/motorcade-leadgen-watchdog/leadgen.prom" in "".join(texts)


def test_rule3_a_rollback_of_an_uninstall_puts_back_only_its_own_line(source: Path, root: Path) -> None:
    """--uninstall takes install.sh's line out; --rollback of it brings the watchdog back and, for the API unit
    that stayed, install.sh's own line (recorded again), leaving a line useradd added meanwhile alone."""
    run(source, root)
    run(source, root, "--uninstall")
    assert subids(root) == {name: "" for name in SUBID}
    for name in SUBID:
        (root / name).write_text("bob:100000:65536\n")
    run(source, root, "--rollback")
    assert (root / LAUNCHER).exists()
    assert subids(root) == {name: f"bob:100000:65536\n{OURS}\n" for name in SUBID}
    run(source, root, "--uninstall")
    assert subids(root) == {name: "bob:100000:65536\n" for name in SUBID}


# --- rule 12: interpreter upgrades do not void checkpoints, with two real interpreters ----------

PYCACHE = "usr/local/lib/motorcade-leadgen/__pycache__"


def guest_tree(name: str) -> Path:
    """The e2e harness's Debian tree (bookworm: Python 3.11, trixie: 3.13), built first when not cached."""
    sys.path.insert(0, str(installtree.REPO / "tests/e2e"))
    import guest

    why = ""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("chroot")):
        why = "needs root, unshare and chroot (an overlay of the guest tree)"
    elif not guest.path(name).is_dir() and shutil.which("mmdebstrap") is None:
        why = f"no cached {name} guest tree and no mmdebstrap to build it"
    if why:
        if os.environ.get("LEADGEN_REQUIRE_E2E") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return guest.ensure(name)


def in_guest(tree: Path, work: Path, argv: str, *, layers: tuple[Path, ...] = (), binds: dict[str, Path]) -> str:
    """argv (a shell line) run chrooted into an overlay of the guest tree (its /usr/bin/python3, systemctl and
    systemd-analyze), in a private mount namespace: LAYERS on top read-only, or, without them, a scratch upper
    directory taking the writes; BINDS mounted at /mnt/NAME. The cached tree is never written."""
    work.mkdir(parents=True, exist_ok=True)
    merged = work / "merged"
    merged.mkdir(exist_ok=True)
    if layers:
        options = "lowerdir=" + ":".join(str(p) for p in (*layers, tree))
    else:
        for sub in ("upper", "work"):
            shutil.rmtree(work / sub, ignore_errors=True)
            (work / sub).mkdir()
        options = f"lowerdir={tree},upperdir={work / 'upper'},workdir={work / 'work'}"
    mounts = [f"mount -t overlay overlay -o {options} {merged}", f"mount -t proc proc {merged}/proc"]
    for name, path in binds.items():
        mounts += [
            f"mkdir -p {merged}/mnt/{name}" if not layers else "true",
            f"mount --bind {path} {merged}/mnt/{name}",
        ]
    script = " && ".join([*mounts, f"exec chroot {merged} /bin/sh -c '{argv}'"])
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc.stdout + proc.stderr


def pycs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / PYCACHE).glob("*.pyc")) if (root / PYCACHE).exists() else []


def test_rule12_a_checkpoint_taken_under_python_3_11_stays_usable_under_3_13(tmp_path: Path) -> None:
    """Debian 12 -> 13 with the real interpreters: v1 and v2 installed by bookworm's python3 (3.11), v3 by
    trixie's (3.13): 3.11's bytecode goes, 3.13's comes and is what the launcher loads; two --rollback under 3.13
    land exactly on v2 and v1 (checkpoints taken under 3.11), each with 3.13's bytecode built for the module it
    restored, which the launcher loads; --uninstall under 3.13 leaves no bytecode of either."""
    bookworm, trixie = guest_tree("bookworm"), guest_tree("trixie")
    source, root = make_source(tmp_path / "src"), tmp_path / "root"
    root.mkdir()

    def install(tree: Path, *args: str) -> str:
        line = "sh /mnt/src/install.sh --root /mnt/root " + " ".join(args)
        return in_guest(tree, tmp_path / "rw", line, binds={"src": source, "root": root})

    def launcher(tree: Path) -> str:
        """The installed launcher, as the timer runs it, on that distro: python -v names the bytecode it loads."""
        line = "/usr/bin/python3 -I -v /usr/local/sbin/leadgen-watchdog --version"
        return in_guest(tree, tmp_path / "ro", line, layers=(root,), binds={})

    tag = {"cpython-311": bookworm, "cpython-313": trixie}
    for name, tree in tag.items():
        assert f"'{name}'" in in_guest(
            tree,
            tmp_path / "rw",
            '/usr/bin/python3 -c "import sys; print(repr(sys.implementation.cache_tag))"',
            binds={},
        )
    install(bookworm)
    assert pycs(root) == ["leadgen_watchdog.cpython-311.pyc"]
    assert f"code object from '/{PYCACHE}/leadgen_watchdog.cpython-311.pyc'" in launcher(bookworm)
    v1 = managed_state(root)
    ship_new_version(source, "2.0.1")
    install(bookworm)
    v2 = managed_state(root)
    ship_new_version(source, "2.0.2")
    install(trixie)
    assert pycs(root) == ["leadgen_watchdog.cpython-313.pyc"]
    out = launcher(trixie)
    assert f"code object from '/{PYCACHE}/leadgen_watchdog.cpython-313.pyc'" in out and "2.0.2" in out
    install(trixie, "--rollback")
    assert managed_state(root) == v2  # 3.11's bytecode back, exactly, and 3.13's built for the launcher
    assert pycs(root) == ["leadgen_watchdog.cpython-311.pyc", "leadgen_watchdog.cpython-313.pyc"]
    out = launcher(trixie)
    assert f"code object from '/{PYCACHE}/leadgen_watchdog.cpython-313.pyc'" in out and "2.0.1" in out
    install(trixie, "--rollback")
    assert managed_state(root) == v1
    first = re.search(r'^VERSION = "(.+)"$', (installtree.REPO / "leadgen_watchdog.py").read_text(), re.MULTILINE)
    out = launcher(trixie)
    assert first and f"leadgen-watchdog {first.group(1)}" in out
    assert f"code object from '/{PYCACHE}/leadgen_watchdog.cpython-313.pyc'" in out
    install(trixie, "--uninstall")
    assert not (root / "usr/local/lib/motorcade-leadgen").exists()


# --- round 4 review: records of our subuid line, messages, plan, values read back -----------


def test_rule3_a_line_added_twice_leaves_no_record_that_claims_an_admins_line_later(source: Path, root: Path) -> None:
    """install adds our line; the operator deletes it; the next install adds it again (a second record). After
    --uninstall no record is left: the same line written later by an admin survives an install and --uninstall.
    A temporary a killed edit of ours left beside /etc/subuid goes with the next edit."""
    run(source, root)
    for name in SUBID:
        (root / name).write_text("")
    run(source, root)
    assert subids(root) == {name: f"{OURS}\n" for name in SUBID}
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = root / f"etc/subuid.{dead.pid}.tmp"
    leftover.write_text("half\n")
    run(source, root, "--uninstall")
    assert subids(root) == {name: "" for name in SUBID}
    assert not leftover.exists()
    assert not list((root / installtree.BACKUPS).glob("*/ADDED"))
    for name in SUBID:
        (root / name).write_text(f"{OURS}\n")
    run(source, root)
    proc = run(source, root, "--uninstall")
    assert subids(root) == {name: f"{OURS}\n" for name in SUBID}, proc.stdout
    assert "removed containers" not in proc.stdout


def test_rule16_uninstall_that_keeps_a_changed_line_says_no_line_was_removed(source: Path, root: Path) -> None:
    """Our line changed by the operator since the install: --uninstall keeps it, and no message says a line went
    (no 'next start needs a containers: line again'); the edit's exit 3 (kept) is no failure warning either."""
    run(source, root)
    assert (root / installtree.UNIT_DIR / "motorcade-leadgen-api.service").exists()
    for name in SUBID:
        (root / name).write_text("containers:2147483647:65536\n")
    proc = run(source, root, "--uninstall")
    assert subids(root) == {name: "containers:2147483647:65536\n" for name in SUBID}
    assert proc.stdout.count("kept ") == 2, proc.stdout
    assert "needs a containers: line again" not in proc.stdout, proc.stdout
    assert "could not remove" not in proc.stderr


def test_rule16_a_rerun_of_a_cut_short_uninstall_claims_only_lines_it_removed(
    source: Path, root: Path, tmp_path: Path
) -> None:
    """--uninstall killed as it marks its checkpoint finished (files gone, subuid line not yet); the operator
    changes our line; the rerun keeps it and does not list it among what it removed."""
    run(source, root)
    faults = Faults(tmp_path, source)
    probe = fresh(root, tmp_path / "probe")
    assert faults.run(probe, ("--uninstall",)).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if " touch " in line and "FINISHED" in line)
    faults.run(root, ("--uninstall",), at=at, kill=True)
    for name in SUBID:
        (root / name).write_text("containers:2147483647:65536\n")
    proc = run(source, root, "--uninstall")
    assert subids(root) == {name: "containers:2147483647:65536\n" for name in SUBID}
    assert "subuid:containers" not in proc.stdout and "needs a containers: line again" not in proc.stdout, proc.stdout


def test_rule13_the_plan_after_a_killed_rollback_names_its_completion(tmp_path: Path) -> None:
    """v1, v2, --rollback killed as it marks itself finished (the files are v1's again): --plan from v1's source
    prints exactly `complete rollback CHECKPOINT`, as the install then acts (no 'nothing to change'); after it the
    plan is empty."""
    v1 = make_source(tmp_path / "v1")
    v2 = make_source(tmp_path / "v2")
    ship_new_version(v2, "2.0.1")
    root = tmp_path / "root"
    root.mkdir()
    run(v1, root)
    run(v2, root)
    faults = Faults(tmp_path, v2)
    probe = fresh(root, tmp_path / "probe")
    assert faults.run(probe, ("--rollback",)).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if " touch " in line and "FINISHED" in line)
    faults.run(root, ("--rollback",), at=at, kill=True)
    killed = installtree.checkpoints(root)[-1].name
    assert run(v1, root, "--plan").stdout.splitlines() == [f"complete rollback {killed}"]
    assert "nothing to change" not in run(v1, root).stdout
    assert run(v1, root, "--plan").stdout == ""


def test_rule3_uninstall_refuses_an_added_record_that_is_not_a_containers_line(source: Path, root: Path) -> None:
    """A checkpoint's ADDED naming someone else's line (not `containers:N:N`): --uninstall refuses in one line
    naming that checkpoint, before it changes anything; the line stays."""
    (root / "etc").mkdir()
    for name in SUBID:
        (root / name).write_text("root:100000:65536\n")
    run(source, root)
    record = next((root / installtree.BACKUPS).glob("*/ADDED"))
    record.write_text("/etc/subuid root:100000:65536\n")
    before = listing(root)
    proc = run(source, root, "--uninstall", check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"ERROR: checkpoint {record.parent.name}: ADDED line 1 is not one install.sh writes;"
        " refusing it, nothing changed"
    ]
    assert listing(root) == before


def test_rule6_a_checkpoint_that_resumes_itself_is_refused_not_followed_for_ever(tmp_path: Path) -> None:
    """The newest checkpoint's MANIFEST says it resumes itself: --rollback refuses in one line naming it (within
    seconds), nothing changed."""
    source = make_source(tmp_path / "src")
    root = tmp_path / "root"
    root.mkdir()
    run(source, root)
    ship_new_version(source, "2.0.1")
    run(source, root)
    newest = installtree.checkpoints(root)[-1]
    manifest = (newest / "MANIFEST").read_text().splitlines()
    (newest / "MANIFEST").write_text("\n".join([*manifest[:2], f"resumes {newest.name}", *manifest[2:]]) + "\n")
    before = listing(root)
    argv = ["sh", str(source / "install.sh"), "--root", str(root), "--rollback"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("--rollback follows a resumes loop for ever")
    assert proc.returncode == 1
    assert f"checkpoint {newest.name}: its resumes lines go round in a loop" in err
    assert listing(root) == before


def test_rule6_a_damaged_unfinished_checkpoint_blocks_no_mode_but_rollback_which_says_what_to_do(
    tmp_path: Path,
) -> None:
    """v1; v2 killed once its checkpoint is complete; then a file of that checkpoint is lost (MANIFEST kept):
    --plan, the install and --uninstall each go on with one warning naming it (no take-over); --rollback refuses
    and names the directory to move aside."""
    source = make_source(tmp_path / "src")
    root = tmp_path / "root"
    root.mkdir()
    run(source, root)
    ship_new_version(source, "2.0.1")
    faults = Faults(tmp_path, source)
    probe = fresh(root, tmp_path / "probe")
    assert faults.run(probe, ()).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if " mv -f " in line and "MANIFEST" in line) + 1
    assert faults.run(root, (), at=at, kill=True).returncode != 0
    damaged = installtree.checkpoints(root)[-1]
    assert not (damaged / "FINISHED").exists()
    shutil.rmtree(damaged / "files/usr")

    def warned(proc: subprocess.CompletedProcess) -> None:
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
        assert len(lines) == 1 and damaged.name in lines[0] and "goes on without" in lines[0], proc.stderr

    warned(run(source, fresh(root, tmp_path / "plan"), "--plan", check=False))
    warned(run(source, fresh(root, tmp_path / "uninstall"), "--uninstall", check=False))
    rollback = run(source, fresh(root, tmp_path / "rollback"), "--rollback", check=False)
    assert rollback.returncode == 1
    assert f"move {tmp_path / 'rollback'}/{installtree.BACKUPS}/{damaged.name} out of" in rollback.stderr
    warned(run(source, root, check=False))
    assert (root / LAUNCHER).exists()


def test_rule16_after_a_killed_first_install_no_message_offers_a_rollback_that_refuses(tmp_path: Path) -> None:
    """A first install killed half-way; --uninstall takes its place without promising a --rollback (which refuses to
    undo a first install). Likewise a re-install that takes it over, fails and cannot restore: its advice names a
    command that works, and it removes what was installed."""
    source = make_source(tmp_path / "src")
    faults = Faults(tmp_path, source)
    probe = tmp_path / "probe"
    probe.mkdir()
    assert faults.run(probe, ()).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if line.split()[1] == "mv" and "leadgen-watchdog " in line + " ")
    root = tmp_path / "root"
    root.mkdir()
    assert faults.run(root, (), at=at, kill=True).returncode != 0
    assert (root / "usr/local/lib/motorcade-leadgen/leadgen_watchdog.py").exists()
    uninstall = run(source, fresh(root, tmp_path / "uninstall"), "--uninstall")
    taken = [line for line in uninstall.stdout.splitlines() if "did not finish" in line]
    assert len(taken) == 1 and "takes its place" in taken[0] and "--rollback" not in taken[0], uninstall.stdout
    again = fresh(root, tmp_path / "again")
    assert faults.run(again, ()).returncode == 0
    log = (faults.work(again) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if line.split()[1] == "mv" and "leadgen-watchdog " in line + " ")
    proc = faults.run(root, (), at=at, again=True)
    assert proc.returncode == 4, proc.stderr
    advice = re.search(r"install\.sh (--.*)$", proc.stderr.splitlines()[-1])
    assert advice, proc.stderr
    fixed = run(source, root, *advice.group(1).split(), check=False)
    assert fixed.returncode == 0, (advice.group(1), fixed.stdout, fixed.stderr)
    assert not (root / LAUNCHER).exists() and not (root / "usr/local/lib/motorcade-leadgen").exists()


def test_rule6_a_killed_rollback_whose_target_leaves_the_backup_directory_is_refused(tmp_path: Path) -> None:
    """A killed --rollback's MANIFEST says it restores `../../../elsewhere` (a checkpoint-shaped copy outside the
    backup directory): the next --rollback refuses in one line naming the killed checkpoint before it reads the
    copy (before, the refusal came later, from the MANIFEST check), nothing changed."""
    source = make_source(tmp_path / "src")
    root = tmp_path / "root"
    root.mkdir()
    run(source, root)
    ship_new_version(source, "2.0.1")
    run(source, root)
    faults = Faults(tmp_path, source)
    probe = fresh(root, tmp_path / "probe")
    assert faults.run(probe, ("--rollback",)).returncode == 0
    log = (faults.work(probe) / "log").read_text().splitlines()
    at = next(i for i, line in enumerate(log, 1) if " touch " in line and "FINISHED" in line)
    faults.run(root, ("--rollback",), at=at, kill=True)
    killed = installtree.checkpoints(root)[-1]
    target = re.search(r"^restores (.*)$", (killed / "MANIFEST").read_text(), re.M)
    assert target
    shutil.copytree(killed.parent / target.group(1), root / "elsewhere", symlinks=True)
    text = (killed / "MANIFEST").read_text().replace(f"restores {target.group(1)}\n", "restores ../../../elsewhere\n")
    (killed / "MANIFEST").write_text(text)
    before = listing(root)
    proc = run(source, root, "--rollback", check=False)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith(f"ERROR: checkpoint {killed.name}: what it restores is not a checkpoint"), proc.stderr
    assert listing(root) == before
