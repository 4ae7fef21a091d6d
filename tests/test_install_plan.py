"""install.sh --plan (issue 19 rule 13), in scratch roots: the installer's own
plan, computed by the code an install runs, printed one line per change; empty
after an install; naming exactly what the next install changes (the root-mode
drop-in's removal, the polkit rule, subid lines, old bytecode, leftovers
included); a diff that never reads through a link; no changing command; bad
input refused before anything is read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import installtree
import pytest
from installtree import API_LINK, BACKUPS, TIMER_LINK, add_polkitd, listing, make_source, run, ship_new_version
from test_install_faults import Faults

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemctl") and shutil.which("systemd-analyze")), reason="systemd's tools not installed"
)

API_ENV = "etc/motorcade-leadgen/api.env"
ROOT_MODE = "etc/systemd/system/motorcade-leadgen-watchdog.service.d/50-root-mode.conf"
POLKIT_RULE = "etc/polkit-1/rules.d/50-motorcade-leadgen-watchdog.rules"
TIMER = "etc/systemd/system/motorcade-leadgen-watchdog.timer"
README = "usr/local/share/doc/motorcade-leadgen/README.md"
MODULE = "usr/local/lib/motorcade-leadgen/leadgen_watchdog.py"
PYCACHE = "usr/local/lib/motorcade-leadgen/__pycache__"
LINKS = {"motorcade-leadgen-watchdog.timer": TIMER_LINK, "motorcade-leadgen-api.service": API_LINK}
IMAGE = "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.4.2"


def plan(source: Path, root: Path, *args: str) -> list[str]:
    """install.sh --plan's lines (exit 0 required)."""
    return run(source, root, "--plan", *args).stdout.splitlines()


def planned_paths(lines: list[str]) -> set[str]:
    """The paths (relative to the root) the plan says the install changes."""
    paths = set()
    for line in lines:
        verb, rest = line.split(" ", 1)
        if verb in ("+", "-"):
            dest, mode, role = rest.split(" ")
            assert dest.startswith("/") and mode.isdigit() and role, line
            paths.add(dest.lstrip("/"))
        elif verb == "set":
            paths.add(API_ENV)
        elif verb == "enable":
            paths.add(LINKS[rest])
        else:  # start and restart are live-only
            raise AssertionError(f"not a --root plan line: {line!r}")
    return paths


