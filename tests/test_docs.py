"""Every relative link and #anchor in README.md and docs/*.md resolves; records name their commit."""

import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from tinymnist.report import slug

pytestmark = pytest.mark.artifacts  # checks committed docs against the records and the code

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def no_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The text without code blocks and inline code, where a bracket is not a link."""
    return re.sub(r"`[^`\n]*`", "", no_code_blocks(text))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in no_code_blocks(page.read_text()).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z]+:", t)]


def test_the_link_checker_sees_links_and_headings():
    assert "results" in anchors(ROOT / "README.md") and "docs/steps.md" in links(ROOT / "README.md")
    assert slug("Step 41: small-batch statistics (`Model_41`)") == "step-41-small-batch-statistics-model_41"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and (dest.suffix != ".md" or anchor not in anchors(dest))):
            broken.append(target)
    assert not broken, broken


def test_git_commit_names_the_checkout():
    from tinymnist import records

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    commit = records.git_commit()
    assert commit is not None and re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    head = head.stdout.strip()
    assert commit.split("+")[0] == head


def test_git_commit_answers_from_any_working_directory(tmp_path, monkeypatch):
    from tinymnist import records

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    monkeypatch.chdir(tmp_path)  # not a checkout: the package's own folder is what counts
    records.git_commit.cache_clear()  # asked from here, not the answer cached when an earlier test asked
    try:
        assert records.git_commit() is not None
    finally:
        records.git_commit.cache_clear()


def test_report_check_fails_in_one_line_on_a_stale_page(tmp_path, monkeypatch, capsys):
    from tinymnist.cli import main

    monkeypatch.chdir(ROOT)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "page.md").write_text("<!-- BEGIN models -->\nstale\n<!-- END models -->\n")
    (tmp_path / "README.md").write_text("no sections\n")
    argv = ["report", "--check", "--no-figures", "--readme", str(tmp_path / "README.md"), "--docs", str(docs)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "page.md" in err and "README" not in err


def test_git_commit_flags_uncommitted_changes_to_the_package(tmp_path):
    """A copy of the package in a checkout of its own: "<sha>" when clean, "<sha>+dirty" once a file of the
    package changes; a new record in results/ (untracked) or a change outside the package does not count."""
    import os
    import shutil
    import sys

    shutil.copytree(ROOT / "src" / "tinymnist", tmp_path / "src" / "tinymnist",
                    ignore=shutil.ignore_patterns("weights", "__pycache__"))
    (tmp_path / "notes.md").write_text("a\n")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "copy")
    sha = git("rev-parse", "HEAD")
    probe = [sys.executable, "-c", "from tinymnist.records import git_commit; print(git_commit())"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}

    def commit():
        proc = subprocess.run(probe, cwd=ROOT.parent, env=env, capture_output=True, text=True, check=True)
        return proc.stdout.strip()

    (tmp_path / "notes.md").write_text("b\n")  # outside the package
    assert commit() == sha
    with open(tmp_path / "src" / "tinymnist" / "judge.py", "a") as f:
        f.write("# changed\n")
    assert commit() == f"{sha}+dirty"
