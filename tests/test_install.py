"""install.sh into a scratch root (--root): files, modes, enablement, idempotency,
checkpoints, rollback, uninstall and dry-run. No running systemd needed."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import installtree
import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = "etc/systemd/system"
WATCHDOG_FILES = {
    "usr/local/lib/motorcade-leadgen/leadgen_watchdog.py": 0o755,
    "usr/local/sbin/leadgen-watchdog": 0o755,
    f"{UNIT_DIR}/motorcade-leadgen-watchdog.service": 0o644,
    f"{UNIT_DIR}/motorcade-leadgen-watchdog.timer": 0o644,
}
DOC_PAGES = ("operations", "runbook", "alerting", "configuration", "ansible", "design", "testing")
OTHER_FILES = {
    f"{UNIT_DIR}/motorcade-leadgen-api.service": 0o644,
    "etc/motorcade-leadgen/api.env": 0o640,
    "etc/motorcade-leadgen/watchdog.env": 0o640,
    "usr/local/share/doc/motorcade-leadgen/README.md": 0o644,
    **{f"usr/local/share/doc/motorcade-leadgen/docs/{page}.md": 0o644 for page in DOC_PAGES},
}

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemctl") and shutil.which("systemd-analyze")), reason="systemd's tools not installed"
)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the project to install from, so a test can ship a 'new version'."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("install.sh", "leadgen_watchdog.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "units", src / "units")
    shutil.copytree(REPO / "docs", src / "docs")
    return src


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def install(source: Path, root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["sh", str(source / "install.sh"), "--root", str(root), *args], capture_output=True, text=True, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def snapshot(root: Path) -> dict[str, tuple[str, int, float]]:
    """Every path under root with its content hash (or link target), mode and mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = (os.readlink(path), 0, 0.0)
        elif path.is_file():
            stat = path.stat()
            found[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mode & 0o7777, stat.st_mtime)
        else:
            found[rel] = ("dir", 0, 0.0)
    return found


def checkpoints(root: Path) -> list[Path]:
    base = root / "var/backups/motorcade-leadgen"
    return sorted(base.iterdir()) if base.exists() else []


def test_installs_every_file_with_its_mode_and_enables_the_timer(source: Path, root: Path) -> None:
    """Script 0755, units 0644, env files 0640, timer and API unit enabled by symlink."""
    install(source, root)
    for rel, mode in {**WATCHDOG_FILES, **OTHER_FILES}.items():
        assert (root / rel).stat().st_mode & 0o777 == mode, rel
    assert (root / "usr/local/lib/motorcade-leadgen/leadgen_watchdog.py").read_bytes() == (
        REPO / "leadgen_watchdog.py"
    ).read_bytes()
    timer_link = root / UNIT_DIR / "timers.target.wants/motorcade-leadgen-watchdog.timer"
    api_link = root / UNIT_DIR / "multi-user.target.wants/motorcade-leadgen-api.service"
    assert os.readlink(timer_link) == "/etc/systemd/system/motorcade-leadgen-watchdog.timer"
    assert os.readlink(api_link) == "/etc/systemd/system/motorcade-leadgen-api.service"
    assert list((root / "usr/local/lib/motorcade-leadgen/__pycache__").glob("leadgen_watchdog.*.pyc"))


def test_list_prints_the_managed_files_table(source: Path, root: Path) -> None:
    """--list: source, destination, mode and role of every managed file; an install puts each one there."""
    rows = installtree.managed(source)
    assert {row.role for row in rows} == {
        "code",
        "unit",
        "timer",
        "api-unit",
        "doc",
        "config",
        "sysusers",
        "polkit",
        "root-mode",
        "subid",
        "metrics",
    }
    for rel, mode in {**WATCHDOG_FILES, **OTHER_FILES}.items():
        assert any(row.dest == rel and row.mode == mode for row in rows), rel
    install(source, root)
    for row in installtree.installed_here(source=source):
        assert (root / row.dest).stat().st_mode & 0o7777 == row.mode, row.dest


def test_installed_entry_point_runs_the_installed_module(source: Path, root: Path) -> None:
    """The launcher imports from /usr/local/lib/motorcade-leadgen; its shebang is /usr/bin/python3 -I."""
    install(source, root)
    launcher = (root / "usr/local/sbin/leadgen-watchdog").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    assert 'sys.path.insert(0, "/usr/local/lib/motorcade-leadgen")' in launcher
    moved = launcher.replace("/usr/local/lib/motorcade-leadgen", str(root / "usr/local/lib/motorcade-leadgen"))
    proc = subprocess.run(["/usr/bin/python3", "-I", "-c", moved, "--version"], capture_output=True, text=True)
    assert "leadgen_watchdog.py 2." in proc.stdout


