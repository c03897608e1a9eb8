"""The training engine as plain functions: `train_one_epoch`, `evaluate`, `fit`.

They take tensors already on the device and return numbers; printing and writing files is the caller's
business (the CLI layers a progress bar and records on top through the `on_batch` / `on_epoch` hooks).
`fit` trains the model it is given, prepared for speed by `runtime.apply`, and returns the model it trained
beside the history: the caller's own object is left as it was.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment_batch
from .data import MNIST, standardise, to_unit
from .errors import TinyMnistError
from .model import log_probs
from .recipes import Augment, Recipe, lr_at
from .runtime import Runtime, apply, optimizer_parameters, weight_average
from .usernet import forward

PLAIN = Runtime()  # PyTorch's own operations: the default where a runtime is not given


def set_seed(seed: int) -> None:
    """The one place where runs are seeded (Python, and torch on every device)."""
    random.seed(seed)
    torch.manual_seed(seed)


class DeviceError(TinyMnistError):
    pass


def pick_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then MPS, then CPU; an explicit device that is not there is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise DeviceError(f"device {name!r} is not available on this machine")
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}; valid: auto, cpu, cuda, mps")
    return torch.device(name)


def prepare(images: torch.Tensor, augment: Augment | None, runtime: Runtime) -> torch.Tensor:
    """uint8 (B, 28, 28) -> the network's input (B, 1, 28, 28), augmented on the way when the recipe says so."""
    x = to_unit(images)
    if augment is not None:
        x = augment_batch(x, augment, grid_fn=runtime.grid_fn)
    x = standardise(x)
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's parameters: over their one flat tensor when the model was
    prepared by `runtime.apply`, in which case zero the gradients with `zero_grad(set_to_none=False)`."""
    params = optimizer_parameters(model)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
        )
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def make_ema(model: nn.Module, recipe: Recipe) -> nn.Module | None:
    """The exponential moving average of the weights and BatchNorm statistics, updated after every step.

    It is what gets evaluated and saved when `recipe.ema` > 0: it weighs the last 1 / (1 - ema) steps most
    (a thousand at 0.999), so it is steadier from epoch to epoch than the weights of any single step. It
    starts from the initial weights, so the first epochs evaluate a blend still dominated by them.
    """
    return weight_average(model, recipe.ema) if recipe.ema else None


class Ensemble(nn.Module):
    """Several models as one: the mean of their log-probabilities (a normalised geometric mean of their
    probabilities, so the ensemble is confident where its members agree)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def make_teacher(members: list[nn.Module], recipe: Recipe, runtime: Runtime, images: torch.Tensor | None = None
                 ) -> nn.Module | torch.Tensor | None:
    """The frozen model whose predictions the student learns from as well as the labels: the given teacher
    networks (loaded from checkpoints by the caller), one alone or several as an `Ensemble`.

    With `recipe.teacher_cache`, what is returned is instead the teacher's outputs for the training `images`
    as they are, computed here once (one row per image, for `train_one_epoch`).
    """
    if not members:
        return None
    members = [apply(member, Recipe(), runtime) for member in members]  # the runtime's kernels, for speed
    teacher = members[0] if len(members) == 1 else Ensemble(members)
    teacher.eval().requires_grad_(False)
    if recipe.teacher_cache:
        return log_probs(teacher, images, runtime.eval_batch_size)
    return teacher


def training_loss(out: torch.Tensor, y: torch.Tensor, recipe: Recipe, teacher_out: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with the labels (smoothed by `recipe.label_smoothing`); with a teacher, blended with the KL
    divergence from the teacher's softened class probabilities (Hinton et al., 2015), scaled by temperature^2
    to keep its gradients' size. `out` holds log-probabilities, which `cross_entropy` leaves as they are."""
    if recipe.label_smoothing:
        loss = F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing)
    else:
        loss = F.nll_loss(out, y)
    if teacher_out is None:
        return loss
    t = recipe.temperature
    soft = F.kl_div(
        F.log_softmax(out / t, dim=1), F.log_softmax(teacher_out / t, dim=1), log_target=True, reduction="batchmean"
    )
    return (1 - recipe.distill) * loss + recipe.distill * (soft * t**2)


@dataclass
class EpochStats:
    loss: float  # mean training loss per image: cross-entropy, blended with the distillation loss when taught
    acc: float  # percent
    correct: int
    total: int


