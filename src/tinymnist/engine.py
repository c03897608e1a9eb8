"""The training engine as plain functions: `train_one_epoch`, `evaluate`, `fit`.

They take tensors already on the device and return numbers; printing and writing files is the caller's
business (the CLI layers a progress bar and records on top through the `on_batch` / `on_epoch` hooks).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .augment import augment_batch
from .data import MEAN, STD, MNIST
from .flat import flat_pairs, flat_parameters, flatten_
from .ghost import use_ghost_batches
from .kernels import fuse_relu_batchnorm, fuse_relu_batchnorm_maxpool
from .model import use_fast_dropout
from .recipe import KERNELS, Recipe, lr_at
from .records import CheckpointError, load_checkpoint


def set_seed(seed: int) -> None:
    """The one place where runs are seeded (Python, and torch on every device)."""
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then MPS, then CPU; an explicit device that is not there is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda or name == "mps" and not mps:
        raise ValueError(f"device {name!r} is not available on this machine")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda, mps")
    return torch.device(name)


def prepare(images: torch.Tensor, augment=None, channels_last: bool = False, outer_grid: bool = False) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised float (B, 1, 28, 28), augmented on the way when asked (`outer_grid`:
    see `augment.random_affine`)."""
    x = images.unsqueeze(1).float().div_(255)
    if augment is not None:
        x = augment_batch(x, augment, outer_grid=outer_grid)
    x = (x - MEAN) / STD
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def configure(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Applies the recipe's speed settings to a freshly built model (none changes its parameters' values),
    and its ghost batches (`Recipe.ghost_batch`); its parameters and buffers end up in flat tensors
    (`flat.flatten_`), so the optimizer and the weight average update each group in one operation."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if recipe.dropout_impl == "fast" and on_cpu:
        use_fast_dropout(model)
    elif recipe.dropout_impl not in ("torch", "fast"):
        raise ValueError(f"unknown dropout_impl {recipe.dropout_impl!r}; valid: torch, fast")
    if recipe.kernels not in KERNELS:
        raise ValueError(f"unknown kernels {recipe.kernels!r}; valid: {', '.join(KERNELS)}")
    if recipe.kernels == "fast+pool" and on_cpu:
        fuse_relu_batchnorm_maxpool(model)
    if recipe.kernels != "torch" and on_cpu:
        fuse_relu_batchnorm(model)  # the pairs left
    if recipe.ghost_batch:  # not a speed setting: it changes what the BatchNorm layers compute in training
        use_ghost_batches(model, recipe.ghost_batch)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    return flatten_(model)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's parameters: over their one flat tensor when the model is
    flattened (`configure`), in which case zero the gradients with `zero_grad(set_to_none=False)`."""
    params = flat_parameters(model)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; valid: sgd, adam")


class ExponentialAverage(AveragedModel):
    """`AveragedModel` with an exponential moving average of the weights and BatchNorm statistics, updated
    with one operation per flat group (see `flat.py`) rather than per tensor, by the same arithmetic as
    `get_ema_multi_avg_fn`; its state dict is AveragedModel's."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)  # the averaging itself is update_parameters below
        flatten_(self.module)
        self.decay = decay
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._source = 0  # id() of the model the pairs were made for; 0: make them (again) at the next update
        self._first = True  # no update yet: the next one copies (read from n_averaged when the pairs are made)

    def load_state_dict(self, *args, **kwargs):
        self._source = 0
        return super().load_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._source != id(model):  # n_averaged is read here only, not at every step (a device sync)
            self._pairs, self._source = flat_pairs(self.module, model), id(model)
            self._first = bool(self.n_averaged == 0)
        for mine, theirs in self._pairs:
            if self._first:
                mine.copy_(theirs)
            elif mine.is_floating_point():
                mine.lerp_(theirs, 1 - self.decay)
            else:  # BatchNorm's step counters, as get_ema_multi_avg_fn averages them
                mine.copy_(mine * self.decay + theirs * (1 - self.decay))
        self.n_averaged += 1
        self._first = False


def make_ema(model: nn.Module, recipe: Recipe) -> AveragedModel | None:
    """The exponential moving average of the weights and BatchNorm statistics, updated after every step.

    It is what gets evaluated and saved when `recipe.ema` > 0: it weighs the last 1 / (1 - ema) steps most
    (a thousand at 0.999), so it is steadier from epoch to epoch than the weights of any single step. It
    starts from the initial weights, so the first epochs evaluate a blend still dominated by them.
    """
    if not recipe.ema:
        return None
    if not 0 < recipe.ema < 1:
        raise ValueError(f"ema must be between 0 and 1 (a decay per step), not {recipe.ema}")
    return ExponentialAverage(model, recipe.ema)


