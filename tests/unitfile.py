"""Read systemd unit files the way systemd does, for tests: sections, continuation
lines, repeated keys, and Exec*= command lines with specifiers and ${VAR} expanded."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

UNITS = Path(__file__).resolve().parent.parent / "units"


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; an empty assignment resets the list."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line}"
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def read_env(path: Path) -> dict[str, str]:
    """An EnvironmentFile=: KEY=value lines, comments skipped."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def expand(command: str, specifiers: dict[str, str], env: dict[str, str]) -> tuple[bool, list[str]]:
    """One Exec*= value -> (failure ignored, argv), expanded as systemd.service(5) says:
    %X specifiers, "${VAR}" as one word, "$VAR" split on white space."""
    ignore = False
    while command[:1] in "-@+!:" and command[:1]:
        ignore = ignore or command[0] == "-"
        command = command[1:]
    command = re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else specifiers[m.group(1)], command)
    argv: list[str] = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        split = re.fullmatch(r"\$(\w+)", word)
        if whole:
            argv.append(env.get(whole.group(1), ""))
        elif split:
            argv.extend(env.get(split.group(1), "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return ignore, argv
