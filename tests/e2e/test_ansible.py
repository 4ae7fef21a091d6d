"""The Ansible playbook end to end: the real ansible-playbook, run with `-c local`
inside a booted real systemd, ships the project, drives install.sh and gates
each host on GET /lead/health.

One machine serves the whole module (a boot and an image import cost seconds).
The `deployed` fixture runs the story's start once and records it: a --check
--diff on the fresh host, the first apply, the second apply. Every later test
leaves the host as it found it: deployed, healthy, sources as shipped.

Test-only, none in the playbook: the API unit's ExecStart is the stand-in
(harness.STANDIN, a drop-in), since the unit needs podman and an image; the
image itself is real, imported into a vfs store (podman's overlay storage
cannot sit on the container's overlay) so that install.sh's `podman image
exists` check passes; the inventory names the booted machine as local hosts.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import pytest
import testimage
import yaml
from harness import API, PROJECT, REPO, STANDIN, TIMER, copy_project, require_or_skip, set_mode
from machine import Machine, unavailable

BIN = Path(sys.executable).parent  # ansible-core is pip-installed beside the interpreter running pytest
ANSIBLE_DIR = f"{PROJECT}/ansible"
PLAYBOOK = "playbooks/LEADGEN_04_wave2_runtime_hardening.yml"
VAULT = REPO / "ansible/inventories/example/group_vars/leadgen/vault.yml"
PASSWORD = REPO / "ansible/vault-test-password"
GROUP_VARS = yaml.safe_load((REPO / "ansible/inventories/example/group_vars/leadgen/main.yml").read_text())
HOST = "lg-e2e-1"
OTHER = "lg-e2e-2"
LOCAL = "ansible_connection=local ansible_python_interpreter=/usr/bin/python3 ansible_become_method=su"
API_UNIT_PATH = f"/etc/systemd/system/{API}"
SOURCE_UNIT = f"{PROJECT}/units/{API}"
APP_ENV = "/etc/motorcade-leadgen/app.env"
API_ENV = "/etc/motorcade-leadgen/api.env"
# Everything the playbook or install.sh may write.
MANAGED = (
    "/etc/systemd/system /etc/motorcade-leadgen /usr/local/lib/motorcade-leadgen /usr/local/sbin/leadgen-watchdog"
    " /usr/local/share/doc/motorcade-leadgen /var/backups/motorcade-leadgen /opt/motorcade-leadgen"
)
GATE = "Wait until GET /lead/health answers 2xx"
RENDER = "Render the application env from the vault"
INSTALL = "Run install.sh (--plan under --check)"
PLAN_SHOWN = "Show install.sh's plan and how each file would change (--diff)"
SHOWN = "Show what install.sh did, or would do"
POLKITD = "/usr/lib/polkit-1/polkitd"
ROOT_MODE = "/etc/systemd/system/motorcade-leadgen-watchdog.service.d/50-root-mode.conf"
POLKIT_RULE = "/etc/polkit-1/rules.d/50-motorcade-leadgen-watchdog.rules"
RESTARTED = f"+ systemctl restart {API}"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


class Run(NamedTuple):
    rc: int
    out: str
    recap: dict[str, dict[str, int]]  # host -> ok, changed, unreachable, failed
    seconds: float


def vault_plaintext() -> dict[str, str]:
    """The test vault, decrypted on the host with the committed test-only password."""
    out = subprocess.run(
        [str(BIN / "ansible-vault"), "view", "--vault-password-file", str(PASSWORD), str(VAULT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return yaml.safe_load(out)["vault_leadgen_app_env"]


SECRETS = vault_plaintext() if (BIN / "ansible-vault").exists() else {}
NEW_SECRET = "e2e-rotated-secret-9b27d1"  # noqa: S105 (test data) given to a --check run: never written or printed


def ansible_unavailable() -> str:
    for tool in ("ansible-playbook", "ansible-vault"):
        if not (BIN / tool).exists():
            return f"{tool} not installed beside {sys.executable} (pip install -r requirements-dev.txt)"
    return ""


def play(box: Machine, *args: str, inventory: str = "e2e", expect_rc: Optional[int] = 0) -> Run:
    """ansible-playbook inside the machine; no output of any run may contain a secret."""
    argv = [
        str(BIN / "ansible-playbook"),
        "-i",
        f"inventories/{inventory}/hosts.ini",
        PLAYBOOK,
        "--vault-password-file",
        "vault-test-password",
        "-e",
        "leadgen_health_delay=1",
        *args,
    ]
    env = "env ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 LC_ALL=C.UTF-8 HOME=/root"
    started = time.monotonic()
    proc = box.sh(f"cd {ANSIBLE_DIR} && {env} {shlex.join(argv)}", check=False, timeout=600)
    seconds = time.monotonic() - started
    print(f"ansible-playbook -i {inventory} {' '.join(args)}: exit {proc.returncode} in {seconds:.1f}s")
    out = proc.stdout + proc.stderr
    for name, secret in [*SECRETS.items(), ("rotated", NEW_SECRET)]:
        assert secret not in out, f"the secret {name} appears in ansible's output"
    if expect_rc is not None:
        assert proc.returncode == expect_rc, out
    recap = {
        m[1]: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()[1:])))
        for m in RECAP.finditer(out)
    }
    return Run(proc.returncode, out, recap, seconds)


def task_output(run: Run, task: str) -> str:
    """The result lines of every run of the task named, without its banner."""
    parts = run.out.split("PLAY RECAP")[0].split("\nTASK [")
    return "".join(part.split("\n", 1)[1] for part in parts[1:] if part.startswith(task + "]"))


def recap_text(run: Run) -> str:
    return run.out[run.out.rindex("PLAY RECAP") :].strip()


def listing(box: Machine) -> str:
    """Paths, modes, sizes, mtimes and hashes of every file the deploy may touch, plus /tmp's leftovers."""
    return box.sh(
        f"find {MANAGED} -printf '%p %m %s %T@\\n' 2>/dev/null | sort;"
        f" find {MANAGED} -type f -exec sha256sum {{}} + 2>/dev/null | sort; ls -d /tmp/leadgen-check.* 2>/dev/null",
        check=False,
    ).stdout


