"""The documentation stays usable and true: README.md and docs/*.md (issue 22).

Every relative link and #anchor resolves by GitHub's rules, the README keeps its order and length, lines stay short
enough to read in a terminal, and the README's first command prints what the README says it prints.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

README_SECTIONS = [
    "Requirements",
    "The two commands",
    "Install on one server",
    "Day-2 cheat sheet",
    "Alerting",
    "The fleet",
    "Documentation",
    "Development",
]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE_SPAN = re.compile(r"(`+).+?\1")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text without fenced code, HTML comments and code spans: what GitHub reads links and headings from."""
    return CODE_SPAN.sub("", COMMENT.sub("", FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: one per heading, repeated slugs numbered -1, -2 as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", COMMENT.sub("", FENCE.sub("", text)), re.M):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of the page whose file, or whose #anchor in that file, does not exist."""
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, file:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text())):
            problems.append(f"{page.name}: {target}: no such anchor in {dest.name}")
    return problems


def section(text: str, heading: str) -> str:
    """The body of a '## heading' section, up to the next heading of level 2."""
    return re.split(r"^## ", text.split(f"\n## {heading}\n", 1)[1], maxsplit=1, flags=re.M)[0]


def test_every_relative_link_and_anchor_resolves() -> None:
    """Every relative link and #anchor in README.md and docs/*.md names a file and a heading that exist."""
    assert len(PAGES) >= 6, PAGES
    problems = [problem for page in PAGES for problem in broken_links(page)]
    assert problems == []


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        pytest.param("Is the watchdog alive?", "is-the-watchdog-alive", id="punctuation"),
        pytest.param("`status --json`", "status---json", id="code-and-hyphens"),
        pytest.param("/run is full", "run-is-full", id="leading-slash"),
        pytest.param("The run's time limit", "the-runs-time-limit", id="apostrophe"),
        pytest.param("motorcade-leadgen-watchdog.service and .timer", "motorcade-leadgen-watchdogservice-and-timer",
                     id="dots"),
        pytest.param("What happens when...", "what-happens-when", id="ellipsis"),
        pytest.param("Day-2 cheat sheet", "day-2-cheat-sheet", id="digits"),
    ],
)  # fmt: skip
def test_slug_follows_githubs_rules(heading: str, expected: str) -> None:
    """Anchors are computed as GitHub computes them."""
    assert slug(heading) == expected


def test_the_link_check_catches_a_missing_file_a_missing_anchor_and_skips_code(tmp_path: Path) -> None:
    """A link to a missing file or heading is reported; links in code, comments and to other schemes are not."""
    (tmp_path / "other.md").write_text("# Title\n\n## Twice\n\n## Twice\n\n```\n## Not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#twice-1) [ok](#page) [ok](https://example.com/x#y) `[code](nowhere.md)`\n"
        "<!-- [comment](nowhere.md) -->\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](missing.md) [bad](other.md#not-a-heading) [bad](#nope) [bad](other.md#twice-2)\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#not-a-heading: no such anchor in other.md",
        "page.md: #nope: no such anchor in page.md",
        "page.md: other.md#twice-2: no such anchor in other.md",
    ]


