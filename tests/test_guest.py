"""The e2e guest cache (tests/e2e/guest.py): keyed, atomic, never half-built; the header read from the tree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
import guest

STATUS = """Package: systemd
Status: install ok installed
Version: 257.13-1~deb13u1

Package: podman
Version: 5.4.2+ds1-2+b2

Package: python3
Version: 3.13.5-1
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(guest, "CACHE", tmp_path / "cache")
    return tmp_path / "cache"


def fake_build(calls: list[str], fail: bool = False):
    def build(name: str, root: Path) -> None:
        calls.append(name)
        (root / "etc").mkdir(parents=True)
        (root / "etc/half").write_text("x")
        if fail:
            raise RuntimeError("mirror went away")

    return build


def test_a_tree_is_built_once_and_reused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second ensure() finds the renamed tree and builds nothing."""
    calls: list[str] = []
    monkeypatch.setattr(guest, "build", fake_build(calls))
    first = guest.ensure("trixie")
    assert guest.ensure("trixie") == first == cache / f"trixie-{guest.key('trixie')}"
    assert calls == ["trixie"] and (first / "etc/half").exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".build-")] == []


def test_a_failed_build_leaves_no_tree_and_no_leftovers(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that fails half-way is never renamed into place, and its temporary directory is removed."""
    monkeypatch.setattr(guest, "build", fake_build([], fail=True))
    with pytest.raises(RuntimeError, match="mirror went away"):
        guest.ensure("bookworm")
    assert not guest.path("bookworm").exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".build-")] == []


def test_a_killed_builds_leftover_is_removed_not_used(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .build-* directory left by a kill -9 is removed by the next build, which starts from nothing."""
    leftover = cache / f".build-trixie-{guest.key('trixie')}-99999"
    (leftover / "etc").mkdir(parents=True)
    calls: list[str] = []
    monkeypatch.setattr(guest, "build", fake_build(calls))
    tree = guest.ensure("trixie")
    assert calls == ["trixie"] and not leftover.exists() and tree != leftover


def test_the_key_changes_with_the_package_list_and_the_distro(monkeypatch: pytest.MonkeyPatch) -> None:
    before = guest.key("trixie")
    assert guest.key("bookworm") != before
    monkeypatch.setattr(guest, "PACKAGES", (*guest.PACKAGES, "strace"))
    assert guest.key("trixie") != before


@pytest.mark.parametrize("value", ["sid", "", "Trixie", "trixie "])
def test_an_unknown_distro_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LEADGEN_E2E_DISTRO", value)
    with pytest.raises(SystemExit, match=f"LEADGEN_E2E_DISTRO must be one of bookworm, trixie, got {value!r}"):
        guest.distro()


def test_the_versions_are_read_from_the_tree(tmp_path: Path) -> None:
    """Debian from etc/debian_version; systemd, podman, python from the tree's dpkg status, upstream part only."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/debian_version").write_text("13.8\n")
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    assert guest.versions(tmp_path) == guest.Versions("13.8", "257", "5.4.2", "3.13.5")