def invocation(box: Machine) -> str:
    return box.show(API, "InvocationID")["InvocationID"]


def app_env_block(values: dict[str, str]) -> str:
    lines = "".join(f"{name}={value}\n" for name, value in values.items())
    marker = "motorcade-leadgen application env: managed by Ansible from the vault"
    return f"# BEGIN {marker}\n{lines}# END {marker}\n"


@pytest.fixture(scope="module")
def box() -> Iterator[Machine]:
    """One booted systemd for the module: the project and the playbook copied in, the test image imported."""
    reason = unavailable() or testimage.unavailable() or ansible_unavailable()
    if reason:
        require_or_skip(reason)
    machine = Machine()
    try:
        machine.boot()
        copy_project(machine)
        ansible = machine.root / ANSIBLE_DIR.lstrip("/")
        shutil.copytree(REPO / "ansible", ansible)
        for name, hosts in (("e2e", [HOST]), ("e2e-fleet", [HOST, OTHER])):
            shutil.copytree(ansible / "inventories/example/group_vars", ansible / f"inventories/{name}/group_vars")
            lines = "".join(f"{host} {LOCAL}\n" for host in hosts)
            (ansible / f"inventories/{name}/hosts.ini").write_text(f"[leadgen]\n{lines}")
        machine.write_host(
            "/etc/containers/storage.conf", testimage.storage_conf("/var/lib/e2e-store", "/run/e2e-store")
        )
        shutil.copy(testimage.build_tar(machine.base), machine.root / "opt/leadgen-image.tar")
        machine.sh(shlex.join(testimage.import_argv("/opt/leadgen-image.tar")))
        assert testimage.IMAGE == GROUP_VARS["leadgen_image"]
        machine.write_host(f"/etc/systemd/system/{API}.d/50-standin.conf", STANDIN)
        machine.sh("systemctl daemon-reload")
        set_mode(machine, "healthy")
        yield machine
    finally:
        machine.close()


