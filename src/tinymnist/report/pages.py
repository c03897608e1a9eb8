"""The project's pages: README.md and docs/*.md, whose generated sections (the text between
`<!-- BEGIN key -->` and `<!-- END key -->`) are rewritten from the records, and the figures they show.

Links in a section are made relative to the page's folder, so the same section works in README.md and in docs/.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from ..judge import GOALS, TARGET
from ..model import REGISTRY
from .common import DOCS, ROLE_CURVES, ReportError, load_records, role_holder, write_file
from .sections import section

SECTION = re.compile(r"(<!-- BEGIN (?P<key>[^ ]+) -->\n)(?P<body>.*?)(<!-- END (?P=key) -->)", re.DOTALL)


def render(text: str, results: Path, base: str = ".") -> str:
    """`text` (a page in the folder `base`, relative to the project's root) with every section regenerated."""
    return SECTION.sub(lambda m: m.group(1) + section(m.group("key"), results, base, text) + "\n" + m.group(4), text)


def render_readme(text: str, results: Path) -> str:
    return render(text, results, ".")


def pages(readme: Path = Path("README.md"), docs: Path = Path(DOCS)) -> list[Path]:
    """The pages with generated sections: the README and every Markdown file in `docs`."""
    return [readme, *sorted(docs.glob("*.md"))]


def update_page(page: Path, results: Path, write: bool = True) -> bool:
    """Regenerates a page's sections; returns whether anything differed (and wrote it, if `write`). Links are
    made relative to the page's folder, taken relative to the current directory (the project's root)."""
    try:
        text = page.read_text()
    except OSError as e:
        raise ReportError(f"cannot read {page}: {e.strerror}") from None
    base = posixpath.relpath(page.parent.resolve().as_posix(), Path.cwd().resolve().as_posix())
    new = render(text, results, base)
    if new != text and write:
        write_file(page, new.encode())
    return new != text


def role_records(results: Path) -> dict[str, list[dict]]:
    """The records of the models holding a role, keyed "Model_N (role)" for the figure's panel titles."""
    holders = {g.role: role_holder(g.role) for g in GOALS}  # final first, as in the results box
    return {f"{name} ({role})": load_records(results, name) for role, name in holders.items() if name}


def draw_figures(results: Path, fig_dir: Path, data_dir=None) -> list[Path]:
    """The figures of the README: curves from the records, mistakes and confusion of the final model."""
    from .. import figures
    from ..data import load_mnist
    from ..model import get_entry, log_probs
    from ..records import load_checkpoint

    by_model = {m: load_records(results, m) for m in REGISTRY}
    made = [fig_dir / "test_curves.png", fig_dir / "train_vs_test.png", fig_dir / ROLE_CURVES]
    figures.test_curves(by_model, made[0], TARGET)
    figures.train_vs_test(by_model, made[1])
    figures.test_curves(role_records(results), made[2], TARGET, "every seed of the final and the tiny model")
    final = get_entry("final").name
    ckpt = results / final / "seed1.pt"
    if ckpt.is_file():
        _, model, _ = load_checkpoint(ckpt)
        data = load_mnist(data_dir)
        preds = log_probs(model, data.test_images).argmax(1)
        wrong = int((preds != data.test_labels).sum())
        title = f"{final} (seed 1): the {wrong} test digits it gets wrong, true→predicted"
        figures.mistakes(data.test_images, data.test_labels, preds, fig_dir / "mistakes.png", title)
        figures.confusion(data.test_labels, preds, fig_dir / "confusion.png", f"{final} (seed 1): confusion")
        made += [fig_dir / "mistakes.png", fig_dir / "confusion.png"]
    return made
