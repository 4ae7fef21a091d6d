"""install.sh turns the metrics on where node_exporter's textfile directory is (issue 21, part 1).

The watchdog writes its textfile in its own runtime directory; install.sh adds
a drop-in saying so and a root-owned symlink in node_exporter's directory. The
last test runs the real node_exporter as its Debian user, prometheus, through
that link.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import exporter
import installtree
import pytest
import yaml
from exporter import scrape, start_node_exporter
from installtree import listing, run
from pytest_httpserver import HTTPServer
from support import HEALTH, FakeSystemctl

import leadgen_watchdog as wd

TEXTFILE_DIR = "var/lib/prometheus/node-exporter"
LINK = f"{TEXTFILE_DIR}/motorcade-leadgen.prom"
DROPIN = "etc/systemd/system/motorcade-leadgen-watchdog.service.d/60-metrics.conf"
METRICS_FILE = "/run/motorcade-leadgen-watchdog/leadgen.prom"
HINT = "metrics: off, no node_exporter textfile directory"
BACKUPS = "var/backups"


def with_node_exporter(root: Path) -> Path:
    """A root that looks like a Debian host with prometheus-node-exporter: its textfile directory, root:root 0755."""
    directory = root / TEXTFILE_DIR
    directory.mkdir(parents=True)
    return directory


def env(**values: str) -> dict[str, str]:
    return {**os.environ, **values}


def test_with_node_exporter_the_watchdog_writes_in_its_runtime_directory_and_a_link_points_there(
    source: Path, root: Path
) -> None:
    """The drop-in sets the metrics file and a 0711 runtime directory; the link is root's; a re-run changes nothing."""
    with_node_exporter(root)
    proc = run(source, root)
    assert HINT not in proc.stdout
    link = root / LINK
    assert link.is_symlink() and os.readlink(link) == METRICS_FILE
    assert link.lstat().st_uid == 0
    dropin = (root / DROPIN).read_text()
    assert f"\nEnvironment=LEADGEN_WATCHDOG_METRICS_FILE={METRICS_FILE}\n" in dropin
    assert "\nRuntimeDirectoryMode=0711\n" in dropin
    assert (root / DROPIN).stat().st_mode & 0o7777 == 0o644
    before = listing(root)
    again = run(source, root)
    assert "nothing to change" in again.stdout
    assert listing(root) == before


def test_dry_run_shows_the_link_and_changes_nothing(source: Path, root: Path) -> None:
    """--dry-run names the link and the drop-in it would place, and places neither."""
    with_node_exporter(root)
    before = listing(root)
    proc = run(source, root, "--dry-run")
    assert "would run: cp -P -- " in proc.stdout and f"/{LINK}.new" in proc.stdout
    assert f"/{DROPIN}.new" in proc.stdout
    assert listing(root) == before


def test_uninstall_removes_the_link_and_rollback_restores_it(source: Path, root: Path) -> None:
    """--uninstall removes link and drop-in (node_exporter's directory stays); --rollback puts both back."""
    textfile_dir = with_node_exporter(root)
    run(source, root)
    run(source, root, "--uninstall")
    assert not (root / LINK).is_symlink() and not (root / DROPIN).exists()
    assert textfile_dir.is_dir() and list(textfile_dir.iterdir()) == []
    run(source, root, "--rollback")
    assert os.readlink(root / LINK) == METRICS_FILE and (root / DROPIN).is_file()


def test_without_the_textfile_directory_it_says_once_how_to_turn_metrics_on(source: Path, root: Path) -> None:
    """No node_exporter: no link, no drop-in, one line saying how on the first install; a re-run is silent."""
    first = run(source, root)
    assert first.stdout.count(HINT) == 1
    assert "apt-get install prometheus-node-exporter, then run install.sh again" in first.stdout
    assert not (root / DROPIN).exists() and not (root / "var/lib/prometheus").exists()
    assert HINT not in run(source, root).stdout
    with_node_exporter(root)
    run(source, root)
    assert os.readlink(root / LINK) == METRICS_FILE


def test_leadgen_metrics_off_removes_the_link_and_drop_in(source: Path, root: Path) -> None:
    """The opt-out: LEADGEN_METRICS=off takes both away (said once), and a plain run puts them back."""
    with_node_exporter(root)
    run(source, root)
    proc = run(source, root, env=env(LEADGEN_METRICS="off"))
    assert proc.stdout.count("metrics: off (LEADGEN_METRICS=off)") == 1
    assert not (root / LINK).is_symlink() and not (root / DROPIN).exists()
    assert "nothing to change" in run(source, root, env=env(LEADGEN_METRICS="off")).stdout
    run(source, root)
    assert os.readlink(root / LINK) == METRICS_FILE