# on_batch(step, steps, loss, running accuracy %): called every `report_every` steps and at the last one
BatchHook = Callable[[int, int, float, float], None]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    on_batch: BatchHook | None = None,
    report_every: int = 25,
    lr_at_step: Callable[[float], float] | None = None,
    ema: nn.Module | None = None,
    teacher: nn.Module | torch.Tensor | None = None,
    runtime: Runtime = PLAIN,
) -> EpochStats:
    """One pass over the training tensors in a fresh random order, in batches of `recipe.batch_size`.

    `lr_at_step(fraction of the epoch done)` sets the learning rate before each step, for schedules that
    change within an epoch; `ema` (see `make_ema`) is updated after each step; `teacher` (see
    `make_teacher`) sees the same augmented batch as the model, or, given as a tensor, holds its outputs for
    `images` as they are, row by row (`Recipe.teacher_cache`).
    """
    model.train()
    n, bs = len(images), recipe.batch_size
    order = torch.randperm(n, device=images.device)
    loss_sum = torch.zeros((), device=images.device)  # accumulated on the device: no sync per step
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    steps = (n + bs - 1) // bs
    for step in range(steps):
        idx = order[step * bs : (step + 1) * bs]
        if lr_at_step is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at_step(step / steps)
        x, y = prepare(images[idx], recipe.augment, runtime), labels[idx]
        out = forward(model, x, check=step == 0)  # a user's network's failure is one line naming its file and line
        teacher_out = None
        if isinstance(teacher, torch.Tensor):
            teacher_out = teacher[idx]
        elif teacher is not None:
            with torch.no_grad():
                teacher_out = teacher(x)
        loss = training_loss(out, y, recipe, teacher_out)
        optimizer.zero_grad(set_to_none=False)  # a flat gradient stays in place: its segments are the grads
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(idx)
        correct += (out.argmax(1) == y).sum()
        if on_batch is not None and (step == 0 or (step + 1) % report_every == 0 or step + 1 == steps):
            seen = min((step + 1) * bs, n)
            on_batch(step + 1, steps, loss.item(), 100.0 * correct.item() / seen)  # the only sync point
    c = int(correct.item())
    return EpochStats(loss_sum.item() / n, 100.0 * c / n, c, n)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> EpochStats:
    logp = log_probs(model, images, batch_size)
    loss = F.nll_loss(logp, labels, reduction="sum").item() / len(labels)
    c = int((logp.argmax(1) == labels).sum().item())
    return EpochStats(loss, 100.0 * c / len(labels), c, len(labels))


class Diverged(TinyMnistError):
    """The training loss became NaN or infinite; the state of the last good epoch is what remains."""


def training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict], ema: nn.Module | None = None
) -> dict:
    """Everything needed to continue a run exactly where it stopped (only tensors and plain data)."""
    state = {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # a snapshot, not the live momentum buffers
        "history": list(history),
        "rng": torch.get_rng_state(),
    }
    if ema is not None:
        state["ema"] = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, ema: nn.Module | None = None
) -> list[dict]:
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError:  # e.g. a state saved before the parameters were flattened (one optimizer tensor per layer)
        raise StateError(
            "the training state's optimizer does not fit this version of tinymnist; run without --resume to start again"
        ) from None
    if ema is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return list(state["history"])


class StateError(TinyMnistError):
    pass


# on_epoch(epoch row, training state after it): called after each epoch; the state can be saved to resume from
EpochHook = Callable[[dict, dict], None]


@dataclass
class Fit:
    history: list[dict]  # one row per epoch
    model: nn.Module  # the model trained (the weight average with `recipe.ema`), prepared by `runtime.apply`


def fit(
    model: nn.Module,
    data: MNIST,
    recipe: Recipe,
    runtime: Runtime = PLAIN,
    teachers: list[nn.Module] = (),
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
    resume: dict | None = None,
) -> Fit:
    """Trains a prepared copy of `model` (`runtime.apply`) for `recipe.epochs` epochs, evaluating after each.

    Returns the per-epoch history and the model trained: with `recipe.ema`, the moving average, which is
    what is evaluated. `teachers` (networks loaded by the caller) teach when the recipe has a teacher. With
    `resume` (a `training_state`), continues from the epoch after the last one it holds, with the same random
    stream, so the result equals that of an uninterrupted run. Raises `Diverged` when the training loss stops
    being finite. The last `recipe.clean_epochs` epochs train without augmentation. Data without test
    tensors (a search's) gives rows without test columns.
    """
    model = apply(model, recipe, runtime)
    optimizer = make_optimizer(model, recipe)
    ema = make_ema(model, recipe)
    teacher = make_teacher(list(teachers), recipe, runtime, data.train_images) if recipe.teacher else None
    evaluated = model if ema is None else ema.module
    history = restore_state(model, optimizer, resume, ema) if resume else []
    for epoch in range(len(history), recipe.epochs):
        lr = lr_at(recipe, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        per_step = (lambda f, e=epoch: lr_at(recipe, e + f)) if recipe.schedule == "onecycle" else None
        clean = epoch >= recipe.epochs - recipe.clean_epochs  # the last epochs see the digits as they are
        train = train_one_epoch(
            model, optimizer, data.train_images, data.train_labels, recipe.with_overrides(augment=None) if clean
            else recipe, on_batch, lr_at_step=per_step, ema=ema, teacher=teacher, runtime=runtime,
        )
        if not math.isfinite(train.loss):
            raise Diverged(f"the training loss became {train.loss} in epoch {epoch + 1}")
        row = {"epoch": epoch + 1, "train_loss": round(train.loss, 6), "train_acc": round(train.acc, 4)}
        if data.val_images is not None:
            val = evaluate(evaluated, data.val_images, data.val_labels, runtime.eval_batch_size)
            row.update(val_loss=round(val.loss, 6), val_acc=round(val.acc, 4), val_correct=val.correct)
        if data.test_images is not None:  # a search loads no test set (`load_mnist(test=False)`)
            test = evaluate(evaluated, data.test_images, data.test_labels, runtime.eval_batch_size)
            row.update(test_loss=round(test.loss, 6), test_acc=round(test.acc, 4), test_correct=test.correct)
        row.update(lr=lr, seconds=round(time.perf_counter() - start, 3))
        history.append(row)
        if on_epoch is not None:
            on_epoch(row, training_state(model, optimizer, history, ema))
    return Fit(history, evaluated)
