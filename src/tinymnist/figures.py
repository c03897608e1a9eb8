"""PNG figures drawn from the run records and the final model's checkpoint (matplotlib, an optional extra).

`tinymnist report` calls `draw_all`; each figure is a function of records or predictions, nothing else.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .errors import TinyMnistError
from .files import atomic_write_bytes, write_failure
from .records import accuracy_column

FIG_DIR = Path("docs/figures")
LABELS = {"test_acc": "test", "val_acc": "validation (no test set)"}


class FigureError(TinyMnistError):
    pass


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise FigureError("figures need matplotlib: pip install 'tinymnist[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "svg.hashsalt": "tinymnist"})
    return plt


def _save(fig, path: Path) -> None:
    """Draws into memory, then writes a temporary file beside `path` and renames it: a full disk keeps the
    figure already there, and a folder or pipe in the figure's place is refused (savefig would block on it)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})  # no version stamp
    finally:
        plt.close(fig)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise FigureError(write_failure(path, e)) from None


def _one_point(history: list[dict]) -> str | None:
    return "o" if len(history) == 1 else None  # a line through one epoch is drawn as nothing


def _epoch_axis(ax) -> None:
    low, high = ax.get_xlim()
    if high - low < 1:  # a panel of one-epoch runs: epoch 1 alone, not ticks at 0.96, 0.98, ...
        ax.set_xticks([1])
    ax.set_xlabel("epoch")


def _panels(plt, records_by_model: dict[str, list[dict]]):
    """A grid with one panel per model that has records; unused panels are hidden."""
    models = [m for m, recs in records_by_model.items() if recs]
    cols = max(1, min(4, len(models)))  # at least one panel, empty, when no model has records
    rows = max(1, (len(models) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    return fig, axes, list(zip(axes.flat, models))


def test_curves(records_by_model: dict[str, list[dict]], path: Path, target: float, what: str = "every seed") -> None:
    """Test accuracy per epoch, one line per seed, one panel per model (titled by its key); a run without a test
    set shows its validation accuracy, and says so."""
    plt = _plt()
    fig, axes, panels = _panels(plt, records_by_model)
    for ax, model in panels:
        late = []
        for rec in records_by_model[model]:
            h = rec["epochs"]
            col = accuracy_column(h)
            ax.plot([r["epoch"] for r in h], [r[col] for r in h], lw=1, marker=_one_point(h),
                    label=f"seed {rec['seed']}" + ("" if col == "test_acc" else " (validation)"))
            # the scale follows the second half of the run, where the target is decided; earlier points may
            # fall below the panel (a weight average starts near chance)
            late += [r[col] for r in h[len(h) // 2:]]
        ax.axhline(target, color="k", ls="--", lw=0.7)
        ax.set_title(model)
        ax.set_ylim(min(min(late) - 0.1, target - 0.3), max(max(late) + 0.1, target + 0.2))
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy (%)")
    fig.suptitle(f"Test accuracy per epoch, {what} (dashed: {target:.2f} %)")
    _save(fig, path)


def train_vs_test(records_by_model: dict[str, list[dict]], path: Path) -> None:
    """Train against test accuracy of each model's first seed: where it under- or overfits."""
    plt = _plt()
    fig, axes, panels = _panels(plt, records_by_model)
    for ax, model in panels:
        h = records_by_model[model][0]["epochs"]
        epochs = [r["epoch"] for r in h]
        col = accuracy_column(h)
        shown = [c for c in ("train_acc", col) if c in h[0]]
        for c in shown:
            ax.plot(epochs, [r[c] for r in h], label="train" if c == "train_acc" else LABELS[c],
                    marker=_one_point(h))
        ax.set_title(f"{model}, seed {records_by_model[model][0]['seed']}")
        # the scale follows training from the second epoch on (the first, and a weight average's early test
        # accuracy, are far below); a run of one epoch shows its only points
        low = min(r[shown[0]] for r in h[1:]) if len(h) > 1 else min(h[0][c] for c in shown)
        ax.set_ylim(low - 0.3, 100)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy (%)")
    axes[0, 0].legend()
    _save(fig, path)


def mistakes(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, path: Path, title: str) -> None:
    """Every test digit the model gets wrong (up to 100), with its true and predicted label."""
    plt = _plt()
    wrong = torch.nonzero(preds != labels).flatten()[:100]
    cols = 10
    rows = max(1, (len(wrong) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.05), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist()):
        ax.imshow(images[i].cpu(), cmap="gray_r")
        ax.set_title(f"{labels[i].item()}→{preds[i].item()}", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def confusion(labels: torch.Tensor, preds: torch.Tensor, path: Path, title: str) -> torch.Tensor:
    plt = _plt()
    matrix = torch.zeros(10, 10, dtype=torch.long)
    matrix.index_put_((labels.cpu(), preds.cpu()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    off = matrix.clone()
    off.fill_diagonal_(0)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(off, cmap="Reds")
    for t in range(10):
        for p in range(10):
            if matrix[t, p]:
                ax.text(p, t, str(matrix[t, p].item()), ha="center", va="center", fontsize=7,
                        color="k" if t != p else "0.4")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)
    return matrix