@pytest.mark.parametrize("value", ["", "no", "ON", "off\n"])
def test_leadgen_metrics_other_values_are_refused(source: Path, root: Path, value: str) -> None:
    """Anything but on or off: exit 2, one line naming the variable, nothing written."""
    with_node_exporter(root)
    before = listing(root)
    proc = run(source, root, env=env(LEADGEN_METRICS=value), check=False)
    if value == "":
        assert proc.returncode == 0  # empty is unset: the default, on
        return
    assert proc.returncode == 2
    assert "LEADGEN_METRICS must be on or off" in proc.stderr and proc.stderr.count("\n") == 1
    assert listing(root) == before


# The real node_exporter, as its own user, through the link


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory user prometheus can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="leadgen-metrics-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@contextlib.contextmanager
def node_exporter_as_prometheus(textfile_dir: Path, base: Path, monkeypatch: pytest.MonkeyPatch):
    """The real node_exporter, dropped to Debian's prometheus user as its packaged unit runs it."""
    if subprocess.run(["id", "prometheus"], capture_output=True).returncode != 0:
        pytest.skip("no user prometheus (Debian package prometheus-node-exporter)")
    wrapper = base / "node-exporter-as-prometheus"
    wrapper.write_text(
        "#!/bin/sh\nexec setpriv --reuid=prometheus --regid=prometheus --clear-groups "
        '/usr/bin/prometheus-node-exporter "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(exporter, "NODE_EXPORTER", str(wrapper))
    with start_node_exporter(textfile_dir, base / "node_exporter.log") as running:
        yield running


def test_node_exporter_as_prometheus_serves_the_watchdogs_samples_through_the_link(
    source: Path,
    root: Path,
    public_dir: Path,
    httpserver: HTTPServer,
    systemctl: FakeSystemctl,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The installed link shape, a run of the real watchdog, node_exporter as prometheus: the samples arrive.

    With the runtime directory at 0700 (no drop-in) node_exporter cannot follow the link: that is why the
    drop-in sets 0711."""
    with_node_exporter(root)
    run(source, root)
    mode = int(re.search(r"^RuntimeDirectoryMode=(\d+)$", (root / DROPIN).read_text(), re.MULTILINE).group(1), 8)
    target = os.readlink(root / LINK)
    # The same layout under public_dir: node_exporter's directory, and the watchdog's runtime directory.
    textfile_dir = public_dir / TEXTFILE_DIR
    textfile_dir.mkdir(parents=True, mode=0o755)
    for parent in textfile_dir.parents:
        if parent == public_dir:
            break
        parent.chmod(0o755)
    runtime = public_dir / Path(target).parent.relative_to("/")
    runtime.mkdir(parents=True)
    runtime.parent.chmod(0o755)
    runtime.chmod(mode)
    metrics_file = runtime / Path(target).name
    os.symlink(metrics_file, textfile_dir / Path(LINK).name)

    httpserver.expect_request(HEALTH).respond_with_data("ok")
    flags = ["--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path]
    state = ["--state-file", str(runtime / "state.json"), "--metrics-file", str(metrics_file)]
    assert wd.main(["run", *flags, *state], environ={}) == wd.OK
    assert (runtime / "state.json").stat().st_mode & 0o777 == 0o600

    with node_exporter_as_prometheus(textfile_dir, public_dir, monkeypatch) as exporter_:
        samples = scrape(exporter_.metrics_url)
        assert samples[("leadgen_watchdog_probe_success", frozenset())] == 1
        assert samples[("node_textfile_scrape_error", frozenset())] == 0
        runtime.chmod(0o700)
        samples = scrape(exporter_.metrics_url)
        assert samples[("node_textfile_scrape_error", frozenset())] == 1
        assert not [key for key in samples if key[0].startswith("leadgen_")]


PLAYBOOK = installtree.REPO / "ansible/playbooks/LEADGEN_04_wave2_runtime_hardening.yml"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param([], "on", id="default-on"),
        pytest.param(["-e", "leadgen_metrics=true"], "on", id="true"),
        pytest.param(["-e", "leadgen_metrics=false"], "off", id="false"),
        pytest.param(["-e", '{"leadgen_metrics": false}'], "off", id="json-false"),
    ],
)
def test_playbook_maps_leadgen_metrics_to_install_sh(extra: list[str], expected: str) -> None:
    """The playbook's one opt-out: its install.sh task gets LEADGEN_METRICS=on unless leadgen_metrics is false."""
    if shutil.which("ansible") is None:
        pytest.skip("ansible not installed (requirements-dev.txt)")
    plays = yaml.safe_load(PLAYBOOK.read_text())
    tasks = [task for block in plays[0]["tasks"] for task in block.get("block", [block])]
    (task,) = [task for task in tasks if task["name"].startswith("Run install.sh (")]
    template = task["environment"]["LEADGEN_METRICS"]
    proc = subprocess.run(
        ["ansible", "localhost", "-c", "local", "-m", "ansible.builtin.debug", "-a", f"msg={template}", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'"msg": "{expected}"' in proc.stdout


def test_a_directory_where_the_link_goes_fails_the_run_and_is_left_alone(source: Path, root: Path) -> None:
    """A directory at the link's name: the link is not dropped inside it; exit 1 naming it, nothing changed."""
    link_dir = root / LINK
    link_dir.mkdir(parents=True)
    before = listing(root)
    proc = run(source, root, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"ERROR: {link_dir} is a directory, where the metrics link goes: move it away and run again; nothing changed\n"
    )
    assert listing(root) == before


def test_a_hand_typed_pause_records_its_end_in_the_textfile_the_link_serves(
    source: Path, root: Path, tmp_path: Path, httpserver: HTTPServer, systemctl: FakeSystemctl
) -> None:
    """The installed command starts from the metrics file the unit's drop-in sets (below watchdog.env), so
    `leadgen-watchdog pause` then stopping the timer leaves a sample that silences LeadgenWatchdogDown."""
    with_node_exporter(root)
    run(source, root)
    launcher = (root / "usr/local/sbin/leadgen-watchdog").read_text()
    site = re.search(r"main\(site=(\{.*\})\)", launcher)
    assert site is not None, launcher
    settings = eval(site.group(1))  # noqa: S307 - a dict literal install.sh wrote
    assert settings == {"LEADGEN_WATCHDOG_METRICS_FILE": METRICS_FILE}
    prom = tmp_path / "leadgen.prom"  # the same precedence, on a file of this test's
    local = {"LEADGEN_WATCHDOG_METRICS_FILE": str(prom)}
    flags = ["--state-file", str(tmp_path / "state.json")]
    httpserver.expect_request(HEALTH).respond_with_data("ok")
    probe = ["run", "--url", httpserver.url_for(HEALTH), "--systemctl", systemctl.path, *flags]
    assert wd.main(probe, environ={}, env_file=str(tmp_path / "none.env"), site=local) == 0
    assert "leadgen_watchdog_pause_end_timestamp_seconds 0\n" in prom.read_text()
    assert wd.main(["pause", "1h", *flags], environ={}, env_file=str(tmp_path / "none.env"), site=local) == 0
    assert "leadgen_watchdog_pause_end_timestamp_seconds 0\n" not in prom.read_text()
    env_file = tmp_path / "watchdog.env"
    env_file.write_text(f"LEADGEN_WATCHDOG_METRICS_FILE={tmp_path / 'chosen.prom'}\n")
    assert wd.main(["resume", *flags], environ={}, env_file=str(env_file), site=local) == 0
    assert (tmp_path / "chosen.prom").exists(), "watchdog.env wins over the installer's default"
    plain = tmp_path / "plain"
    plain.mkdir()
    run(source, plain)  # no node_exporter: no default
    assert "main(site={})" in (plain / "usr/local/sbin/leadgen-watchdog").read_text()


@pytest.mark.parametrize("planted", ["link", "link.new"])
def test_a_link_to_a_directory_where_the_metrics_link_goes_is_replaced_not_followed(
    source: Path, root: Path, planted: str
) -> None:
    """A symlink to a directory at the link's name (or at its temporary name) is replaced: nothing is written
    into the directory it points to, and the metrics link is in place."""
    directory = with_node_exporter(root)
    victim = root / "victim"
    victim.mkdir()
    name = "motorcade-leadgen.prom" + (".new" if planted == "link.new" else "")
    (directory / name).symlink_to(victim)
    run(source, root)
    assert list(victim.iterdir()) == []
    link = root / LINK
    assert link.is_symlink() and os.readlink(link) == METRICS_FILE
    assert not (directory / "motorcade-leadgen.prom.new").exists()
