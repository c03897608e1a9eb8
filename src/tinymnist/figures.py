"""PNG figures drawn from the run records and the final model's checkpoint (matplotlib, an optional extra).

`tinymnist report` calls `draw_all`; each figure is a function of records or predictions, nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch

FIG_DIR = Path("docs/figures")


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("figures need matplotlib: pip install 'tinymnist[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "svg.hashsalt": "tinymnist"})
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})  # no version stamp: stable files


def _panels(plt, records_by_model: dict[str, list[dict]]):
    """A grid with one panel per model that has records; unused panels are hidden."""
    models = [m for m, recs in records_by_model.items() if recs]
    cols = min(4, len(models))
    rows = (len(models) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    return fig, axes, list(zip(axes.flat, models))


def test_curves(records_by_model: dict[str, list[dict]], path: Path, target: float, what: str = "every seed") -> None:
    """Test accuracy per epoch, one line per seed, one panel per model (titled by its key)."""
    plt = _plt()
    fig, axes, panels = _panels(plt, records_by_model)
    for ax, model in panels:
        for rec in records_by_model[model]:
            h = rec["epochs"]
            ax.plot([r["epoch"] for r in h], [r["test_acc"] for r in h], lw=1, label=f"seed {rec['seed']}")
        ax.axhline(target, color="k", ls="--", lw=0.7)
        ax.set_title(model)
        # the scale follows the second half of the run, where the target is decided; earlier points may fall
        # below the panel (a weight average starts near chance)
        late = [r["test_acc"] for rec in records_by_model[model] for r in rec["epochs"][len(rec["epochs"]) // 2:]]
        ax.set_ylim(min(min(late) - 0.1, target - 0.3), max(max(late) + 0.1, target + 0.2))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy (%)")
    fig.suptitle(f"Test accuracy per epoch, {what} (dashed: {target:.2f} %)")
    _save(fig, path)
    plt.close(fig)


def train_vs_test(records_by_model: dict[str, list[dict]], path: Path) -> None:
    """Train against test accuracy of each model's first seed: where it under- or overfits."""
    plt = _plt()
    fig, axes, panels = _panels(plt, records_by_model)
    for ax, model in panels:
        h = records_by_model[model][0]["epochs"]
        epochs = [r["epoch"] for r in h]
        ax.plot(epochs, [r["train_acc"] for r in h], label="train")
        ax.plot(epochs, [r["test_acc"] for r in h], label="test")
        ax.set_title(f"{model}, seed {records_by_model[model][0]['seed']}")
        ax.set_ylim(min(r["train_acc"] for r in h[1:]) - 0.3, 100)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy (%)")
    axes[0, 0].legend()
    _save(fig, path)
    plt.close(fig)


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
    plt.close(fig)


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
    plt.close(fig)
    return matrix