def changed_paths(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    """Files and links that appeared, went or changed in any way (a leftover X.new counts as X); directories aside."""
    changed = set()
    for path in before.keys() | after.keys():
        old, new = before.get(path), after.get(path)
        if old == new or all(entry is None or entry[0] == "dir" for entry in (old, new)):
            continue
        changed.add(path.removesuffix(".new"))
    return changed


def installed(source: Path, root: Path, *args: str) -> None:
    run(source, root, *args)
    assert plan(source, root, *args) == []


# Each scenario: prepare an installed (or empty) root, return the args of the next run.
def fresh(source: Path, root: Path) -> tuple[str, ...]:
    return ()


def update(source: Path, root: Path) -> tuple[str, ...]:
    installed(source, root)
    ship_new_version(source)
    return ()


def polkitd_added(source: Path, root: Path) -> tuple[str, ...]:
    installed(source, root)
    add_polkitd(root)
    return ()


def polkitd_removed(source: Path, root: Path) -> tuple[str, ...]:
    add_polkitd(root)
    installed(source, root)
    (root / "usr/lib/polkit-1/polkitd").unlink()
    return ()


def a_release(source: Path, root: Path) -> tuple[str, ...]:
    installed(source, root, "--set", IMAGE)
    return ("--set", "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.4.3", "--set", "LEADGEN_CPUS=a b")


def hand_edits(source: Path, root: Path) -> tuple[str, ...]:
    """A mode changed, a doc replaced by a link, a leftover X.new, another interpreter's bytecode, a subid line gone."""
    installed(source, root)
    (root / MODULE).chmod(0o700)
    (root / README).unlink()
    (root / README).symlink_to("/usr/share/doc/somewhere/README.md")
    (root / f"{TIMER}.new").write_text("half a file")
    (root / PYCACHE / "leadgen_watchdog.cpython-39.pyc").write_bytes(b"old")
    (root / "etc/subgid").write_text("")
    return ()


def metrics_appear(source: Path, root: Path) -> tuple[str, ...]:
    installed(source, root)
    (root / "var/lib/prometheus/node-exporter").mkdir(parents=True)
    return ()


SCENARIOS = [fresh, update, polkitd_added, polkitd_removed, a_release, hand_edits, metrics_appear]


@pytest.mark.parametrize("prepare", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_rule13_the_plan_names_exactly_what_the_next_install_changes(
    source: Path, root: Path, prepare: Callable[[Path, Path], tuple[str, ...]]
) -> None:
    """--plan, then the same install: the files, links and api.env it changes are exactly those the plan names,
    nothing changed in between, and a --plan after it is empty."""
    args = prepare(source, root)
    before = listing(root)
    lines = plan(source, root, *args)
    assert lines, "the plan is empty, but this scenario changes something"
    assert listing(root) == before
    run(source, root, *args)
    after = listing(root, skip=(BACKUPS,))
    assert changed_paths({k: v for k, v in before.items() if not k.startswith(BACKUPS)}, after) == planned_paths(lines)
    assert plan(source, root, *args) == []


@pytest.mark.parametrize("polkitd", [False, True], ids=["without-polkitd", "with-polkitd"])
def test_rule13_the_plan_is_empty_after_an_install(source: Path, root: Path, polkitd: bool) -> None:
    """Installed (with a --set release): --plan and --plan --diff with the same options print nothing, exit 0."""
    if polkitd:
        add_polkitd(root)
    run(source, root, "--set", IMAGE)
    for extra in ((), ("--diff",)):
        proc = run(source, root, "--plan", "--set", IMAGE, *extra)
        assert proc.stdout == "", proc.stdout


@pytest.mark.parametrize("polkitd", [False, True], ids=["without-polkitd", "with-polkitd"])
def test_rule13_a_fresh_plan_is_every_wanted_row_and_the_polkit_rule_follows_polkitd(
    source: Path, root: Path, polkitd: bool
) -> None:
    """A root never installed: every row the install puts there, the polkit rule only with polkitd (else the
    root-mode drop-in), then the two units enabled."""
    if polkitd:
        add_polkitd(root)
    lines = plan(source, root)
    rows = [row for row in installtree.installed_here(polkit=polkitd) if row.role != "subid"]
    assert lines[: len(rows)] == [f"+ /{row.dest} {row.mode:04o} {row.role}" for row in rows]
    assert lines[len(rows) :] == [
        "+ /etc/subuid 0644 subid",
        "+ /etc/subgid 0644 subid",
        "enable motorcade-leadgen-watchdog.timer",
        "enable motorcade-leadgen-api.service",
    ]
    assert (f"+ /{POLKIT_RULE} 0644 polkit" in lines) is polkitd
    assert (f"+ /{ROOT_MODE} 0644 root-mode" in lines) is not polkitd


def test_rule13_the_plan_shows_the_root_mode_dropins_removal(source: Path, root: Path) -> None:
    """Installed without polkitd, then polkitd arrives: the plan removes the root-mode drop-in (its diff shows every
    line going) and installs the polkit rule, and nothing else."""
    installed(source, root)
    add_polkitd(root)
    out = run(source, root, "--plan", "--diff").stdout
    lines = out.split("\n--- ", 1)[0].splitlines()
    assert lines == [f"+ /{POLKIT_RULE} 0644 polkit", f"- /{ROOT_MODE} 0644 root-mode"]
    removal = f"--- /{ROOT_MODE}\n+++ /dev/null\n"
    assert removal in out and "\n-User=\n-Group=\n" in out.split(removal, 1)[1]
    assert f"--- /dev/null\n+++ /{POLKIT_RULE}\n" in out


def test_rule13_the_diff_shows_each_changed_file_after_the_plan(source: Path, root: Path) -> None:
    """An update and a release: after the plan lines, a unified diff of the timer and of api.env's changed key."""
    installed(source, root, "--set", IMAGE)
    ship_new_version(source)
    out = run(source, root, "--plan", "--diff", "--set", "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.4.3").stdout
    head, diffs = out.split("\n--- ", 1)
    assert f"+ /{TIMER} 0644 timer" in head.splitlines()
    assert head.splitlines()[-1] == "set LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.4.3"
    assert f"/{TIMER}\n+++ /{TIMER}\n" in out and "\n-OnUnitActiveSec=30s\n+OnUnitActiveSec=20s\n" in diffs
    assert f"\n-{IMAGE}\n+LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.4.3\n" in diffs
    assert not any(line.startswith("---") for line in head.splitlines())


@pytest.mark.parametrize("thing", ["symlink", "directory", "fifo"])
def test_rule13_the_diff_never_reads_through_what_is_not_a_regular_file(
    source: Path, root: Path, tmp_path: Path, thing: str
) -> None:
    """A destination replaced by a link to a secret, a directory or a FIFO: planned as a replacement, its diff
    starts from /dev/null; the secret is never printed and nothing hangs or changes."""
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-LINE\n")
    installed(source, root)
    target = root / README
    target.unlink()
    if thing == "symlink":
        target.symlink_to(secret)
    elif thing == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)
    before = listing(root)
    proc = run(source, root, "--plan", "--diff")
    assert proc.stdout.splitlines()[0] == f"+ /{README} 0644 doc"
    assert f"--- /dev/null\n+++ /{README}\n" in proc.stdout
    assert "TOP-SECRET" not in proc.stdout + proc.stderr
    assert listing(root) == before


def test_rule13_a_plan_runs_no_changing_command(tmp_path: Path) -> None:
    """A recorder in front of every changing command: --plan (and --diff, --set) on an empty root, an update, a
    release and a polkitd change runs none of them on the tree and changes nothing."""
    source = make_source(tmp_path / "src")
    faults = Faults(tmp_path, source)
    empty = tmp_path / "empty"
    empty.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    run(source, root, "--set", IMAGE)
    ship_new_version(source)
    add_polkitd(root)
    for tree in (empty, root):
        for args in ((), ("--diff",), ("--diff", "--set", "LEADGEN_IMAGE=localhost/x:2", "--set", "LEADGEN_CPUS=2")):
            before = listing(tree)
            proc = faults.run(tree, ("--plan", *args))
            assert proc.returncode == 0 and proc.stdout, (args, proc.stderr)
            assert faults.count(tree) == 0, (args, (faults.work(tree) / "log").read_text())
            assert listing(tree) == before, args


@pytest.mark.parametrize(
    ("args", "code", "culprit"),
    [
        pytest.param(("--plan", "--rollback"), 2, "--plan goes with an install run only", id="rollback"),
        pytest.param(("--plan", "--uninstall"), 2, "--plan goes with an install run only", id="uninstall"),
        pytest.param(("--plan", "--list"), 2, "--plan goes with an install run only", id="list"),
        pytest.param(("--diff",), 2, "--diff goes with --plan only", id="diff-alone"),
        pytest.param(("--plan", "--set", "OTHER=1"), 2, "OTHER=1", id="not-leadgen"),
        pytest.param(("--plan", "--set", "LEADGEN_IMAGE=$(id)"), 2, "--set LEADGEN_IMAGE", id="dollar"),
        pytest.param(("--plan", "--set", "LEADGEN_IMAGE=x\ny"), 2, "newline", id="newline"),
        pytest.param(("--plan", "--set", "LEADGEN_IMAGE=x "), 2, "--set LEADGEN_IMAGE", id="trailing-space"),
        pytest.param(("--plan", "--bogus"), 2, "unknown option: --bogus", id="unknown"),
        pytest.param(("--plan",), 1, "/etc/motorcade-leadgen/api.env line 1", id="crlf-api-env"),
    ],
)
def test_rule13_bad_input_is_refused_with_one_line(
    source: Path, root: Path, args: tuple[str, ...], code: int, culprit: str
) -> None:
    """Bad usage exits 2, an api.env line systemd would read differently exits 1: one line naming the culprit,
    no plan printed, nothing changed."""
    installed(source, root)
    if code == 1:
        (root / API_ENV).write_bytes(b"LEADGEN_MEMORY=512m\r\n")
    before = listing(root)
    proc = run(source, root, *args, check=False)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and culprit in proc.stderr, proc.stderr
    assert listing(root) == before


def test_rule13_a_plan_of_a_killed_run_names_what_the_completing_run_changes(source: Path, root: Path) -> None:
    """A run killed mid-update (its checkpoint left unfinished): the plan still names what the next run changes."""
    installed(source, root)
    ship_new_version(source)
    bindir = root.parent / "bin"
    bindir.mkdir()
    (bindir / "mv").write_text(f'#!/bin/sh\ncase "$*" in *{TIMER}*) kill -9 $PPID; exit 1 ;; esac\nexec /bin/mv "$@"\n')
    (bindir / "mv").chmod(0o755)
    killed = run(source, root, check=False, env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert killed.returncode != 0
    before = listing(root, skip=(BACKUPS,))
    lines = plan(source, root)
    assert f"+ /{TIMER} 0644 timer" in lines
    run(source, root)
    assert changed_paths(before, listing(root, skip=(BACKUPS,))) == planned_paths(lines)
    assert plan(source, root) == []


def test_rule13_a_symlinked_api_env_is_never_read_for_the_diff(source: Path, root: Path, tmp_path: Path) -> None:
    """api.env replaced by a link to a secret: --plan --diff --set names the key to set, prints no diff of it and
    never the secret (the install itself refuses to edit through the link)."""
    secret = tmp_path / "secret"
    secret.write_text("LEADGEN_TOKEN=TOP-SECRET\n")
    installed(source, root)
    (root / API_ENV).unlink()
    (root / API_ENV).symlink_to(secret)
    proc = run(source, root, "--plan", "--diff", "--set", IMAGE)
    assert proc.stdout == f"set {IMAGE}\n"
    assert "TOP-SECRET" not in proc.stdout + proc.stderr