def test_second_run_changes_nothing(source: Path, root: Path) -> None:
    """A re-run with nothing new says so and touches no file, link or checkpoint."""
    install(source, root)
    before = snapshot(root)
    proc = install(source, root)
    assert "nothing to change" in proc.stdout
    assert snapshot(root) == before


def test_operator_env_files_are_kept_and_a_changed_template_is_reported(source: Path, root: Path) -> None:
    """Env files are installed only where absent; a new template is announced, not applied."""
    install(source, root)
    api_env = root / "etc/motorcade-leadgen/api.env"
    api_env.write_text("LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.2.3\n")
    (source / "units/api.env").write_text((source / "units/api.env").read_text() + "LEADGEN_NEW_SETTING=1\n")
    proc = install(source, root)
    assert api_env.read_text() == "LEADGEN_IMAGE=localhost/motorcade-leadgen-api:1.2.3\n"
    assert "kept /etc/motorcade-leadgen/api.env (yours); the shipped template changed" in proc.stdout


def ship_new_version(source: Path) -> None:
    script = source / "leadgen_watchdog.py"
    script.write_text(re.sub(r'VERSION = "[^"]*"', 'VERSION = "9.9.9"', script.read_text(), count=1))
    timer = source / "units/motorcade-leadgen-watchdog.timer"
    timer.write_text(timer.read_text().replace("OnUnitActiveSec=30s", "OnUnitActiveSec=20s"))


def test_checkpoint_holds_the_previous_bytes_and_rollback_restores_them(source: Path, root: Path) -> None:
    """An update first saves every managed file and the enablement; --rollback puts them back exactly."""
    install(source, root)
    old = snapshot(root)
    ship_new_version(source)
    install(source, root)
    latest = checkpoints(root)[-1]
    manifest = (latest / "MANIFEST").read_text().splitlines()
    assert manifest[:2] == ["motorcade-leadgen-checkpoint 1", "run install"]
    assert "enablement motorcade-leadgen-watchdog.timer enabled" in manifest
    assert manifest[-1] == "complete"
    for row in installtree.installed_here():
        if row.role == "subid":  # shared with useradd: edited by line, never copied
            assert f"file /{row.dest}" not in manifest, row.dest
            continue
        assert f"file /{row.dest}" in manifest, row.dest
        assert (latest / "files" / row.dest).stat().st_mode & 0o7777 == row.mode, row.dest
    kept = latest / "files/etc/systemd/system/motorcade-leadgen-watchdog.timer"
    assert "OnUnitActiveSec=30s" in kept.read_text()
    assert "OnUnitActiveSec=20s" in (root / UNIT_DIR / "motorcade-leadgen-watchdog.timer").read_text()

    proc = install(source, root, "--rollback")
    assert "rolled back to" in proc.stdout
    restored = snapshot(root)
    for rel in WATCHDOG_FILES:
        assert restored[rel][:2] == old[rel][:2], rel