class Ensemble(nn.Module):
    """Several models as one: the mean of their log-probabilities (a normalised geometric mean of their
    probabilities, so the ensemble is confident where its members agree)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def make_teacher(
    recipe: Recipe, device: torch.device, images: torch.Tensor | None = None
) -> nn.Module | torch.Tensor | None:
    """The frozen model whose predictions the student learns from as well as the labels, when the recipe names one.

    It is loaded from the weights shipped with the package, so a run that learns from it can be repeated;
    with `teacher_seeds` > 1, the teacher's runs with seeds 1 to `teacher_seeds` teach as an `Ensemble`.
    With `teacher_cache`, what is returned is instead the teacher's outputs for the training `images` as they
    are, computed here once (one row per image, for `train_one_epoch`).
    """
    if recipe.teacher is None:
        if recipe.distill or recipe.teacher_cache:
            raise ValueError(f"{'distill > 0' if recipe.distill else 'teacher_cache'} needs a teacher")
        return None
    if not 0 < recipe.distill <= 1:
        raise ValueError(f"distill must be in (0, 1] when there is a teacher, not {recipe.distill}")
    if not recipe.temperature > 0:
        raise ValueError(f"temperature must be positive, not {recipe.temperature}")
    if recipe.teacher_seeds < 1:
        raise ValueError(f"teacher_seeds must be at least 1, not {recipe.teacher_seeds}")
    try:
        members = [load_checkpoint(recipe.teacher, device, seed)[1] for seed in range(1, recipe.teacher_seeds + 1)]
    except CheckpointError as e:
        raise CheckpointError(f"the recipe's teacher: {e}") from None
    members = [configure(member, recipe) for member in members]  # the recipe's layout and kernels, for speed
    teacher = members[0] if len(members) == 1 else Ensemble(members)
    teacher.eval().requires_grad_(False)
    if recipe.teacher_cache:
        if images is None:
            raise ValueError("teacher_cache: the teacher's outputs need the training images")
        return predict(teacher, images, recipe.eval_batch_size)
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
    ema: AveragedModel | None = None,
    teacher: nn.Module | torch.Tensor | None = None,
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
        x, y = prepare(images[idx], recipe.augment, recipe.channels_last, recipe.kernels != "torch"), labels[idx]
        out = model(x)
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


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Log-probabilities (N, 10) for uint8 images (N, 28, 28), in eval mode."""
    model.eval()
    return torch.cat([model(prepare(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> EpochStats:
    logp = predict(model, images, batch_size)
    loss = F.nll_loss(logp, labels, reduction="sum").item() / len(labels)
    c = int((logp.argmax(1) == labels).sum().item())
    return EpochStats(loss, 100.0 * c / len(labels), c, len(labels))


class Diverged(Exception):
    """The training loss became NaN or infinite; the state of the last good epoch is what remains."""


def training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict], ema: AveragedModel | None = None
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
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, ema: AveragedModel | None = None
) -> list[dict]:
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError:  # e.g. a state saved before the parameters were flattened (one optimizer tensor per layer)
        raise CheckpointError(
            "the training state's optimizer does not fit this version of tinymnist; run without --resume to start again"
        ) from None
    if ema is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return list(state["history"])


# on_epoch(epoch row, training state after it): called after each epoch; the state can be saved to resume from
EpochHook = Callable[[dict, dict], None]


def fit(
    model: nn.Module,
    data: MNIST,
    recipe: Recipe,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
    resume: dict | None = None,
) -> list[dict]:
    """Trains `model` for `recipe.epochs` epochs, evaluating after each; returns the per-epoch history.

    With `resume` (a `training_state`), continues from the epoch after the last one it holds, with the
    same random stream, so the result equals that of an uninterrupted run. Raises `Diverged` when the
    training loss stops being finite. With `recipe.ema`, the moving average is what is evaluated, and
    `model` ends holding it. The last `recipe.clean_epochs` epochs train without augmentation.
    """
    if recipe.clean_epochs < 0:
        raise ValueError(f"clean_epochs must be 0 or more, not {recipe.clean_epochs}")
    if not 0 <= recipe.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be at least 0 and below 1, not {recipe.label_smoothing}")
    configure(model, recipe)
    optimizer = make_optimizer(model, recipe)
    ema = make_ema(model, recipe)
    teacher = make_teacher(recipe, next(model.parameters()).device, data.train_images)
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
            else recipe, on_batch, lr_at_step=per_step, ema=ema, teacher=teacher,
        )
        if not math.isfinite(train.loss):
            raise Diverged(f"the training loss became {train.loss} in epoch {epoch + 1}")
        row = {"epoch": epoch + 1, "train_loss": round(train.loss, 6), "train_acc": round(train.acc, 4)}
        if data.val_images is not None:
            val = evaluate(evaluated, data.val_images, data.val_labels, recipe.eval_batch_size)
            row.update(val_loss=round(val.loss, 6), val_acc=round(val.acc, 4), val_correct=val.correct)
        test = evaluate(evaluated, data.test_images, data.test_labels, recipe.eval_batch_size)
        row.update(
            test_loss=round(test.loss, 6),
            test_acc=round(test.acc, 4),
            test_correct=test.correct,
            lr=lr,
            seconds=round(time.perf_counter() - start, 3),
        )
        history.append(row)
        if on_epoch is not None:
            on_epoch(row, training_state(model, optimizer, history, ema))
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return history