class Story(NamedTuple):
    fresh_before: str
    fresh_check: Run
    fresh_after: str
    first: Run
    second: Run
    invocations: tuple[str, str]


@pytest.fixture(scope="module")
def deployed(box: Machine) -> Story:
    """A --check --diff on the fresh host, the first apply, the second apply: recorded once."""
    fresh_before = listing(box)
    fresh_check = play(box, "--check", "--diff")
    fresh_after = listing(box)
    first = play(box)
    after_first = invocation(box)
    second = play(box)
    print(f"\nfirst apply ({first.seconds:.1f}s):\n{recap_text(first)}")
    print(f"second apply ({second.seconds:.1f}s):\n{recap_text(second)}")
    return Story(fresh_before, fresh_check, fresh_after, first, second, (after_first, invocation(box)))


def test_check_diff_on_a_fresh_host_changes_nothing(box: Machine, deployed: Story) -> None:
    """--check runs install.sh --plan from a scratch copy: it reports changes, shows diffs, writes nothing."""
    run = deployed.fresh_check
    assert deployed.fresh_after == deployed.fresh_before
    assert run.recap[HOST]["changed"] > 0 and run.recap[HOST]["failed"] == 0
    shown = task_output(run, SHOWN)
    assert '"+ /etc/systemd/system/motorcade-leadgen-watchdog.timer 0644 timer"' in shown
    assert '"set LEADGEN_IMAGE=' + GROUP_VARS["leadgen_image"] + '"' in shown
    assert '"+++ /etc/systemd/system/motorcade-leadgen-watchdog.timer"' in task_output(run, PLAN_SHOWN)
    assert '"+LEADGEN_IMAGE=' + GROUP_VARS["leadgen_image"] + '"' in task_output(run, PLAN_SHOWN)
    assert task_output(run, GATE).strip() == f"skipping: [{HOST}]"  # nothing was started, nothing to gate


def test_first_apply_installs_starts_the_api_and_passes_the_gate(box: Machine, deployed: Story) -> None:
    """A fresh host: files installed, the API unit swapped in and started with --restart-api, health 2xx."""
    run = deployed.first
    assert run.recap[HOST]["changed"] > 0 and run.recap[HOST]["failed"] == 0
    assert run.out.count(RESTARTED) == 1
    assert task_output(run, GATE).strip() == f"ok: [{HOST}]"
    assert box.sh(f"cat {API_UNIT_PATH}").stdout == (REPO / "units" / API).read_text()
    api = box.show(API, "ActiveState", "UnitFileState", "FragmentPath")
    assert api == {"ActiveState": "active", "UnitFileState": "enabled", "FragmentPath": API_UNIT_PATH}
    assert box.show(TIMER, "ActiveState", "UnitFileState") == {"ActiveState": "active", "UnitFileState": "enabled"}
    assert box.sh("/usr/local/sbin/leadgen-watchdog check").returncode == 0
    staged = box.sh("cmp /opt/leadgen/install.sh /opt/motorcade-leadgen/src/install.sh", check=False)
    assert staged.returncode == 0


def test_second_apply_changes_nothing(box: Machine, deployed: Story) -> None:
    """The installer says `nothing to change`, so the play ends changed=0 and the API keeps running."""
    run = deployed.second
    assert run.recap[HOST]["changed"] == 0 and run.recap[HOST]["failed"] == 0
    assert "nothing to change" in run.out
    assert task_output(run, GATE).strip() == f"ok: [{HOST}]"
    assert deployed.invocations[0] == deployed.invocations[1]