@pytest.mark.parametrize("named", [False, True], ids=["plain", "named"])
def test_rule7_rollback_never_undoes_the_first_install(source: Path, root: Path, named: bool) -> None:
    """--rollback (plain, or naming the first install's checkpoint) after one install: refused, that is
    --uninstall; exit 1, one line, nothing changed."""
    install(source, root)
    before = snapshot(root)
    first = checkpoints(root)[0].name
    proc = install(source, root, "--rollback", *([first] if named else []), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--uninstall" in proc.stderr and proc.stderr.count("\n") == 1
    assert snapshot(root) == before


def test_uninstall_removes_the_watchdog_and_leaves_the_api(source: Path, root: Path) -> None:
    """--uninstall: timer, service, script gone and disabled; API unit and env files stay; undoable."""
    install(source, root)
    installed = snapshot(root)
    install(source, root, "--uninstall")
    for rel in WATCHDOG_FILES:
        assert not (root / rel).exists(), rel
    assert not (root / "usr/local/lib/motorcade-leadgen").exists()
    assert not (root / UNIT_DIR / "timers.target.wants/motorcade-leadgen-watchdog.timer").exists()
    for rel in OTHER_FILES:
        if "/share/doc/" not in rel:  # the docs go with the watchdog
            assert (root / rel).exists(), rel
        else:
            assert not (root / rel).exists(), rel
    assert not (root / "usr/local/share/doc/motorcade-leadgen").exists()
    assert "nothing to remove" in install(source, root, "--uninstall").stdout
    install(source, root, "--rollback")
    for rel in WATCHDOG_FILES:
        assert snapshot(root)[rel][:2] == installed[rel][:2], rel
    assert (root / UNIT_DIR / "timers.target.wants/motorcade-leadgen-watchdog.timer").is_symlink()


@pytest.mark.parametrize("args", [(), ("--uninstall",), ("--rollback",)], ids=["install", "uninstall", "rollback"])
def test_dry_run_changes_nothing(source: Path, root: Path, args: tuple[str, ...]) -> None:
    """--dry-run prints the actions it would take and leaves the tree as it was."""
    install(source, root)
    ship_new_version(source)
    install(source, root)
    unit = source / "units/motorcade-leadgen-watchdog.service"
    unit.write_text(unit.read_text().replace("Description=", "Description=v3 "))
    before = snapshot(root)
    proc = install(source, root, "--dry-run", *args)
    assert "would " in proc.stdout
    assert snapshot(root) == before


def test_dry_run_of_a_first_install_lists_every_file(source: Path, root: Path) -> None:
    """On an empty root, --dry-run names every file and the enable, and writes nothing."""
    proc = install(source, root, "--dry-run")
    for rel in WATCHDOG_FILES:
        assert f"/{rel}" in proc.stdout
    assert "enable motorcade-leadgen-watchdog.timer" in proc.stdout
    assert list(root.iterdir()) == []


def test_a_unit_with_a_warning_is_never_installed(source: Path, root: Path) -> None:
    """systemd-analyze verify printing anything stops the install before a file is written."""
    unit = source / "units/motorcade-leadgen-watchdog.service"
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nRestartSecs=5\n"))
    proc = install(source, root, check=False)
    assert proc.returncode == 1
    assert "RestartSecs" in proc.stderr
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["--bogus"], 2, "unknown option: --bogus", id="unknown-flag"),
        pytest.param(["--rollback", "19990101T000000Z"], 1, "no checkpoint 19990101T000000Z", id="missing-checkpoint"),
        pytest.param(["--rollback"], 1, "no checkpoint under", id="no-checkpoints-at-all"),
        pytest.param(["--restart-api"], 2, "--restart-api goes with a live install only", id="restart-api-offline"),
        pytest.param(["--rollback", "--uninstall"], 2, "exclude each other", id="rollback-and-uninstall"),
        pytest.param(["--uninstall", "--rollback"], 2, "exclude each other", id="uninstall-and-rollback"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(source: Path, root: Path, args: list[str], code: int, message: str) -> None:
    """Bad input: one clear line on stderr, a non-zero exit, nothing written."""
    proc = install(source, root, *args, check=False)
    assert proc.returncode == code
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert list(root.iterdir()) == []


def test_root_directory_must_exist(source: Path, tmp_path: Path) -> None:
    """--root naming no directory is a usage error."""
    proc = install(source, tmp_path / "missing", check=False)
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_live_install_refuses_without_root_or_systemd(source: Path) -> None:
    """Live mode: not root, or no running systemd, stops in preflight with one line."""
    import tempfile

    with tempfile.TemporaryDirectory() as public:  # readable by nobody, unlike tmp_path
        os.chmod(public, 0o755)
        script = shutil.copy(source / "install.sh", public)
        nobody = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", script],
            capture_output=True,
            text=True,
        )
    assert nobody.returncode == 1 and "must run as root" in nobody.stderr
    if not Path("/run/systemd/system").exists():
        proc = subprocess.run(["sh", str(source / "install.sh")], capture_output=True, text=True)
        assert proc.returncode == 1 and "systemd is not running here" in proc.stderr


