"""install.sh against a hostile caller or a bad day, in scratch roots: --root
confined, modes under any umask, rollback that trusts nothing it reads and
restores a state that existed, exact restores, symlinked backups, paths with
spaces, no leftovers, bytecode naming the installed path, true messages."""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
from pathlib import Path

import installtree
import pytest
from installtree import API_LINK, BACKUPS, TIMER_LINK, UNIT_DIR, listing, make_source, run, ship_new_version

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemctl") and shutil.which("systemd-analyze")), reason="systemd's tools not installed"
)

MODULE = "usr/local/lib/motorcade-leadgen/leadgen_watchdog.py"
TIMER = f"{UNIT_DIR}/motorcade-leadgen-watchdog.timer"
API = f"{UNIT_DIR}/motorcade-leadgen-api.service"
HEAD = "motorcade-leadgen-checkpoint 1\nrun install\n"


def managed_state(root: Path) -> dict[str, tuple]:
    """The managed files and both enablement links, exactly (checkpoints left out)."""
    dests = {row.dest for row in installtree.managed()} | {TIMER_LINK, API_LINK}
    return {path: what for path, what in listing(root).items() if path in dests}


def sctl(root: Path, *args: str) -> None:
    subprocess.run(["systemctl", f"--root={root}", *args], check=True, capture_output=True)


# --- rule 2: --root is confined ----------------------------------------------