def test_vaulted_app_env_is_rendered_0600_and_never_printed(box: Machine, deployed: Story) -> None:
    """The vault is decrypted with the test password: app.env holds its values, mode 0600; no output shows them."""
    assert VAULT.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256\n")
    assert SECRETS and not any(value in VAULT.read_text() for value in SECRETS.values())
    assert box.sh(f"stat -c '%a %U %G' {APP_ENV}").stdout.strip() == "600 root root"
    assert box.sh(f"cat {APP_ENV}").stdout == app_env_block(SECRETS)
    assert box.sh(f"stat -c '%a %U %G' {API_ENV}").stdout.strip() == "640 root root"
    api_env = box.sh(f"cat {API_ENV}").stdout
    settings = {**GROUP_VARS["leadgen_api_settings"], "LEADGEN_IMAGE": GROUP_VARS["leadgen_image"]}
    for key, value in settings.items():
        assert f"\n{key}={value}\n" in api_env
    # A new file under --diff would show every line; no_log leaves only the verdict (play() checks every output).
    assert task_output(deployed.fresh_check, RENDER).strip() == f"changed: [{HOST}]"
    assert task_output(deployed.first, RENDER).strip() == f"changed: [{HOST}]"
    assert task_output(deployed.second, RENDER).strip() == f"ok: [{HOST}]"


def test_operator_lines_survive_and_a_changed_setting_restarts_the_api(box: Machine, deployed: Story) -> None:
    """The playbook owns its keys and its block only; a managed value it corrects restarts the API, once.

    One run over the two-host fleet (two inventory names, one machine) proves three things: the
    first host is corrected and restarted; serial 1 finishes it, gate and all, before the second
    starts; the second, applying to the corrected machine, changes nothing.
    """
    box.sh(
        f"echo 'LEADGEN_OPERATOR_NOTE=mine' >> {API_ENV}"
        f" && sed -i 's/^LEADGEN_MEMORY=.*/LEADGEN_MEMORY=999m/' {API_ENV}"
        f" && sed -i '1i OPERATOR_FLAG=kept' {APP_ENV}"
    )
    before = invocation(box)
    run = play(box, inventory="e2e-fleet")
    assert run.recap[HOST]["changed"] > 0 and run.recap[HOST]["failed"] == 0
    api_env = box.sh(f"cat {API_ENV}").stdout
    assert "\nLEADGEN_OPERATOR_NOTE=mine\n" in api_env
    assert "\nLEADGEN_MEMORY=512m\n" in api_env and "999m" not in api_env
    assert box.sh(f"cat {APP_ENV}").stdout == "OPERATOR_FLAG=kept\n" + app_env_block(SECRETS)
    assert invocation(box) != before
    # install.sh set the key (--set, in a checkpoint) and restarted the API, and nothing else did.
    shown = task_output(run, "Show what install.sh did, or would do")
    assert "env-set /etc/motorcade-leadgen/api.env LEADGEN_MEMORY=512m" in shown and "checkpoint: " in shown
    assert run.out.count(RESTARTED) == 1
    assert task_output(run, GATE).split() == ["ok:", f"[{HOST}]", "ok:", f"[{OTHER}]"]
    assert run.out.rindex(f"[{HOST}]") < run.out.index(f"[{OTHER}]")  # one host after the other
    assert run.recap[OTHER] == {"ok": run.recap[OTHER]["ok"], "changed": 0, "unreachable": 0, "failed": 0}


