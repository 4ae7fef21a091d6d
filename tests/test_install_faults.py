"""install.sh is all or nothing: a fault injected at every mutating step of an
install, update, rollback and uninstall leaves the tree exactly as it was
(paths, modes, owners, hashes, mtimes, symlinks, enablement links); a kill -9
at every step is followed by a run that converges.

A PATH shim stands in front of every command that can change a file or a
unit (install, mv, cp, rm, rmdir, mkdir, touch, ln, chmod, and systemctl's
changing verbs); it counts the calls that name the scratch root and fails, or
kills the installer's process group at, the Nth."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import installtree
import pytest
from installtree import listing, make_source, run, ship_new_version

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemctl") and shutil.which("systemd-analyze")), reason="systemd's tools not installed"
)

SHIMMED = ("install", "mv", "cp", "rm", "rmdir", "mkdir", "touch", "ln", "chmod", "chown", "systemctl")
CHANGING_VERBS = "enable disable start stop restart daemon-reload reset-failed"
SHIM = """#!/bin/sh
# fault shim for {name}
case "$*" in *"$FAULT_ROOT"*) ;; *) exec {real} "$@" ;; esac
if [ {name} = systemctl ]; then
    changing=0
    for arg in "$@"; do
        for verb in {verbs}; do [ "$arg" != "$verb" ] || changing=1; done
    done
    [ "$changing" = 1 ] || exec {real} "$@"
fi
n=$(($(cat "$FAULT_DIR/count") + 1))
echo "$n" >"$FAULT_DIR/count"
echo "$n {name} $*" >>"$FAULT_DIR/log"
case " $FAULT_AT " in *" $n "*)
    if [ "$FAULT_KILL" != 0 ]; then
        kill -"$FAULT_KILL" 0
        exec {real} "$@"  # the signal is ignored here (a restore): go on
    fi
    echo "{name}: injected fault" >&2
    exit 1
    ;;
esac
exec {real} "$@"
"""


class Faults:
    """Runs install.sh with the shim in front, failing or killing at step N."""

    def __init__(self, base: Path, source: Path) -> None:
        self.source = source
        self.dir = base / "faults"
        shims = self.dir / "bin"
        shims.mkdir(parents=True)
        for name in SHIMMED:
            real = shutil.which(name)
            assert real, name
            (shims / name).write_text(SHIM.format(name=name, real=real, verbs=CHANGING_VERBS))
            (shims / name).chmod(0o755)
        self.path = f"{shims}:{os.environ['PATH']}"

    def run(
        self, root: Path, args: tuple[str, ...], at: int = 0, kill: bool | str = False, again: bool = False
    ) -> subprocess.CompletedProcess:
        """One run; its own count, log and staging directory (runs may go in parallel). kill: SIGKILL (True) or
        the named signal to the whole process group instead of a failure; again: once more at the next step."""
        work = self.work(root)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "count").write_text("0\n")
        (work / "log").write_text("")
        env = {
            **os.environ,
            "PATH": self.path,
            "FAULT_ROOT": str(root),
            "FAULT_DIR": str(work),
            "FAULT_AT": f"{at} {at + 1}" if again else str(at),
            "FAULT_KILL": "KILL" if kill is True else (kill or "0"),
            "TMPDIR": str(work),  # a killed installer's staging directory stays here
        }
        return run(self.source, root, *args, check=False, env=env, start_new_session=True)

    @staticmethod
    def work(root: Path) -> Path:
        """Where a run at root keeps its count: not under a path the shim would count."""
        return root.parent / "faults-work" / root.name

    def count(self, root: Path) -> int:
        return int((self.work(root) / "count").read_text())

    def step(self, root: Path, at: int) -> str:
        """The command the run at root was failed or killed at."""
        return (self.work(root) / "log").read_text().splitlines()[at - 1]


def every_step(steps: int, check: Callable[[int], None]) -> None:
    """check(1) .. check(steps), two at a time: each uses its own root."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        for result in [pool.submit(check, at) for at in range(1, steps + 1)]:
            result.result()


def first_install(source: Path, root: Path) -> tuple[str, ...]:
    """An empty root."""
    return ()


def update(source: Path, root: Path) -> tuple[str, ...]:
    """Installed; the next version changes the script and the timer."""
    run(source, root)
    ship_new_version(source)
    return ()


