from pathlib import Path

from conftest import ROOT
from tinymnist.model import REGISTRY
from tinymnist.report import render_readme

README = ROOT / "README.md"


def test_readme_figures_match_the_committed_records(monkeypatch):
    """Every generated section of the README equals what `tinymnist report` makes from results/ now."""
    monkeypatch.chdir(ROOT)  # links in the README are relative to it, as `tinymnist report` run there makes them
    text = README.read_text()
    assert "<!-- BEGIN step:Model_6 -->" in text and "<!-- BEGIN seeds -->" in text
    assert render_readme(text, Path("results")) == text, "README is stale: run `tinymnist report`"


def test_readme_gives_the_two_setup_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    assert "./scripts/train.sh" in text and "./scripts/test.sh" in text
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_model_has_a_target_results_analysis_section():
    text = README.read_text()
    for n in range(1, len(REGISTRY) + 1):
        start = text.index(f"### Step {n}:")
        block = text[start : text.find("### Step", start + 1)]
        for heading in ("**Target**", "**Results**", "**Analysis**"):
            assert heading in block, (n, heading)
        assert f"<!-- BEGIN step:Model_{n} -->" in block