def test_rule13_check_diff_after_a_change_shows_the_installers_plan_and_changes_nothing(
    box: Machine, deployed: Story
) -> None:
    """A new image, a new unit, a new cap, a rotated secret: --check --diff reports changed with install.sh's own
    plan (the unit, the keys, the API's restart) and its diffs, hides the secret, and changes nothing on the host."""
    image = GROUP_VARS["leadgen_image"]
    new_image = image.rsplit(":", 1)[0] + ":e2e-next"
    box.sh(f"podman tag {image} {new_image}")
    box.sh(f"sed -i 's/^Description=.*/Description=LeadGen API, next release/' {SOURCE_UNIT}")
    box.write("/root/rotated.yml", yaml.safe_dump({"leadgen_app_env": {**SECRETS, "LEADGEN_SECRET_KEY": NEW_SECRET}}))
    settings = {**GROUP_VARS["leadgen_api_settings"], "LEADGEN_MEMORY": "768m"}
    try:
        before, api_before = listing(box), invocation(box)
        extra = json.dumps({"leadgen_api_settings": settings, "leadgen_image": new_image})
        run = play(box, "--check", "--diff", "-e", "@/root/rotated.yml", "-e", extra)
        assert listing(box) == before and invocation(box) == api_before
        assert run.recap[HOST]["changed"] > 0 and run.recap[HOST]["failed"] == 0
        assert task_output(run, INSTALL).strip() == f"changed: [{HOST}]"
        plan = json.loads(task_output(run, SHOWN).split("=>", 1)[1])["msg"]
        assert f"+ {API_UNIT_PATH} 0644 api-unit" in plan
        assert f"set LEADGEN_IMAGE={new_image}" in plan and "set LEADGEN_MEMORY=768m" in plan
        assert f"restart {API}" in plan  # the vault's change, the unit and the keys: install.sh --restart-api
        diff = json.loads(task_output(run, PLAN_SHOWN).split("=>", 1)[1])["msg"]
        assert f"--- {API_UNIT_PATH}" in diff and "+Description=LeadGen API, next release" in diff
        assert "-Description=Motorcade LeadGen API (podman container on 127.0.0.1:8000)" in diff
        assert ["-LEADGEN_MEMORY=512m", "+LEADGEN_MEMORY=768m"] == [d for d in diff if "LEADGEN_MEMORY=" in d][-2:]
        assert f"-LEADGEN_IMAGE={image}" in diff and f"+LEADGEN_IMAGE={new_image}" in diff
        assert task_output(run, RENDER).strip() == f"changed: [{HOST}]"
    finally:
        box.sh(f"rm -f /root/rotated.yml; podman untag {image} {new_image}")
        box.write(SOURCE_UNIT, (REPO / "units" / API).read_text())


def test_changed_unit_restarts_the_api_and_rollback_restores_it(box: Machine, deployed: Story) -> None:
    """A new API unit goes in with --restart-api behind the gate; -e leadgen_rollback=true puts the old one back.

    The next test applies the shipped sources again to the rolled-back host: install.sh finds
    nothing to change there and restarts nothing (one run proves that and the failing gate).
    """
    shipped = (REPO / "units" / API).read_text()
    box.sh(f"sed -i 's/^Description=.*/Description=LeadGen API, next release/' {SOURCE_UNIT}")
    try:
        before = invocation(box)
        run = play(box)
        assert "Description=LeadGen API, next release" in box.sh(f"cat {API_UNIT_PATH}").stdout
        assert run.out.count(RESTARTED) == 1 and task_output(run, GATE).strip() == f"ok: [{HOST}]"
        updated = invocation(box)
        assert updated != before

        listed = listing(box)
        checkpoint = box.sh("ls /var/backups/motorcade-leadgen | tail -n 1").stdout.strip()
        preview = play(box, "--check", "-e", "leadgen_rollback=true", "-e", f"leadgen_checkpoint={checkpoint}")
        assert f"would roll back to {checkpoint}" in preview.out
        assert f"would run: cp -a /var/backups/motorcade-leadgen/{checkpoint}/files{API_UNIT_PATH} " in preview.out
        assert "dry run: nothing was changed" in preview.out
        assert listing(box) == listed and invocation(box) == updated

        back = play(box, "-e", "leadgen_rollback=true")
        assert task_output(back, "Run install.sh --rollback").strip() == f"changed: [{HOST}]"
        assert back.out.count(RESTARTED) == 1  # install.sh --rollback restarts the API its unit came back to
        assert box.sh(f"cat {API_UNIT_PATH}").stdout == shipped
        assert box.show(API, "ActiveState")["ActiveState"] == "active" and invocation(box) != updated
        assert task_output(back, GATE).strip() == f"ok: [{HOST}]"
        assert back.recap[HOST]["failed"] == 0
    finally:
        box.write(SOURCE_UNIT, shipped)