def test_readme_is_short_and_in_the_order_on_call_reads_it() -> None:
    """The README is at most 250 lines, with its sections in the issue's order."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    headings = re.findall(r"^## (.+)$", COMMENT.sub("", FENCE.sub("", text)), re.M)
    assert headings == README_SECTIONS
    cheat = section(text, "Day-2 cheat sheet")
    rows = [row for row in cheat.splitlines() if row.startswith("| ") and "](" in row]
    assert len(rows) >= 7
    for row in rows:  # one command per task, each linking to its detail
        assert len(re.findall(r"`[^`]+`", row.split("|")[2])) == 1, row


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_lines_fit_a_terminal(page: Path) -> None:
    """Prose lines are at most 160 characters and table rows at most 200."""
    text = COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), FENCE.sub(lambda m: "\n" * m.group(0).count("\n"),
                                                                       page.read_text()))  # fmt: skip
    for number, line in enumerate(text.splitlines(), 1):
        limit = 200 if line.startswith("|") else 160
        assert len(line) <= limit, f"{page.name}:{number}: {len(line)} characters"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def isolated() -> list[str]:
    """A shell in new network and mount namespaces (loopback up, /tmp a private tmpfs), or skip/fail as e2e does."""
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root for unshare -n -m"
    elif not shutil.which("unshare") or not shutil.which("ip"):
        reason = "needs unshare (util-linux) and ip (iproute2)"
    if reason:
        if os.environ.get("LEADGEN_REQUIRE_E2E") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    setup = 'ip link set lo up; mount -t tmpfs tmpfs /tmp; eval "$1"'
    return ["unshare", "--net", "--mount", "sh", "-ec", setup, "sh"]


def normalise(line: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", line.strip())


def test_readme_check_command_prints_what_the_readme_shows() -> None:
    """`check` with nothing on port 8000 prints the README's CRITICAL refused line and exits 2; with the README's
    one-line server it passes: both run verbatim from the README, in a network namespace of their own."""
    text = section((REPO / "README.md").read_text(), "The two commands")
    blocks = bash_blocks(text)
    check, server = blocks[0].strip(), blocks[1].strip()
    assert check == "python3 leadgen_watchdog.py check"
    shown = re.search(r"```\n(CRITICAL: .*)\n```", text).group(1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env = {key: value for key, value in env.items() if not key.startswith("LEADGEN_WATCHDOG_")}

    # The checkout may live under /tmp (a mktemp clone), which isolated() hides: run from a copy in /var/tmp.
    work = Path(tempfile.mkdtemp(prefix="lg-readme-", dir="/var/tmp"))
    try:
        shutil.copy2(REPO / "leadgen_watchdog.py", work / "leadgen_watchdog.py")
        fresh, served = readme_check_runs(check, server, work, env)
    finally:
        shutil.rmtree(work)
    assert fresh.returncode == 2, fresh.stdout + fresh.stderr
    assert normalise(fresh.stdout) == normalise(shown)
    assert "exits 2" in text and "CRITICAL" in text
    assert served.returncode == 0, served.stdout + served.stderr
    assert served.stdout.splitlines()[-1].startswith("OK: health check passed status=200 ")
    assert "`OK: health check\npassed status=200 ...`, exit 0" in text


def readme_check_runs(check: str, server: str, cwd: Path, env: dict) -> tuple:
    """The README's check alone, then with its one-line server, each in a namespace of its own."""
    fresh = subprocess.run([*isolated(), check], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    script = f"({server}) >/dev/null 2>&1 & for i in $(seq 50); do {check} && exit 0; sleep 0.1; done; exit 1"
    served = subprocess.run([*isolated(), script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return fresh, served


DOC_DIR = "/usr/local/share/doc/motorcade-leadgen/"


def test_units_documentation_names_pages_that_ship() -> None:
    """Each unit's Documentation= file: URL names a page of this repository, where install.sh puts the docs."""
    units = sorted((REPO / "units").glob("*.service")) + sorted((REPO / "units").glob("*.timer"))
    assert units
    for unit in units:
        urls = [url for line in unit.read_text().splitlines() if line.startswith("Documentation=")
                for url in line.split("=", 1)[1].split()]  # fmt: skip
        pages = [url[len("file:" + DOC_DIR) :] for url in urls if url.startswith("file:")]
        assert pages, f"{unit.name}: no Documentation=file:{DOC_DIR}..."
        for page in pages:
            assert (REPO / page).is_file(), f"{unit.name}: {page} is not in the repository"
            assert all(url.startswith(("file:" + DOC_DIR, "man:", "https:")) for url in urls), urls
