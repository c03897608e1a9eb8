"""Checks of the committed README and docs: generated sections up to date, the README short and its first
screens useful, every step written up."""

from pathlib import Path

import pytest

from conftest import ROOT
from tinymnist.model import REGISTRY
from tinymnist.report import pages, update_page

pytestmark = pytest.mark.artifacts  # checks committed docs against the records and the code

README = ROOT / "README.md"
STEPS = ROOT / "docs" / "steps.md"


def test_every_generated_section_matches_the_committed_records(monkeypatch):
    """Every generated section of README.md and docs/*.md equals what `tinymnist report` makes from results/
    now (links are relative to each page, as `tinymnist report` run from the project's root makes them)."""
    monkeypatch.chdir(ROOT)
    found = pages()
    assert Path("README.md") in found and Path("docs/steps.md") in found and Path("docs/results.md") in found
    stale = [str(page) for page in found if update_page(page, Path("results"), write=False)]
    assert not stale, f"out of date (run `tinymnist report`): {stale}"


def test_readme_is_short_and_answers_on_its_first_screens():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    first = "\n".join(lines[:40])
    assert "<!-- BEGIN headline -->" in first and "**final**" in first  # the results box comes first
    head = "\n".join(lines[:120])
    assert "./scripts/train.sh" in head and "./scripts/test.sh" in head and "## Add a step" in head


def test_readme_gives_the_two_setup_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    assert "./scripts/train.sh" in text and "./scripts/test.sh" in text
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_model_has_a_target_results_analysis_section():
    text = STEPS.read_text()
    assert "<!-- BEGIN overview -->" in text.split("### Step 1:")[0]  # the overview table comes first
    for n in range(1, len(REGISTRY) + 1):
        start = text.index(f"### Step {n}:")
        block = text[start : text.find("### Step", start + 1)]
        for heading in ("**Target**", "**Results**", "**Analysis**"):
            assert heading in block, (n, heading)
        assert f"<!-- BEGIN step:Model_{n} -->" in block
