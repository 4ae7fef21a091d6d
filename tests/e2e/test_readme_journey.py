"""The on-call documentation as an executable spec (issues 14 and 22): the commands of the README's "Install on one
server" and "Day-2 cheat sheet" and every ```bash block of docs/operations.md, taken from the files themselves and run
verbatim, in order, inside the booted systemd with the real podman and the busybox test image, each checked against
what the text says it does.

What the test does that the reader does by hand: `sudo` is a shell function (the test runs as root) that passes the
podman sandbox settings (see test_podman_systemd.py); the image tarball the README loads is the test image, saved
by the test, and the README's example image name is the test image's; `sudoedit` (interactive) is not run; the example
times of "Investigating a restart" are replaced by a window around a restart the test causes (an API frozen with
SIGSTOP), and the example checkpoint name by a real one, as the text says to look it up; the rollback commands are
alternatives, so each starts from a host where the latest run changed something a rollback can undo (the timer's
description in the checkout, or a release with `--set`: a rollback never undoes the first install).
"""

from __future__ import annotations

import re
import shlex
import time
from typing import Callable, Iterator

import pytest
import testimage
from harness import API, PROJECT, REPO, TIMER, WATCHDOG, wait_for, wait_logged
from machine import Machine
from podmanhost import PODMAN_ENV, podman_box

README = REPO / "README.md"
OPERATIONS = REPO / "docs/operations.md"
README_IMAGE = "localhost/motorcade-leadgen-api:1.4.2"
TARBALL = "motorcade-leadgen-api.tar"
EXAMPLE_SINCE, EXAMPLE_UNTIL = "2026-12-06 03:00", "2026-12-06 03:20"
# README sections whose commands are not for the server: test_docs.py runs "The two commands" on the test host;
# test_ansible.py runs the playbook.
README_ELSEWHERE = {"The two commands", "The fleet"}