def test_unhealthy_host_stops_the_rollout_and_is_named(box: Machine, deployed: Story) -> None:
    """serial 1, max_fail_percentage 0: a host that never answers 2xx fails the play; the next host is untouched.

    The sources are as shipped (after the rollback above, only the stage's copy of the unit
    changes): install.sh has nothing to change, restarts nothing and exits 0 (its check only
    reports the API unhealthy), so the playbook's gate alone judges the host, 3 tries 1 s apart.
    """
    before = invocation(box)
    set_mode(box, "503")
    try:
        run = play(box, "-e", "leadgen_health_retries=2", inventory="e2e-fleet", expect_rc=2)
    finally:
        set_mode(box, "healthy")
    assert task_output(run, INSTALL).strip() == f"ok: [{HOST}]" and "nothing to change" in run.out
    assert RESTARTED not in run.out and invocation(box) == before
    assert f"{HOST} stayed unhealthy: GET http://127.0.0.1:8000/lead/health did not answer 2xx in 3 tries" in run.out
    assert "(last: HTTP 503). The rollout stops here; the hosts after it were not touched." in run.out
    assert run.recap[HOST]["failed"] == 1
    assert f"[{OTHER}]" not in run.out and OTHER not in run.recap


def test_missing_image_stops_the_host_before_anything_changes(box: Machine, deployed: Story) -> None:
    """An image the host does not have: the play fails naming the host and the image, and writes nothing."""
    before, api_before = listing(box), invocation(box)
    run = play(box, "-e", "leadgen_image=localhost/not-loaded:2", expect_rc=2)
    assert f"{HOST}: image localhost/not-loaded:2 is not present (podman image exists)" in run.out
    assert run.recap[HOST]["failed"] == 1 and run.recap[HOST]["changed"] == 0
    assert listing(box) == before and invocation(box) == api_before


def test_rule7_a_failed_release_names_its_checkpoint_and_that_advice_works(box: Machine, deployed: Story) -> None:
    """An image-only release whose API never gets healthy: install.sh exits 3, the play stops naming the exact
    checkpoint; following that advice word for word puts the previous image back and the gate passes."""
    image = GROUP_VARS["leadgen_image"]
    bad = image.rsplit(":", 1)[0] + ":e2e-bad"
    box.sh(f"podman tag {image} {bad}")
    set_mode(box, "503")
    try:
        run = play(box, "-e", f"leadgen_image={bad}", "-e", "leadgen_health_retries=1", expect_rc=2)
    finally:
        set_mode(box, "healthy")
    assert f"\nLEADGEN_IMAGE={bad}\n" in box.sh(f"cat {API_ENV}").stdout
    advice = re.search(r"-e leadgen_rollback=true -e leadgen_checkpoint=(\S+) --limit " + HOST, run.out)
    assert advice, run.out
    assert "installed, but the API is not healthy (install.sh exit 3)" in run.out
    assert advice.group(1) == box.sh("ls /var/backups/motorcade-leadgen | tail -n 1").stdout.strip()
    back = play(box, "-e", "leadgen_rollback=true", "-e", f"leadgen_checkpoint={advice.group(1)}")
    assert f"\nLEADGEN_IMAGE={image}\n" in box.sh(f"cat {API_ENV}").stdout
    assert back.out.count(RESTARTED) == 1 and task_output(back, GATE).strip() == f"ok: [{HOST}]"


def test_rule9_a_hung_api_is_given_60s_of_wall_time_then_exit_3(box: Machine, deployed: Story) -> None:
    """A hung API (accepts, never answers) and the default 5 s probe timeout: install.sh --restart-api gives up
    after 60 s of wall time, not after 60 checks of 5 s each; exit 3 says the API is not healthy; the
    watchdog's pause by install.sh is over."""
    set_mode(box, "hang")
    try:
        start = time.monotonic()
        proc = box.sh("/opt/motorcade-leadgen/src/install.sh --restart-api", check=False)
        took = time.monotonic() - start
    finally:
        set_mode(box, "healthy")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"{API}: not healthy after 60s" in proc.stderr
    assert "this run changed no file; the API is not healthy on what was already installed" in proc.stderr
    assert took < 120, took  # the old loop spent up to one 5 s probe per second of its 60: about 6 minutes
    assert "paused:       yes" not in box.sh("/usr/local/sbin/leadgen-watchdog status", check=False).stdout


