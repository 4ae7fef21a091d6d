"""Helpers shared by the unit tests: a recording systemctl, raw socket servers, a fake clock."""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import leadgen_watchdog as wd  # noqa: E402

HEALTH = "/lead/health"


class FakeSystemctl:
    """Scripts tests/fake_systemctl.py and reads back what it was asked."""

    def __init__(self, directory: Path) -> None:
        self.path = str(Path(__file__).with_name("fake_systemctl.py"))
        self.control = directory / "control.json"
        self.log = directory / "calls.jsonl"
        self.script = {
            "unit": {
                "LoadState": "loaded",
                "ActiveState": "active",
                "SubState": "running",
                "ActiveEnterTimestampMonotonic": "1",  # long ago: outside any grace
                "InvocationID": "invocation-1",
            }
        }
        self.save()

    def save(self) -> None:
        self.control.write_text(json.dumps(self.script))

    def set_unit(self, **props: str) -> None:
        self.script = json.loads(self.control.read_text())
        self.script["unit"].update(props)
        self.save()

    def behave(self, verb: str, rc: int = 0, stderr: str = "", sleep: float = 0) -> None:
        self.script = json.loads(self.control.read_text())
        self.script[verb] = {"rc": rc, "stderr": stderr, "sleep": sleep}
        self.save()

    def calls(self, verb: str | None = None) -> list[list[str]]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [call for call in calls if verb is None or call[0] == verb]


class FakeClock(wd.Clock):
    """A monotonic and a wall clock that move only when told."""

    def __init__(self, start: float = 10_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RawServer:
    """A TCP server on loopback whose every connection is given to `handle`."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.handle = handle
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{HEALTH}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handle(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