def sections(path) -> dict[str, str]:
    """'## heading' -> body, for every level-2 section of a Markdown file."""
    text = path.read_text()
    parts = re.split(r"^## (.+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def commands(body: str) -> list[list[str]]:
    """The commands of each ```bash block, comments stripped, continuation lines joined, in order."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        joined = block.replace("\\\n", " ")
        lines = [re.split(r"\s+#", line, maxsplit=1)[0].strip() for line in joined.splitlines()]
        blocks.append([line for line in lines if line])
    return blocks


def cheat_sheet(body: str) -> dict[str, str]:
    """task -> command, from the cheat sheet's table rows."""
    rows = [row.strip("|").split("|") for row in body.splitlines() if row.startswith("| ") and "`" in row]
    return {task.strip(): re.fullmatch(r"\s*`(.+)`\s*", command).group(1) for task, command, _ in rows}


@pytest.fixture(scope="module")
def host() -> Iterator[Machine]:
    """A booted systemd, the checkout at /opt/leadgen, the test image in podman (the harness's provisioning)."""
    with podman_box(timeout=1, grace=2, retry_interval=0) as box:
        yield box


def operator(box: Machine, transcript: list[str]) -> Callable[..., str]:
    """Run one documented command as the operator would, in the checkout, as root; it must exit 0."""

    def run(command: str, *, expect: int = 0) -> str:
        script = f'cd {PROJECT} && sudo() {{ env {PODMAN_ENV} "$@"; }} && {command}'
        proc = box.sh(script, check=False, timeout=180)
        transcript.append(f"$ {command}  -> exit {proc.returncode}")
        out = proc.stdout + proc.stderr
        assert proc.returncode == expect, f"{command!r} exited {proc.returncode}:\n{out}"
        return out

    return run


def active(box: Machine, unit: str) -> str:
    return box.sh(f"systemctl is-active {unit}", check=False).stdout.strip()


def podman(box: Machine, args: str) -> str:
    return box.sh(f"env {PODMAN_ENV} podman {args}").stdout.strip()


def healthy(box: Machine) -> bool:
    return box.sh("leadgen-watchdog check", check=False).returncode == 0


def prerequisites(box: Machine, run: Callable[..., str], block: list[str]) -> None:
    """The README's prerequisites, on a host that has none of them: no image, no api.env, no app.env."""
    assert block[0] == f"sudo podman load -i {TARBALL}"
    podman(box, f"save -o {PROJECT}/{TARBALL} {testimage.IMAGE}")
    podman(box, f"rmi {testimage.IMAGE}")
    box.sh("rm /etc/motorcade-leadgen/api.env /etc/motorcade-leadgen/app.env")
    assert README_IMAGE in block[2]
    for command in block:
        run(command.replace(README_IMAGE, testimage.IMAGE))
    assert box.sh(f"env {PODMAN_ENV} podman image exists {testimage.IMAGE}", check=False).returncode == 0
    assert f"\nLEADGEN_IMAGE={testimage.IMAGE}\n" in box.sh("cat /etc/motorcade-leadgen/api.env").stdout
    assert box.sh("stat -c '%a %s' /etc/motorcade-leadgen/app.env").stdout.strip() == "600 0"  # secrets: 0600, empty
    assert box.sh("stat -c %a /etc/motorcade-leadgen/api.env").stdout.strip() == "640"


def install(box: Machine, run: Callable[..., str], block: list[str]) -> None:
    """Look, install, check: what the README says each command does."""
    assert block == [
        "sudo ./install.sh --dry-run",
        "sudo ./install.sh",
        "sudo leadgen-watchdog check",
        "curl -fsS http://127.0.0.1:8000/lead/health",
    ]
    assert "would" in run(block[0]) and active(box, TIMER) != "active"  # "changes nothing"
    out = run(block[1])
    assert (active(box, API), active(box, TIMER)) == ("active", "active")
    assert "OK: health check passed" in out
    assert "nothing to change" in run(block[1])  # "A second run with nothing new says `nothing to change`"
    assert run(block[2]).startswith("OK: health check passed")
    assert '"status":"ok"' in run(block[3]).replace(" ", "")


def day2(box: Machine, run: Callable[..., str], sheet: dict[str, str], runbook: str) -> None:
    """Each cheat-sheet command does its task; rollback and uninstall are those of operations.md, run there."""
    expected = {
        "is it healthy?": r"paused:\s+no",
        "is the watchdog alive?": re.escape(TIMER),
        "why did it restart at 03:12?": "",  # a fixed time of day: no entries unless the test runs then
        "what did the API say before?": "test api up in container",
        "pause for maintenance": "paused for 15m",
        "end the pause": "",
    }
    elsewhere = {"change a setting": "sudoedit", "roll back the last install": "", "uninstall the watchdog": ""}
    assert set(sheet) == set(expected) | set(elsewhere), sheet
    for task, pattern in expected.items():
        out = run(sheet[task])
        assert re.search(pattern, out), (task, out)
        if task == "pause for maintenance":
            assert re.search(r"paused:\s+yes", run("sudo leadgen-watchdog status"))
    assert re.search(r"paused:\s+no", run("sudo leadgen-watchdog status"))
    assert sheet["change a setting"].startswith("sudoedit /etc/motorcade-leadgen/watchdog.env")
    assert sheet["roll back the last install"] in runbook and sheet["uninstall the watchdog"] in runbook


def freeze(box: Machine) -> float:
    """Freeze the API's server (running, answering nothing); the watchdog's restart is awaited. The freeze's time."""
    before = box.show(API, "InvocationID")["InvocationID"]
    init = podman(box, "inspect motorcade-leadgen-api --format '{{.State.Pid}}'")
    server = box.sh(f"cat /proc/{init}/task/{init}/children").stdout.split()[0]
    frozen = float(box.sh("date +%s").stdout)
    box.sh(f"kill -STOP {server}")
    wait_for("the watchdog's restart", lambda: box.show(API, "InvocationID")["InvocationID"] != before, timeout=90)
    wait_logged(box, "restart done unit=motorcade-leadgen-api.service", timeout=30)
    wait_for("health after the restart", lambda: healthy(box), timeout=30)
    return frozen


def local_time(box: Machine, epoch: float) -> str:
    return box.sh(f"date -d @{int(epoch)} '+%Y-%m-%d %H:%M:%S'").stdout.strip()


def investigate(box: Machine, run: Callable[..., str], block: list[str]) -> None:
    """After a real restart, the three commands show its failures and restart, the API's restart, its last words."""
    frozen = freeze(box)
    since, until = local_time(box, frozen - 60), local_time(box, time.time() + 3600)
    assert all(EXAMPLE_SINCE in command and EXAMPLE_UNTIL in command for command in block[:2]), block
    outs = [run(command.replace(EXAMPLE_SINCE, since).replace(EXAMPLE_UNTIL, until)) for command in block]
    assert "health check failed reason=timeout" in outs[0]
    assert "restarting unit after 3 consecutive failures" in outs[0] and "restart done" in outs[0]
    assert "Started" in outs[1]
    assert block[2].endswith("container.log.1") and "test api up in container" in outs[2]


def restart_by_hand(box: Machine, run: Callable[..., str], block: list[str]) -> None:
    assert block == [
        "sudo systemctl reset-failed motorcade-leadgen-api.service",
        "sudo systemctl restart motorcade-leadgen-api.service",
    ]
    before = box.show(API, "InvocationID")["InvocationID"]
    for command in block:
        run(command)
    assert box.show(API, "InvocationID")["InvocationID"] != before
    wait_for("health after the restart by hand", lambda: healthy(box), timeout=30)


def alive(box: Machine, run: Callable[..., str], block: list[str]) -> None:
    outs = [run(command) for command in block]
    assert TIMER in outs[0] and re.search(r"paused:\s+no", outs[1])


def maintenance(box: Machine, run: Callable[..., str], block: list[str]) -> None:
    assert [command.split()[2] for command in block] == ["pause", "status", "resume"]
    run(block[0])
    assert re.search(r"paused:\s+yes", run(block[1]))
    run(block[2])
    assert re.search(r"paused:\s+no", run(block[1]))


def env_line(box: Machine, key: str) -> str:
    return box.sh(f"grep '^{key}=' /etc/motorcade-leadgen/api.env").stdout.strip()


def rollback(box: Machine, run: Callable[..., str], block: list[str]) -> None:
    """The alternatives, each after a run it can undo (a rollback never undoes the first install): `--rollback` after an
    update that changed the timer, `--rollback NAME` after a release (`--set`), then `--uninstall`."""
    assert [c.split()[2] for c in block] == ["--rollback", "--rollback", "--uninstall"]
    shipped = box.show(TIMER, "Description")["Description"]
    timer = f"{PROJECT}/units/{TIMER}"
    box.sh(f"sed -i 's/^Description=.*/Description=LeadGen watchdog timer v2/' {shlex.quote(timer)}")
    for command in block:
        if re.search(r"--rollback \S+", command):  # a release to undo, and its checkpoint looked up as the text says
            before, api = env_line(box, "LEADGEN_PIDS_LIMIT"), box.show(API, "InvocationID")["InvocationID"]
            run("sudo ./install.sh --set LEADGEN_PIDS_LIMIT=300")
            assert env_line(box, "LEADGEN_PIDS_LIMIT") == "LEADGEN_PIDS_LIMIT=300" != before
            assert box.show(API, "InvocationID")["InvocationID"] != api  # a release restarts the running API
            name = box.sh("ls /var/backups/motorcade-leadgen | tail -n 1").stdout.strip()
            assert re.fullmatch(r"\d{6}-\d{8}T\d{6}Z", name), name  # NNNNNN-<UTC time>
            out = run(re.sub(r"--rollback \S+", f"--rollback {name}", command))
            assert "rolled back" in out, out
            assert env_line(box, "LEADGEN_PIDS_LIMIT") == before  # the previous line is back
            wait_for("health after the rollback's restart", lambda: healthy(box), timeout=60)
            assert active(box, TIMER) == "active"
            continue
        assert "nothing to change" not in run("sudo ./install.sh")
        assert box.show(TIMER, "Description")["Description"] == "LeadGen watchdog timer v2"
        out = run(command)
        if "--rollback" in command:
            assert "rolled back" in out, out
            assert box.show(TIMER, "Description")["Description"] == shipped
            assert active(box, TIMER) == "active"
        else:
            assert box.sh(f"systemctl cat {WATCHDOG}", check=False).returncode != 0
            assert box.sh("test -e /usr/local/sbin/leadgen-watchdog", check=False).returncode == 1
            assert box.sh("test -e /etc/motorcade-leadgen/api.env", check=False).returncode == 0  # env files stay
            assert active(box, API) == "active"  # the API unit stays


OPERATIONS_STEPS = {
    "Is the watchdog alive?": alive,
    "Investigating a restart": investigate,
    "Restarting the API by hand": restart_by_hand,
    "Maintenance": maintenance,
    "Checkpoints and rollback": rollback,
}


def test_the_documented_commands_do_what_the_docs_say(host: Machine) -> None:
    """Prerequisites, install, the cheat sheet, then every command block of operations.md, in the docs' order."""
    box, transcript = host, []
    run = operator(host, transcript)
    readme, operations = sections(README), sections(OPERATIONS)
    with_commands = {heading for heading, body in readme.items() if commands(body)}
    assert with_commands == {"Install on one server"} | README_ELSEWHERE, with_commands
    with_commands = [heading for heading, body in operations.items() if commands(body)]
    assert with_commands == list(OPERATIONS_STEPS), with_commands  # every block of operations.md is run here

    prerequisites(box, run, commands(readme["Install on one server"])[0])
    install(box, run, commands(readme["Install on one server"])[1])
    day2(box, run, cheat_sheet(readme["Day-2 cheat sheet"]), operations["Checkpoints and rollback"])
    for heading, step in OPERATIONS_STEPS.items():
        (block,) = commands(operations[heading])
        transcript.append(f"# operations.md: {heading}")
        step(box, run, block)
    print("documentation journey:\n" + "\n".join(transcript))