# --- rule 13: the playbook previews from the installer's own plan ---------------------------------


def hide_polkitd(box: Machine) -> None:
    box.sh(f"mv {POLKITD} {POLKITD}.e2e-hidden")


def restore_polkitd(box: Machine) -> None:
    box.sh(f"[ -e {POLKITD} ] || mv {POLKITD}.e2e-hidden {POLKITD}")


def assert_clean_check(box: Machine) -> Run:
    """--check --diff on the installed host: changed=0, install.sh's plan empty, nothing written or restarted."""
    before, api_before = listing(box), invocation(box)
    run = play(box, "--check", "--diff")
    assert run.recap[HOST]["changed"] == 0 and run.recap[HOST]["failed"] == 0, recap_text(run)
    assert task_output(run, INSTALL).strip() == f"ok: [{HOST}]"
    assert json.loads(task_output(run, PLAN_SHOWN).split("=>", 1)[1])["msg"] == []
    assert listing(box) == before and invocation(box) == api_before
    return run


def test_rule13_check_diff_on_an_installed_host_is_clean_with_and_without_polkitd(
    box: Machine, deployed: Story
) -> None:
    """Installed with polkitd (the polkit rule) and installed without it (the root-mode drop-in, no rule): each
    time --check --diff ends changed=0 in the PLAY RECAP."""
    run = assert_clean_check(box)
    print(f"\n--check --diff, polkitd present ({run.seconds:.1f}s):\n{recap_text(run)}")
    hide_polkitd(box)
    try:
        applied = play(box)
        assert box.sh(f"test -f {ROOT_MODE} && test ! -e {POLKIT_RULE}", check=False).returncode == 0
        assert applied.recap[HOST]["changed"] > 0
        run = assert_clean_check(box)
        print(f"--check --diff, polkitd absent ({run.seconds:.1f}s):\n{recap_text(run)}")
    finally:
        restore_polkitd(box)
        play(box)
    assert box.sh(f"test ! -e {ROOT_MODE} && test -f {POLKIT_RULE}", check=False).returncode == 0


def test_rule13_check_shows_the_root_mode_dropins_removal_exactly_as_install_sh_then_does(
    box: Machine, deployed: Story
) -> None:
    """Installed without polkitd, then polkitd returns: --check --diff names the drop-in's removal and the polkit
    rule, with their diffs, and changes nothing; the apply after it does exactly that; then --check is clean."""
    hide_polkitd(box)
    try:
        play(box)
    finally:
        restore_polkitd(box)
    before, api_before = listing(box), invocation(box)
    run = play(box, "--check", "--diff")
    assert listing(box) == before and invocation(box) == api_before
    assert run.recap[HOST]["changed"] > 0 and run.recap[HOST]["failed"] == 0
    plan = json.loads(task_output(run, SHOWN).split("=>", 1)[1])["msg"]
    assert [line for line in plan if line[:2] in ("+ ", "- ")] == [
        f"+ {POLKIT_RULE} 0644 polkit",
        f"- {ROOT_MODE} 0644 root-mode",
    ]
    diff = json.loads(task_output(run, PLAN_SHOWN).split("=>", 1)[1])["msg"]
    removal = diff.index(f"--- {ROOT_MODE}")
    assert diff[removal + 1] == "+++ /dev/null" and "-User=" in diff[removal:]
    assert f"+++ {POLKIT_RULE}" in diff
    applied = play(box)
    shown = task_output(applied, SHOWN)
    assert f"rm -f {ROOT_MODE}" in shown and f"{POLKIT_RULE}.new" in shown
    assert box.sh(f"test ! -e {ROOT_MODE} && test -f {POLKIT_RULE}", check=False).returncode == 0
    assert_clean_check(box)
