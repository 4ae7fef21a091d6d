"""watchdog.env means the same to the command line and to systemd (issue 18 rule 5), proved on systemd's own
EnvironmentFile= parser: every line the watchdog accepts, systemd reads to the same variables."""

from __future__ import annotations

import base64
import sys

from harness import REPO
from machine import Machine

sys.path.insert(0, str(REPO))
import leadgen_watchdog as wd

ACCEPTED = [
    b"A=1", b"A=", b'A="x y"', b"A='x y'", b"A=x y", b"A=x  y", b'A=" lead"', b"A='trail '", b"A=#x", b"A=;",
    b"A==1", b"A=a=b", "A=é".encode(), "A=日本".encode(), b'A="a#b"', b"A='a;b'", b'A=""', b"A=''",
    b"A=http://127.0.0.1:8000/lead/health", b"_A=1", b"a_1=x", b"A=x#y", b"A=a{b}", b"A=%h", b"A=~", b"A=*",
    b"#comment", b";comment", b"# a comment with \"quotes\" and 'x' and $HOME", b"",
    b"LEADGEN_WATCHDOG_EXPECT_STATUS=200,204,300-302", b'LEADGEN_WATCHDOG_EXPECT_BODY="status ok"',
]  # fmt: skip
REFUSED = [
    b" A=1", b"A =1", b"A= 1", b"A=1 ", b"export A=1", b"A=1\r", b"A=a\\", b"#x\\", b'A="x', b"A=\xff",
    b"A=\x01", b"A=a$b", b"A=${B}", b'A=a"b"', b"A='a\"b'", b'A="a\\"b"', b"A=\t1", b"   ", b"1A=x",
    b'A="x" y', b"A=a\\tb", b"A=`x`", b"A='x'\t", b"\tA=1",
]  # fmt: skip


def systemd_reads(box: Machine, content: bytes, number: int) -> dict[str, str] | None:
    """The variables systemd sets from an EnvironmentFile= holding CONTENT (None if the unit would not
    start), read from `env -0` of a transient service on the booted systemd."""
    path = f"/etc/envtest/{number}.env"
    target = box.root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    proc = box.sh(
        f"systemd-run --quiet --wait --pipe --collect -p EnvironmentFile={path} /usr/bin/env -0 | base64 -w0",
        check=False,
    )
    raw = base64.b64decode(proc.stdout.strip() or b"")
    if not raw:
        return None
    pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if item]
    return {k.decode(): v.decode("utf-8", "surrogateescape") for k, v in pairs}


def test_every_line_the_watchdog_accepts_systemd_reads_the_same(machine: Machine) -> None:
    """Each accepted line, between two marker lines, gives exactly the variables the watchdog's parser
    gives; each refused line is refused by the watchdog (what systemd makes of it is printed)."""
    box = machine
    baseline = systemd_reads(box, b"", 0)
    assert baseline is not None, "systemd-run --pipe did not run"
    mismatches = []
    for number, line in enumerate(ACCEPTED + REFUSED, 1):
        content = b"LG_BEFORE=1\n" + line + b"\nLG_AFTER=1\n"
        by_systemd = systemd_reads(box, content, number)
        if by_systemd is not None:
            by_systemd = {k: v for k, v in by_systemd.items() if k not in baseline}  # PATH, INVOCATION_ID, ...
        try:
            by_watchdog = wd.parse_env_file(content, "watchdog.env")
        except wd.WatchdogError as error:
            assert line in REFUSED, f"{line!r} refused: {error}"
            print(f"  refused {line!r}: systemd reads {by_systemd}")
            continue
        assert line in ACCEPTED, f"{line!r} accepted as {by_watchdog}"
        if by_systemd != by_watchdog:
            mismatches.append((line, by_systemd, by_watchdog))
    assert mismatches == [], mismatches
    assert len(ACCEPTED) > 20 and len(REFUSED) > 20
