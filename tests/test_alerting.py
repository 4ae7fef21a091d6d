"""The Alertmanager example under the real amtool, and every runbook_url against docs/runbook.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from exporter import require

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "monitoring/leadgen-watchdog.rules.yml"
AM_EXAMPLE = REPO / "monitoring/alertmanager.example.yml"
RUNBOOK = REPO / "docs/runbook.md"
AMTOOL = "/usr/bin/amtool"
RECEIVER = {"critical": "leadgen-page", "warning": "leadgen-ticket"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    require(AMTOOL)
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def slug(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", markdown, re.MULTILINE)}


# The runbook


def test_every_runbook_url_names_a_heading_of_the_runbook() -> None:
    """Each rule's runbook_url is docs/runbook.md#ANCHOR, and the runbook has that heading."""
    have = anchors(RUNBOOK.read_text())
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", f"{rule['alert']}: {url}"
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: {url}"
        assert anchor in have, f"{rule['alert']}: docs/runbook.md has no heading for #{anchor}"


def test_each_runbook_section_says_what_it_means_what_to_check_the_commands_and_when_to_escalate() -> None:
    """Every alert's section has the four parts the issue asks for, and a command block."""
    text = RUNBOOK.read_text()
    for rule in rules():
        name = rule["alert"]
        section = re.split(r"\n## ", text.split(f"\n## {name}\n", 1)[1], maxsplit=1)[0]
        for part in ("What it means", "Check first", "Commands", "Escalate"):
            assert f"**{part}" in section, f"{name}: no **{part}**"
        assert "```" in section, f"{name}: no commands"


def test_anchor_check_catches_a_renamed_heading() -> None:
    """The check above can fail: a heading renamed in the runbook loses its anchor."""
    text = RUNBOOK.read_text().replace("\n## LeadgenHumanNeeded\n", "\n## Leadgen human needed\n")
    assert "leadgenhumanneeded" in anchors(RUNBOOK.read_text())
    assert "leadgenhumanneeded" not in anchors(text)


# The Alertmanager example


def test_amtool_check_config_accepts_the_example() -> None:
    """`amtool check-config` (as CI runs it) accepts the example with its inhibitions and receivers."""
    proc = amtool("check-config", str(AM_EXAMPLE.relative_to(REPO)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    assert " - 3 inhibit rules\n - 2 receivers\n" in proc.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        pytest.param({"severity": "critical", "service": "motorcade-leadgen"}, "leadgen-page", id="critical-pages"),
        pytest.param({"severity": "warning", "service": "motorcade-leadgen"}, "leadgen-ticket", id="warning-tickets"),
        *(
            pytest.param(
                {"alertname": rule["alert"], "instance": "web1:9100", **rule["labels"]},
                RECEIVER[rule["labels"]["severity"]],
                id=rule["alert"],
            )
            for rule in rules()
        ),
    ],
)
def test_amtool_routes_each_severity_to_its_receiver(labels: dict[str, str], receiver: str) -> None:
    """`amtool config routes test`: critical goes to leadgen-page, warning to leadgen-ticket, every rule included."""
    argv = [f"{key}={value}" for key, value in labels.items()]
    config = f"--config.file={AM_EXAMPLE.relative_to(REPO)}"
    proc = amtool("config", "routes", "test", config, f"--verify.receivers={receiver}", *argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receiver
    other = next(name for name in RECEIVER.values() if name != receiver)
    assert amtool("config", "routes", "test", config, f"--verify.receivers={other}", *argv).returncode == 1


def test_example_groups_inhibits_and_mutes_as_documented() -> None:
    """Grouped by alertname and service; the fleet and watchdog-down inhibitions; a maintenance interval in use."""
    config = yaml.safe_load(AM_EXAMPLE.read_text())
    assert config["route"]["group_by"] == ["alertname", "service"]
    inhibit = {tuple(rule["source_matchers"]): rule for rule in config["inhibit_rules"]}
    fleet = inhibit[('alertname="LeadgenFleetDegraded"', 'service="motorcade-leadgen"')]
    assert fleet["target_matchers"] == ['service="motorcade-leadgen"', 'alertname!="LeadgenFleetDegraded"']
    down = inhibit[('alertname="LeadgenWatchdogDown"', 'service="motorcade-leadgen"')]
    assert "instance" in down["equal"]
    assert 'alertname=~"LeadgenApiUnhealthy|LeadgenApiRestarted|LeadgenHumanNeeded"' in down["target_matchers"]
    intervals = {interval["name"] for interval in config["time_intervals"]}
    muted = {name for route in config["route"]["routes"] for name in route.get("mute_time_intervals", [])}
    assert muted == intervals == {"leadgen-maintenance"}
    for receiver in config["receivers"]:
        assert set(receiver) == {"name", "webhook_configs"}, receiver["name"]
        assert receiver["webhook_configs"][0]["url"].endswith(f".invalid/{receiver['name']}"), "an operator sets it"


def test_amtool_rejects_a_route_to_a_missing_receiver(tmp_path: Path) -> None:
    """The CI check can fail: a route naming a receiver that is not defined is refused."""
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(AM_EXAMPLE.read_text().replace("  - name: leadgen-ticket\n", "  - name: leadgen-tickets\n"))
    proc = amtool("check-config", str(broken))
    assert proc.returncode != 0
    assert 'undefined receiver "leadgen-ticket"' in proc.stdout + proc.stderr


def test_links_between_the_alerting_docs_resolve() -> None:
    """Every (#anchor) and (runbook.md#anchor) link in docs/alerting.md and docs/runbook.md names a heading."""
    docs = {name: (REPO / "docs" / name).read_text() for name in ("alerting.md", "runbook.md")}
    links = 0
    for name, text in docs.items():
        for target, anchor in re.findall(r"\]\(([a-z]+\.md)?#([^)]+)\)", text):
            assert anchor in anchors(docs[target or name]), f"{name}: ({target}#{anchor})"
            links += 1
    assert links >= 3