@pytest.mark.parametrize("args", [["--root", ""], ["--root="]], ids=["root-space-empty", "root-equals-empty"])
def test_an_empty_root_is_a_usage_error(source: Path, tmp_path: Path, args: list[str]) -> None:
    """--root "" or --root= (an unset $DESTDIR) never means the live system: exit 2, one line."""
    proc = subprocess.run(["sh", str(source / "install.sh"), *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--root is empty" in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


@pytest.mark.parametrize("inside", ["etc", "usr/local", "var/backups"])
def test_an_absolute_symlink_inside_the_root_is_never_followed_out(
    source: Path, root: Path, tmp_path: Path, inside: str
) -> None:
    """A directory of the tree that is an absolute symlink to elsewhere: refused, nothing written there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    link = root / inside
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    proc = run(source, root, check=False)
    assert proc.returncode == 1
    assert "outside" in proc.stderr and "nothing changed" in proc.stderr
    assert list(outside.iterdir()) == []


def test_cdpath_cannot_move_a_relative_root(source: Path, tmp_path: Path) -> None:
    """A relative --root is relative to the working directory, whatever CDPATH says."""
    work, decoy = tmp_path / "work", tmp_path / "decoy"
    (work / "tree").mkdir(parents=True)
    (decoy / "tree").mkdir(parents=True)
    env = {**os.environ, "CDPATH": str(decoy)}
    proc = subprocess.run(
        ["sh", str(source / "install.sh"), "--root", "tree"], capture_output=True, text=True, cwd=work, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list((decoy / "tree").iterdir()) == []
    assert (work / "tree" / MODULE).exists()


def test_a_trailing_newline_cannot_change_the_root(source: Path, tmp_path: Path) -> None:
    """--root 'tree\\n' when both 'tree' and 'tree\\n' exist: a usage error, neither is touched."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree\n").mkdir()
    proc = subprocess.run(
        ["sh", str(source / "install.sh"), "--root", "tree\n"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2 and "newline" in proc.stderr
    assert list((tmp_path / "tree").iterdir()) == [] and list((tmp_path / "tree\n").iterdir()) == []


# --- rule 3: modes under any umask -------------------------------------------


@pytest.mark.parametrize("umask", ["000", "077"])
def test_modes_do_not_depend_on_the_umask(source: Path, root: Path, umask: str) -> None:
    """Directories 0755, code 0755, units and docs 0644, env files 0640, under umask 000 and 077."""
    script = f'umask {umask} && exec sh "$0" --root "$1"'
    proc = subprocess.run(
        ["sh", "-c", script, str(source / "install.sh"), str(root)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for row in installtree.installed_here():
        assert (root / row.dest).stat().st_mode & 0o7777 == row.mode, row.dest
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink() and BACKUPS not in str(path):
            assert path.stat().st_mode & 0o7777 == 0o755, path


# --- rule 4: rollback trusts nothing it reads ------------------------------------


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".hidden"])
def test_a_checkpoint_name_must_be_a_plain_name(source: Path, root: Path, name: str) -> None:
    """--rollback with a path, not a name: exit 1, one line, nothing changed."""
    run(source, root)
    before = listing(root)
    proc = run(source, root, "--rollback", name, check=False)
    assert proc.returncode == 1 and "not a checkpoint name" in proc.stderr and proc.stderr.count("\n") == 1
    assert listing(root) == before


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param("created /etc/important\ncomplete\n", id="old-style-line"),
        pytest.param(f"{HEAD}absent /etc/important\ncomplete\n", id="unmanaged"),
        pytest.param(f"{HEAD}absent /etc/../etc/important\ncomplete\n", id="dots"),
    ],
)
def test_a_manifest_naming_an_unmanaged_path_is_refused(source: Path, root: Path, manifest: str) -> None:
    """A MANIFEST line must name a managed path; otherwise exit 1 and not one file changed."""
    run(source, root)
    (root / "etc/important").write_text("keep me\n")
    evil = root / BACKUPS / "evil"
    (evil / "files").mkdir(parents=True)
    (evil / "MANIFEST").write_text(manifest)
    before = listing(root)
    proc = run(source, root, "--rollback", "evil", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "refusing it" in proc.stderr and proc.stderr.count("\n") == 1
    assert listing(root) == before


@pytest.mark.parametrize("manifest", [None, "", "motorcade-leadgen-checkpoint 1\nrun install\n"])
def test_a_cut_short_checkpoint_is_never_the_latest(source: Path, root: Path, manifest: str | None) -> None:
    """A newer checkpoint without MANIFEST, or not ending 'complete': --rollback uses the last complete one."""
    run(source, root)
    installed = managed_state(root)
    ship_new_version(source)
    run(source, root)
    short = root / BACKUPS / "29991231T000000Z"
    short.mkdir()
    if manifest is not None:
        (short / "MANIFEST").write_text(manifest)
    run(source, root, "--rollback")
    assert managed_state(root) == installed
    assert (root / TIMER_LINK).is_symlink()


# --- rule 5: a named rollback restores a state that existed --------------------------


def test_a_named_rollback_returns_the_whole_state_before_that_run(source: Path, root: Path) -> None:
    """v1, then v2 (script, timer), then v3 (service unit): --rollback <v2's> gives exactly v1, no mix."""
    run(source, root)
    v1 = managed_state(root)
    ship_new_version(source)
    run(source, root)
    v2_run = installtree.checkpoints(root)[-1].name
    unit = source / "units/motorcade-leadgen-watchdog.service"
    unit.write_text(unit.read_text().replace("Description=", "Description=v3 "))
    run(source, root)
    run(source, root, "--rollback", v2_run)
    assert managed_state(root) == v1


# --- rule 6: exact means exact -----------------------------------------------


def test_rollback_restores_owner_mode_mtime_and_symlinks(source: Path, root: Path) -> None:
    """Owner, group, mode, mtime and a symlink come back exactly as they were before the update."""
    run(source, root)
    module = root / MODULE
    os.chown(module, 1000, 1000)
    module.chmod(0o700)
    os.utime(module, (1_600_000_000, 1_600_000_000))
    readme = root / "usr/local/share/doc/motorcade-leadgen/README.md"
    readme.unlink()
    readme.symlink_to("/usr/share/doc/somewhere/README.md")
    before = managed_state(root)
    ship_new_version(source)
    run(source, root)
    assert managed_state(root) != before
    run(source, root, "--rollback")
    assert managed_state(root) == before


def test_rollback_restores_the_api_units_enablement(source: Path, root: Path) -> None:
    """The API unit's enablement is in the checkpoint: disabled before the update, disabled after rollback."""
    run(source, root)
    sctl(root, "disable", "motorcade-leadgen-api.service")
    ship_new_version(source)
    run(source, root)
    assert (
        "enablement motorcade-leadgen-api.service disabled"
        in (installtree.checkpoints(root)[-1] / "MANIFEST").read_text().splitlines()
    )
    sctl(root, "enable", "motorcade-leadgen-api.service")
    run(source, root, "--rollback")
    assert not (root / API_LINK).exists()
    assert (root / TIMER_LINK).is_symlink()


@pytest.mark.parametrize("unit", ["motorcade-leadgen-watchdog.timer", "motorcade-leadgen-api.service"])
def test_an_update_never_reenables_a_unit_the_operator_disabled(source: Path, root: Path, unit: str) -> None:
    """Disabled by the operator, then an update: still disabled, and the output says how to enable it."""
    run(source, root)
    sctl(root, "disable", unit)
    ship_new_version(source)
    proc = run(source, root)
    assert not (root / (TIMER_LINK if unit.endswith(".timer") else API_LINK)).exists()
    assert f"kept {unit} disabled (yours)" in proc.stdout


# --- rule 7: backups may live elsewhere --------------------------------------------


def test_checkpoints_and_rollback_work_through_a_symlinked_backup_directory(source: Path, root: Path) -> None:
    """/var/backups/motorcade-leadgen a symlink to a bigger disk (inside the tree): checkpoint and rollback work."""
    disk = root / "srv/big-disk/leadgen"
    disk.mkdir(parents=True)
    (root / "var/backups").mkdir(parents=True)
    (root / BACKUPS).symlink_to(disk)
    run(source, root)
    installed = managed_state(root)
    ship_new_version(source)
    run(source, root)
    assert len(list(disk.iterdir())) == 2
    proc = run(source, root, "--rollback")
    assert "rolled back to" in proc.stdout
    assert managed_state(root) == installed


# --- rule 8: ordinary paths work -----------------------------------------------


def test_a_checkout_path_with_spaces_installs(tmp_path: Path, root: Path) -> None:
    """The checkout in 'my checkout/leadgen src': every file installed from it."""
    source = make_source(tmp_path / "my checkout" / "leadgen src")
    run(source, root)
    for row in installtree.installed_here():
        assert (root / row.dest).is_file(), row.dest
    assert (root / MODULE).read_bytes() == (source / "leadgen_watchdog.py").read_bytes()


# --- rule 9: leftovers are cleaned up ---------------------------------------------


def test_a_rerun_removes_a_leftover_new_file(source: Path, root: Path) -> None:
    """A *.new left by a killed run is gone after the next run."""
    run(source, root)
    (root / f"{MODULE}.new").write_text("half a file")
    run(source, root)
    assert not list(root.rglob("*.new"))


def test_uninstall_leaves_no_empty_directory(source: Path, root: Path) -> None:
    """--uninstall removes the module's and the docs' directories with their files."""
    run(source, root)
    run(source, root, "--uninstall")
    assert not (root / "usr/local/lib/motorcade-leadgen").exists()
    assert not (root / "usr/local/share/doc/motorcade-leadgen").exists()


# --- rule 10: the bytecode names the installed path -------------------------------


def test_bytecode_names_the_installed_path_even_under_root(source: Path, root: Path) -> None:
    """co_filename of the installed .pyc is /usr/local/lib/..., not the scratch root or the checkout."""
    run(source, root)
    (pyc,) = (root / "usr/local/lib/motorcade-leadgen/__pycache__").glob("leadgen_watchdog.*.pyc")
    code = marshal.loads(pyc.read_bytes()[16:])  # noqa: S302 (the file this test just installed)
    assert code.co_filename == "/" + MODULE


# --- rule 11: messages are true ---------------------------------------------------


def test_the_template_hint_compares_the_operators_file_with_the_new_template(source: Path, root: Path) -> None:
    """A changed template: the hint diffs the operator's file against the installed template and names what is new."""
    run(source, root)
    (root / "etc/motorcade-leadgen/api.env").write_text("LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.2.3\n")
    template = source / "units/api.env"
    template.write_text(template.read_text() + "\n# New.\nLEADGEN_NEW_SETTING=1\n")
    proc = run(source, root)
    mine = root / "etc/motorcade-leadgen/api.env"
    installed = root / "usr/local/share/doc/motorcade-leadgen/api.env.template"
    assert f"diff -u {mine} {installed}" in proc.stdout
    assert installed.read_text() == template.read_text()
    new = [line for line in proc.stdout.splitlines() if "does not mention" in line]
    assert new and "LEADGEN_NEW_SETTING" in new[0] and "LEADGEN_MEMORY" in new[0]


def test_help_says_what_each_exit_code_means() -> None:
    """--help: exit 1 only ever means 'as before'; every other outcome has its own code."""
    proc = subprocess.run(["sh", str(installtree.REPO / "install.sh"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "1 failed, the host is as before the run; 2 bad usage; 3 installed, but the API is not healthy" in text
    assert "4 the restore after a failure is incomplete" in text
    assert "5 podman is missing: the watchdog is installed, the API unit is not" in text


# --- issue 14: rollback can be repeated safely ----------------------------------------


def test_each_further_rollback_steps_one_checkpoint_back_then_refuses(source: Path, root: Path) -> None:
    """v1, v2, v3; --rollback twice gives v2, v1; a third would undo the first install: refused (--uninstall)."""
    run(source, root)
    v1 = managed_state(root)
    ship_new_version(source, "2.0.1")
    run(source, root)
    v2 = managed_state(root)
    ship_new_version(source, "2.0.2")
    run(source, root)
    run(source, root, "--rollback")
    assert managed_state(root) == v2
    run(source, root, "--rollback")
    assert managed_state(root) == v1
    before = listing(root)
    proc = run(source, root, "--rollback", check=False)
    assert proc.returncode == 1 and "--uninstall" in proc.stderr
    assert installtree.checkpoints(root)[0].name in proc.stderr
    assert listing(root) == before


def test_a_named_rollback_of_a_rollback_undoes_it(source: Path, root: Path) -> None:
    """--rollback NAME of the rollback's own checkpoint returns to the state it replaced."""
    run(source, root)
    ship_new_version(source)
    run(source, root)
    v2 = managed_state(root)
    run(source, root, "--rollback")
    undo = installtree.checkpoints(root)[-1].name
    run(source, root, "--rollback", undo)
    assert managed_state(root) == v2


def test_a_root_with_spaces_fails_and_restores_cleanly(source: Path, tmp_path: Path) -> None:
    """A tree under 'my root': install, a failed update restores it exactly, an update and rollback work."""
    root = tmp_path / "my root"
    root.mkdir()
    run(source, root)
    installed, v1 = listing(root), managed_state(root)
    ship_new_version(source)
    (tmp_path / "bin").mkdir()
    # a read-only unit directory, as root sees one: `install` into it fails
    (tmp_path / "bin/install").write_text(
        '#!/bin/sh\ncase "$*" in *systemd/system/*) echo "install: Read-only file system" >&2; exit 1 ;; esac\n'
        'exec /usr/bin/install "$@"\n'
    )
    (tmp_path / "bin/install").chmod(0o755)
    proc = run(source, root, check=False, env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert proc.returncode == 1 and "restored:" in proc.stderr, proc.stderr
    assert listing(root) == installed
    run(source, root)
    run(source, root, "--rollback")
    assert managed_state(root) == v1


def test_a_step_failing_with_any_status_exits_1(source: Path, root: Path, tmp_path: Path) -> None:
    """A command failing with status 3 (say, a held lock) still ends the run with 1, restored: 0, 1 and 2 only."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/install").write_text('#!/bin/sh\necho "install: locked" >&2\nexit 3\n')
    (tmp_path / "bin/install").chmod(0o755)
    proc = run(source, root, check=False, env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert proc.returncode == 1 and "restored:" in proc.stderr, proc.stderr
    assert list(root.iterdir()) == []