@pytest.mark.parametrize("tool", ["shellcheck", "dash"])
def test_install_sh_is_clean_posix_sh(tool: str) -> None:
    """shellcheck -s sh reports nothing; dash parses it."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    argv = ["shellcheck", "-s", "sh", "install.sh"] if tool == "shellcheck" else ["dash", "-n", "install.sh"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


# --- the watchdog's identity and the API's subordinate IDs ---------------------------

ROOT_MODE = f"{UNIT_DIR}/motorcade-leadgen-watchdog.service.d/50-root-mode.conf"
POLKIT_RULE = "etc/polkit-1/rules.d/50-motorcade-leadgen-watchdog.rules"
SYSUSERS = "etc/sysusers.d/motorcade-leadgen-watchdog.conf"
RANGE = "containers:2147483647:2147483648\n"


def test_without_polkitd_the_watchdog_keeps_the_sandboxed_root_mode_and_says_so_once(source: Path, root: Path) -> None:
    """No polkitd in the root: a drop-in empties User= and Group=, one warning, no polkit rule; a re-run is silent."""
    proc = install(source, root)
    assert proc.stderr.count("polkitd not found") == 1, proc.stderr
    dropin = (root / ROOT_MODE).read_text()
    assert "[Service]\nUser=\nGroup=\n" in dropin
    assert not (root / POLKIT_RULE).exists() and (root / SYSUSERS).is_file()
    again = install(source, root)
    assert "nothing to change" in again.stdout and "polkitd" not in again.stdout + again.stderr


def test_with_polkitd_the_rule_replaces_the_root_mode_and_a_rollback_returns_it(source: Path, root: Path) -> None:
    """polkitd appears: the next run installs the rule, removes the drop-in; --rollback restores both."""
    install(source, root)
    before = snapshot(root)
    installtree.add_polkitd(root)
    proc = install(source, root)
    assert "now runs as motorcade-leadgen-watchdog" in proc.stdout
    assert not (root / ROOT_MODE).exists()
    assert (root / POLKIT_RULE).read_bytes() == (source / "units/50-motorcade-leadgen-watchdog.rules").read_bytes()
    install(source, root, "--rollback")
    after = snapshot(root)
    assert after[ROOT_MODE] == before[ROOT_MODE] and POLKIT_RULE not in after


def test_uninstall_removes_the_rule_the_user_file_and_the_subordinate_ids_it_added(source: Path, root: Path) -> None:
    """--uninstall takes the watchdog's rule and sysusers file, and the /etc/subuid line install.sh added (issue 19
    rule 3); the API unit stays."""
    installtree.add_polkitd(root)
    install(source, root)
    assert (root / "etc/subuid").read_text() == RANGE
    install(source, root, "--uninstall")
    assert not (root / POLKIT_RULE).exists() and not (root / SYSUSERS).exists()
    assert (root / "etc/subuid").read_text() == ""
    assert (root / "etc/systemd/system/motorcade-leadgen-api.service").exists()


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("alice:100000:65536", id="no-final-newline"),
        pytest.param("alice:100000:65536\n", id="other-users"),
    ],
)
def test_the_containers_range_is_added_once_and_kept_by_a_rollback(source: Path, root: Path, before) -> None:
    """/etc/subuid and /etc/subgid gain the containers range after what was there; a rollback leaves the line."""
    (root / "etc").mkdir()
    for name in ("subuid", "subgid"):
        if before is not None:
            (root / "etc" / name).write_text(before)
    install(source, root)
    for name in ("subuid", "subgid"):
        kept = (before or "") + ("\n" if before and not before.endswith("\n") else "")
        assert (root / "etc" / name).read_text() == kept + RANGE, name
    ship_new_version(source)
    install(source, root)
    install(source, root, "--rollback")
    for name in ("subuid", "subgid"):
        assert (root / "etc" / name).read_text() == kept + RANGE, name


def test_an_existing_containers_range_is_never_touched(source: Path, root: Path) -> None:
    """A containers line already there, whatever its range and mode: the file is not rewritten."""
    (root / "etc").mkdir()
    for name in ("subuid", "subgid"):
        (root / "etc" / name).write_text("containers:1000000:65536\n")
        (root / "etc" / name).chmod(0o600)
    old = snapshot(root)
    install(source, root)
    new = snapshot(root)
    for name in ("subuid", "subgid"):
        assert new[f"etc/{name}"] == old[f"etc/{name}"], name


def test_a_launcher_that_cannot_load_the_module_exits_3_at_priority_err(source: Path, root: Path) -> None:
    """A module that cannot be imported is exit 3 with one <3> line (exit 1 would be "handled" under the unit,
    and a traceback at info falls below its LogLevelMax=notice)."""
    install(source, root)
    launcher = root / "usr/local/sbin/leadgen-watchdog"
    # The launcher names the live /usr/local/lib, where no module is on this test host.
    assert not Path("/usr/local/lib/motorcade-leadgen/leadgen_watchdog.py").exists()
    proc = subprocess.run([sys.executable, "-I", str(launcher), "check"], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("<3>leadgen-watchdog: cannot load ") and proc.stderr.count("\n") == 1