def rollback(source: Path, root: Path) -> tuple[str, ...]:
    """Installed, then updated: --rollback returns to the first version."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    return ("--rollback",)


def uninstall(source: Path, root: Path) -> tuple[str, ...]:
    """Installed: --uninstall removes the watchdog."""
    run(source, root)
    return ("--uninstall",)


SCENARIOS = [
    pytest.param(first_install, id="install"),
    pytest.param(update, id="update"),
    pytest.param(rollback, id="rollback"),
    pytest.param(uninstall, id="uninstall"),
]


def prepare(tmp_path: Path, scenario: Callable[[Path, Path], tuple[str, ...]]) -> tuple[Path, Path, tuple[str, ...]]:
    source = make_source(tmp_path / "src")
    template = tmp_path / "template"
    template.mkdir()
    args = scenario(source, template)
    return source, template, args


def fresh(template: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target, symlinks=True)
    return target


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_fault_at_any_step_leaves_everything_as_it_was(
    tmp_path: Path, scenario: Callable[[Path, Path], tuple[str, ...]]
) -> None:
    """Each mutating step failing in turn: exit 1, the step named, 'restored', and the tree unchanged."""
    source, template, args = prepare(tmp_path, scenario)
    faults = Faults(tmp_path, source)
    root = tmp_path / "clean"
    clean = faults.run(fresh(template, root), args)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    steps = faults.count(root)
    # every changing command but the by-line edits of shared files (helper: tested on their own)
    assert steps >= clean.stdout.count("\n+ ") - clean.stdout.count("\n+ helper ") > 0
    before = listing(template)

    def check(at: int) -> None:
        root = fresh(template, tmp_path / f"root-{at}")
        proc = faults.run(root, args, at=at)
        failed = faults.step(root, at)
        assert proc.returncode == 1, (failed, proc.stdout, proc.stderr)
        assert "injected fault" in proc.stderr and "failed:" in proc.stderr, failed
        assert "restored: the managed files and enablement are as they were before this run" in proc.stderr or (
            "while saving the checkpoint; nothing was changed" in proc.stderr
        ), (failed, proc.stderr)
        assert listing(root) == before, failed
        shutil.rmtree(root)

    every_step(steps, check)


def test_an_interrupted_run_restores_its_checkpoint_and_leaks_no_staging(tmp_path: Path) -> None:
    """SIGTERM in the middle of an update: restored, exit 1, the staging directory removed."""
    source, template, _ = prepare(tmp_path, update)
    faults = Faults(tmp_path, source)
    stall = faults.dir / "bin" / "stall"
    (faults.dir / "bin" / "install").rename(stall)
    (faults.dir / "bin" / "install").write_text(f'#!/bin/sh\nsleep 30 & wait $!\nexec {stall} "$@"\n')
    (faults.dir / "bin" / "install").chmod(0o755)
    root = fresh(template, tmp_path / "root")
    before = listing(root)
    env = {**os.environ, "PATH": faults.path, "FAULT_ROOT": "/nowhere", "FAULT_DIR": str(faults.dir), "FAULT_AT": "0"}
    env["TMPDIR"] = str(faults.dir / "tmp")
    (faults.dir / "tmp").mkdir()
    proc = subprocess.Popen(
        ["sh", str(source / "install.sh"), "--root", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("checkpoint:"):
            break
    os.killpg(proc.pid, signal.SIGTERM)  # as a terminal's Ctrl-C reaches the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted (SIGTERM)" in err and "restored:" in err
    assert listing(root) == before
    assert list((faults.dir / "tmp").iterdir()) == []


def files(root: Path) -> dict[str, tuple]:
    """Files and links, outside the checkpoints and the env files (a rollback keeps those)."""
    found = listing(root, skip=("var", "etc/motorcade-leadgen"))
    return {path: what for path, what in found.items() if what[0] != "dir"}


@pytest.mark.parametrize("scenario", [pytest.param(first_install, id="install"), pytest.param(update, id="update")])
def test_after_a_kill_at_any_step_the_next_run_converges(
    tmp_path: Path, scenario: Callable[[Path, Path], tuple[str, ...]]
) -> None:
    """kill -9 at each mutating step, then a plain re-run: the same tree as an uninterrupted run;
    or, when the killed update's checkpoint was complete, --rollback: the tree from before the run (undoing a
    first install is --uninstall's job)."""
    source, template, args = prepare(tmp_path, scenario)
    faults = Faults(tmp_path, source)
    root = tmp_path / "clean"
    faults.run(fresh(template, root), args)
    steps = faults.count(root)
    done = listing(root, skip=("var",), mtimes=False)
    before = files(template)
    known = {path.name for path in installtree.checkpoints(template)}

    def check(at: int) -> None:
        root = fresh(template, tmp_path / f"root-{at}")
        killed = faults.run(root, args, at=at, kill=True)
        assert killed.returncode == -signal.SIGKILL, (at, killed.stderr)
        step = faults.step(root, at)
        new = [cp for cp in installtree.checkpoints(root) if cp.name not in known]
        if new and (new[0] / "MANIFEST").exists() and scenario is not first_install:  # that is --uninstall
            run(source, root, "--rollback")
            assert files(root) == before, step
        rerun = run(source, root, *args)
        assert listing(root, skip=("var",), mtimes=False) == done, (step, rerun.stdout)
        assert not list(root.rglob("*.new")), step
        shutil.rmtree(root)

    every_step(steps, check)
