"""A booted machine made ready for the real API unit with the real podman: one set-up for the suites
that need it (test_podman_systemd, test_faults, test_readme_journey).

Test-only (the README lists them): CONTAINERS_CONF and CONTAINERS_STORAGE_CONF given to podman and to the
API unit (a drop-in), runc, a vfs store; the timer every 2 s (a drop-in).
"""

from __future__ import annotations

import shlex
import shutil
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import testimage
from harness import API, FAST_TIMER, PROJECT, TIMER, copy_project, require_or_skip, watchdog_env
from machine import Machine, unavailable

CONF_DIR = "/etc/leadgen-e2e"
PODMAN_ENV = f"CONTAINERS_CONF={CONF_DIR}/containers.conf CONTAINERS_STORAGE_CONF={CONF_DIR}/storage.conf"
API_DROPIN = f"[Service]\nEnvironment={PODMAN_ENV}\n"


def provision(
    box: Machine, *, app_env: str = "", api_env: dict | None = None, api_dropin: str = "", **watchdog: object
) -> None:
    """Before boot's first command: the checkout, the test image imported, api.env naming it (plus api_env
    settings), app.env, watchdog.env (the watchdog settings), the sandbox drop-in and the fast timer."""
    copy_project(box)
    shutil.copy(testimage.build_tar(box.base), box.root / "opt/leadgen-image.tar")
    box.write_host(f"{CONF_DIR}/containers.conf", testimage.CONTAINERS_CONF)
    box.write_host(f"{CONF_DIR}/storage.conf", testimage.storage_conf("/var/lib/leadgen-e2e", "/run/leadgen-e2e"))
    box.sh(f"env {PODMAN_ENV} " + shlex.join(testimage.import_argv("/opt/leadgen-image.tar")))
    box.write_host("/etc/motorcade-leadgen/app.env", app_env)
    template = (box.root / PROJECT.lstrip("/") / "units/api.env").read_text()
    box.write_host(
        "/etc/motorcade-leadgen/api.env", with_settings(template, LEADGEN_IMAGE=testimage.IMAGE, **(api_env or {}))
    )
    box.write_host("/etc/motorcade-leadgen/watchdog.env", watchdog_env(**watchdog))
    box.write_host(f"/etc/systemd/system/{API}.d/50-podman-sandbox.conf", API_DROPIN + api_dropin)
    box.write_host(f"/etc/systemd/system/{TIMER}.d/50-fast.conf", FAST_TIMER)


@contextmanager
def podman_box(before: Optional[Callable[[Machine], None]] = None, **watchdog: object) -> Iterator[Machine]:
    """A booted systemd with writable cgroup controllers, provisioned (watchdog.env from `watchdog`), closed
    afterwards even when the test fails; `before` runs on the booted machine before provisioning."""
    reason = unavailable() or testimage.unavailable()
    if reason:
        require_or_skip(reason)
    box = Machine(writable_cgroups=True)
    try:
        box.boot()
        if before is not None:
            before(box)
        provision(box, **watchdog)
        yield box
    finally:
        box.close()


def with_settings(template: str, **settings: str) -> str:
    """The env template with these KEY=value lines set (and appended where the template has none)."""
    lines = []
    for line in template.splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={settings.pop(key)}" if "=" in line and key in settings else line)
    return "\n".join(lines + [f"{key}={value}" for key, value in settings.items()]) + "\n"
