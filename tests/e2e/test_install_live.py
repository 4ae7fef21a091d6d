"""install.sh on the live booted systemd, where --root trees cannot reach: a
failed update restores the units systemd loaded; a rollback restarts the API
only for a changed API unit; a timer restored as disabled is also stopped."""

from __future__ import annotations

from harness import API, PROJECT, TIMER, WATCHDOG
from machine import Machine
from podmanhost import PODMAN_ENV, podman_box

# Test-only: `mv` fails when it would put the new timer in place.
FAILING_MV = f"""#!/bin/sh
case "$*" in *"/etc/systemd/system/{TIMER}") echo "mv: injected fault" >&2; exit 1 ;; esac
exec /usr/bin/mv "$@"
"""


def test_a_failed_update_restores_what_systemd_runs(installed) -> None:
    """New service and timer units, the timer's mv fails: exit 1, 'restored', systemd runs the old units, timer on."""
    box = installed()
    old = {unit: box.sh(f"systemctl cat {unit}").stdout for unit in (WATCHDOG, TIMER)}
    for unit in (WATCHDOG, TIMER):
        box.sh(f"sed -i 's/^Description=.*/Description=v2 {unit}/' {PROJECT}/units/{unit}")
    box.write("/opt/shim/mv", FAILING_MV)
    box.sh("chmod 0755 /opt/shim/mv")
    proc = box.sh(f"PATH=/opt/shim:$PATH {PROJECT}/install.sh", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"failed: mv -fT -- /etc/systemd/system/{TIMER}.new /etc/systemd/system/{TIMER}" in proc.stderr
    assert "restored: the managed files and enablement are as they were before this run" in proc.stderr
    for unit in (WATCHDOG, TIMER):
        assert box.sh(f"systemctl cat {unit}").stdout == old[unit], unit
        shown = box.show(unit, "Description", "NeedDaemonReload")
        assert not shown["Description"].startswith("v2") and shown["NeedDaemonReload"] == "no", unit
    timer = box.show(TIMER, "ActiveState", "UnitFileState")
    assert (timer["ActiveState"], timer["UnitFileState"]) == ("active", "enabled")
    assert len(box.sh("ls /var/backups/motorcade-leadgen").stdout.split()) == 1  # the failed run's is gone


def test_rollback_leaves_the_api_alone_and_stops_a_timer_restored_as_disabled(installed) -> None:
    """A rollback of a timer change keeps the API's invocation; disable --now, uninstall, rollback: timer off."""
    box = installed()
    api = box.show(API, "InvocationID")["InvocationID"]
    box.sh(f"sed -i 's/^Description=.*/Description=v2/' {PROJECT}/units/{TIMER}")
    box.sh(f"{PROJECT}/install.sh")
    out = box.sh(f"{PROJECT}/install.sh --rollback").stdout
    assert f"systemctl restart {API}" not in out
    assert box.show(API, "InvocationID")["InvocationID"] == api

    box.sh(f"systemctl disable --now {TIMER}")
    box.sh(f"{PROJECT}/install.sh --uninstall")
    box.sh(f"{PROJECT}/install.sh --rollback")
    timer = box.show(TIMER, "LoadState", "ActiveState", "UnitFileState")
    assert timer == {"LoadState": "loaded", "ActiveState": "inactive", "UnitFileState": "disabled"}


def test_a_fresh_host_hears_every_missing_prerequisite_in_one_run(standin_api) -> None:
    """No api.env, no app.env: one dry run names both the empty image and the missing app.env, and changes nothing."""
    box = standin_api
    proc = box.sh(f"{PROJECT}/install.sh --dry-run")
    assert "/etc/motorcade-leadgen/api.env does not exist yet: this run would install it" in proc.stdout
    assert "LEADGEN_IMAGE is empty in /etc/motorcade-leadgen/api.env" in proc.stderr
    assert "application env file /etc/motorcade-leadgen/app.env" in proc.stderr and "is missing" in proc.stderr
    assert "dry run: nothing was changed" in proc.stdout
    assert box.sh("test -e /etc/motorcade-leadgen/api.env", check=False).returncode != 0


# Test-only: every command that could change the host records itself and fails, unless it works in /tmp.
RECORDER = """#!/bin/sh
case "$(basename "$0")" in
    systemctl)
        for arg in "$@"; do
            case $arg in
                enable | disable | start | stop | restart | reload | daemon-reload | reset-failed | mask | kill) ;;
                *) continue ;;
            esac
            echo "systemctl $*" >>/opt/recorded
            exit 1
        done
        exec /usr/bin/systemctl "$@"
        ;;
esac
case "$*" in *" /tmp/"* | /tmp/*) exec "/usr/bin/$(basename "$0")" "$@" ;; esac
echo "$(basename "$0") $*" >>/opt/recorded
exit 1
"""
RECORDED = ("systemctl", "systemd-sysusers", "install", "mv", "cp", "rm", "rmdir", "mkdir", "touch", "ln", "chmod")


def test_rule5_a_live_dry_run_of_every_mode_changes_nothing(installed) -> None:
    """On the live systemd, a recorder in front of systemctl's changing verbs, systemd-sysusers and every file
    command: a dry run of an update, --set, --restart-api, --rollback and --uninstall runs none of them."""
    box = installed()
    box.sh(f"sed -i 's/^Description=.*/Description=v2/' {PROJECT}/units/{TIMER}")
    box.sh(f"{PROJECT}/install.sh")  # something to roll back
    box.sh(f"sed -i 's/^Description=.*/Description=v3/' {PROJECT}/units/{WATCHDOG}")
    box.write("/opt/recorder/recorder", RECORDER)
    links = " && ".join(f"ln -sf recorder /opt/recorder/{name}" for name in RECORDED)
    box.sh(f"chmod 0755 /opt/recorder/recorder && {links}")
    api = box.show(API, "InvocationID")["InvocationID"]
    for args in ["", "--restart-api", "--uninstall", "--rollback", "--set LEADGEN_MEMORY=600m"]:
        proc = box.sh(f"PATH=/opt/recorder:$PATH {PROJECT}/install.sh --dry-run {args}", check=False)
        recorded = box.sh("cat /opt/recorded 2>/dev/null; rm -f /opt/recorded", check=False).stdout
        assert (proc.returncode, recorded) == (0, ""), (args, proc.stdout, proc.stderr)
        assert "nothing was changed" in proc.stdout and "rolled back to" not in proc.stdout, args
    assert box.show(API, "InvocationID")["InvocationID"] == api


def test_rule3_uninstall_takes_out_the_live_subuid_line_it_added_and_rollback_puts_it_back() -> None:
    """The real /etc/subuid and /etc/subgid, on a host where the API unit goes in (its image loaded): useradd
    (shadow's own tool, under its lock) adds bob's range after the install; --uninstall takes out only install.sh's
    containers line, --rollback of it puts that line back, bob's range untouched throughout."""
    with podman_box(timeout=1, grace=2, threshold=2, retry_interval=0) as box:
        box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh")
        subid_round_trip(box)


def subid_round_trip(box: Machine) -> None:
    """--uninstall, then --rollback, with useradd's range added in between."""
    ours = "containers:2147483647:2147483648"
    for name in ("subuid", "subgid"):
        assert ours in box.sh(f"cat /etc/{name}").stdout.splitlines(), name
    box.sh("useradd bob")
    bob = {name: box.sh(f"grep '^bob:' /etc/{name}").stdout.strip() for name in ("subuid", "subgid")}
    out = box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh --uninstall").stdout
    assert f"removed {ours} from /etc/subuid (install.sh added it)" in out, out
    for name in ("subuid", "subgid"):
        assert box.sh(f"cat /etc/{name}").stdout.splitlines() == [bob[name]], name
    box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh --rollback")
    for name in ("subuid", "subgid"):
        assert box.sh(f"cat /etc/{name}").stdout.splitlines() == [bob[name], ours], name
