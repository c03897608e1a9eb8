"""Speed, measured side by side: the project's pipeline against the conventional per-sample PIL pipeline.

The baseline is what the reference notebook ran: a map-style Dataset that turns each digit into a PIL image
and applies torchvision's RandomAffine(7, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10) and
ColorJitter(brightness=0.4, contrast=0.4), then ToTensor and Normalize, behind a DataLoader (batch 64,
shuffled, 2 workers). torchvision does not install beside the CPU build of PyTorch used here, so those
transforms are re-implemented below with the Pillow calls torchvision's PIL backend makes.
"""

from __future__ import annotations

import math
import random
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import MEAN, MNIST, STD
from .engine import fit, make_optimizer, make_teacher, train_one_epoch
from .model import create_model, get_entry
from .nets import replace_dropout
from .recipes import Augment, Recipe, lr_at
from .records import load_teachers
from .runtime import KERNELS, Runtime, apply
from .summary import summary_dict

# --- the baseline: torchvision's transforms, done per sample with Pillow ------------------------------


def inverse_affine(angle, translate, scale, shear_x, center) -> list[float]:
    """The 2x3 matrix PIL's Image.transform(AFFINE) needs (output -> input), as torchvision builds it."""
    rot, sx = math.radians(angle), math.radians(shear_x)
    cx, cy = center
    tx, ty = translate
    # forward: rotate by `angle` and x-shear by `shear_x`, scale, about the centre, then translate
    a, b = math.cos(rot), math.cos(rot) * math.tan(sx) - math.sin(rot)
    c, d = math.sin(rot), math.sin(rot) * math.tan(sx) + math.cos(rot)
    det = a * d - b * c
    m = [d / det / scale, -b / det / scale, 0.0, -c / det / scale, a / det / scale, 0.0]
    m[2] = m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] = m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


class PILAugmentedMNIST(Dataset):
    """Per-sample PIL augmentation, like torchvision.datasets.MNIST with a Compose of PIL transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, aug: Augment | None):
        self.images, self.labels, self.aug = images.cpu(), labels.cpu(), aug

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.frombytes("L", (28, 28), bytes(self.images[i].flatten().tolist()))
        if self.aug is not None:
            a = self.aug
            w, h = img.size
            angle = random.uniform(-a.rotation, a.rotation)
            tx = round(random.uniform(-a.translate * w, a.translate * w))
            ty = round(random.uniform(-a.translate * h, a.translate * h))
            scale = random.uniform(a.scale_min, a.scale_max)
            shear = random.uniform(-a.shear, a.shear)
            matrix = inverse_affine(angle, (tx, ty), scale, shear, (w * 0.5, h * 0.5))
            img = img.transform(img.size, Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=0)
            jitters = [
                lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(1 - a.brightness, 1 + a.brightness)),
                lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(1 - a.contrast, 1 + a.contrast)),
            ]
            random.shuffle(jitters)  # ColorJitter applies its adjustments in a random order
            for jitter in jitters:
                img = jitter(img)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, 28, 28).float().div_(255)
        return (x - MEAN) / STD, int(self.labels[i])


def baseline_loader(data: MNIST, aug: Augment | None, batch_size: int = 64, workers: int = 2) -> DataLoader:
    return DataLoader(PILAugmentedMNIST(data.train_images, data.train_labels, aug), batch_size=batch_size,
                      shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def baseline_train(model: nn.Module, loader: DataLoader, optimizer, batches: int) -> int:
    """The reference's loop: fetch, step, and read the loss back every batch (for its progress bar)."""
    model.train()
    seen = 0
    for i, (x, y) in enumerate(loader):
        if i == batches:
            break
        out = model(x)
        loss = F.nll_loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        seen += len(y)
    return seen


# --- measurements ---------------------------------------------------------------------------------------


def time_baseline(model_name: str, data: MNIST, batches: int, warmup: int = 5) -> float:
    """Images per second of the baseline pipeline training `model_name` as its recipe defines it."""
    recipe = get_entry(model_name).recipe
    model = create_model(model_name)
    optimizer = make_optimizer(model, recipe)
    loader = baseline_loader(data, recipe.augment)
    baseline_train(model, loader, optimizer, warmup)  # starts the workers
    start = time.perf_counter()
    seen = baseline_train(model, loader, optimizer, batches)
    return seen / (time.perf_counter() - start)


def time_fast(model_name: str, data: MNIST, recipe: Recipe, runtime: Runtime, batches: int, device, warmup: int = 5,
              tweak=None, autocast: bool = False) -> float:
    """Images per second of the project's pipeline on `batches` batches of `recipe.batch_size`.

    `tweak(model) -> model` and `autocast` (bfloat16) are for trying variants in `options`.
    """
    model = apply(create_model(model_name, recipe).to(device), recipe, runtime)
    if tweak is not None:
        model = tweak(model)
    optimizer = make_optimizer(model, recipe)
    n = recipe.batch_size
    # a taught model's steps include its teacher's forward pass, or with `teacher_cache` a look-up
    teachers = load_teachers(recipe, device)
    teacher = make_teacher(teachers, recipe, runtime, data.train_images[: max(warmup, batches) * n])
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)
    with ctx:
        train_one_epoch(model, optimizer, data.train_images[: warmup * n], data.train_labels[: warmup * n], recipe,
                        teacher=teacher, runtime=runtime)
    images, labels = data.train_images[: batches * n], data.train_labels[: batches * n]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with ctx:
        train_one_epoch(model, optimizer, images, labels, recipe, teacher=teacher, runtime=runtime)  # ends synchronised
    return len(labels) / (time.perf_counter() - start)


def option_variants(recipe: Recipe, runtime: Runtime) -> list[tuple[str, dict, dict, object, bool]]:
    """The speed options worth timing for a recipe on a runtime: (label, recipe overrides, runtime overrides,
    tweak(model) -> model or None, bfloat16 autocast), each changing one thing from `runtime`. The dropout
    variants appear only for a model with dropout."""
    dropout = recipe.dropout > 0
    impl = {"torch": "nn.Dropout", "fast": "FastDropout"}[runtime.dropout] if dropout else "no dropout"
    layout = "channels_last" if runtime.channels_last else "NCHW"
    start = f'batch {recipe.batch_size}, {impl}, {layout}, kernels="{runtime.kernels}"'
    variants = [(start, {}, {}, None, False)]
    if dropout:
        other = "fast" if runtime.dropout == "torch" else "torch"
        variants += [
            (f"dropout sampler {other!r} instead of {runtime.dropout!r}", {}, {"dropout": other}, None, False),
            ("nn.Dropout2d (whole channels: another regulariser)", {}, {"dropout": "torch"},
             lambda m: replace_dropout(m, nn.Dropout2d), False),
            ("no dropout", {"dropout": 0.0}, {}, None, False),
        ]
    variants.append((f"{'NCHW' if runtime.channels_last else 'channels_last'} instead of {layout}", {},
                     {"channels_last": not runtime.channels_last}, None, False))
    variants += [(f'kernels="{k}" instead of "{runtime.kernels}"' + (" (PyTorch's own)" if k == "torch" else ""), {},
                  {"kernels": k}, None, False) for k in KERNELS if k != runtime.kernels]
    variants.append(("bfloat16 autocast", {}, {}, None, True))
    variants += [(f"batch {b}", {"batch_size": b}, {}, None, False) for b in (128, 256) if b != recipe.batch_size]
    if dropout:
        variants.append(("no dropout, batch 256", {"dropout": 0.0, "batch_size": 256}, {}, None, False))
    return variants


def options(model_name: str, data: MNIST, device, runtime: Runtime, images: int = 12800, repeat: int = 3) -> list[dict]:
    """The project pipeline's images/s under each speed option (`option_variants`), on `model_name` as its
    recipe defines it, then on 1 thread and compiled: the median of `repeat` rounds, each timing every variant
    once on the same number of images. torch.compile's first round, compiling included, is reported apart."""
    base = get_entry(model_name).recipe
    threads = torch.get_num_threads()
    runs = [(label, base.with_overrides(**r), runtime.with_overrides(**rt), tweak, autocast, threads)
            for label, r, rt, tweak, autocast in option_variants(base, runtime)]
    if threads > 1:
        runs.append((f"1 thread instead of {threads}", base, runtime, None, False, 1))
    compiled = "torch.compile (compile time excluded)"
    runs.append((compiled, base, runtime, torch.compile, False, threads))
    timings: dict[str, list[float]] = {label: [] for label, *_ in runs}
    first_compile_s = None
    for _ in range(repeat):
        for label, recipe, rt, tweak, autocast, n_threads in runs:
            torch.set_num_threads(n_threads)
            start = time.perf_counter()
            try:
                img_s = time_fast(model_name, data, recipe, rt, max(images // recipe.batch_size, 10), device,
                                  tweak=tweak, autocast=autocast)
            finally:
                torch.set_num_threads(threads)
            if label == compiled and first_compile_s is None:
                first_compile_s = time.perf_counter() - start
            timings[label].append(img_s)
    rows = []
    for label, recipe, *_ in runs:
        row = {"variant": label, "batch_size": recipe.batch_size, "img_s": round(statistics.median(timings[label]), 1),
               "runs": [round(v, 1) for v in timings[label]]}
        if label == compiled:
            row["total_seconds_with_compile"] = round(first_compile_s, 1)
        rows.append(row)
    return rows


def train_flops(model_name: str) -> int:
    """FLOPs to train on one image: forward multiply-adds x 2, and the backward pass costs about twice the forward."""
    return 6 * summary_dict(model_name, create_model(model_name))["macs"]


def compare(model_name: str, data: MNIST, device, runtime: Runtime, batches: int = 100, repeat: int = 3,
            **overrides) -> dict:
    """Median images/s of each pipeline over `repeat` alternating repetitions on the same network: the
    project's with `runtime` and the recipe changed by `overrides`, the baseline's as the recipe says."""
    fast_recipe = get_entry(model_name).recipe.with_overrides(**overrides)
    fast, base = [], []
    for _ in range(repeat):
        fast.append(time_fast(model_name, data, fast_recipe, runtime, batches, device))
        base.append(time_baseline(model_name, data, max(batches * fast_recipe.batch_size // 64, 20)))
    flops = train_flops(model_name)
    f, b = statistics.median(fast), statistics.median(base)
    return {
        "model": model_name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": fast_recipe.batch_size,
        "settings": {"dropout_impl": runtime.dropout, "channels_last": runtime.channels_last,
                     "kernels": runtime.kernels},
        "fast_img_s": round(f, 1),
        "baseline_img_s": round(b, 1),
        "ratio": round(f / b, 2),
        "fast_runs": [round(v, 1) for v in fast],
        "baseline_runs": [round(v, 1) for v in base],
        "train_flops_per_image": flops,
        "fast_gflop_s": round(flops * f / 1e9, 2),
        "baseline_gflop_s": round(flops * b / 1e9, 2),
    }


def baseline_test(model: nn.Module, loader: DataLoader) -> float:
    """The reference's test loop: its DataLoader over the test set, loss and accuracy read back per batch."""
    model.eval()
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += F.nll_loss(out, y, reduction="sum").item()
            correct += int(out.argmax(1).eq(y).sum().item())
            total += len(y)
    return 100.0 * correct / total


def baseline_run(reference: str, data: MNIST, epochs: int) -> tuple[float, float]:
    """The reference pipeline's whole run, measured as the reference ran it: each epoch its DataLoader over the
    whole training set (per-sample PIL augmentation, 2 workers), then its own test loop over a DataLoader of
    the test set; its schedule stepped per epoch. Returns (seconds, last test accuracy)."""
    recipe = get_entry(reference).recipe
    torch.manual_seed(0)
    model = create_model(reference)
    optimizer = make_optimizer(model, recipe)
    start = time.perf_counter()
    loader = baseline_loader(data, recipe.augment)
    test_loader = DataLoader(PILAugmentedMNIST(data.test_images, data.test_labels, None), batch_size=64,
                             num_workers=2, persistent_workers=True)
    acc = 0.0
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, epoch)
        baseline_train(model, loader, optimizer, len(loader))
        acc = baseline_test(model, test_loader)
    return time.perf_counter() - start, acc


def end_to_end(model_name: str, reference: str, data: MNIST, device, runtime: Runtime, epochs: int,
               repeat: int = 1) -> dict:
    """Wall time of `epochs` epochs of `model_name` with its own recipe and per-epoch evaluation, against the
    reference model's whole run of as many epochs with the baseline pipeline (`baseline_run`): both measured.

    With `repeat` > 1, the two alternate that many times, each whole run from the same seed, and the medians
    are reported beside every run's figure."""
    recipe = get_entry(model_name).recipe.with_overrides(epochs=epochs)
    ref_recipe = get_entry(reference).recipe
    fast, base, base_acc = [], [], []
    for _ in range(repeat):
        torch.manual_seed(0)
        model = create_model(model_name).to(device)
        start = time.perf_counter()
        history = fit(model, data, recipe, runtime, load_teachers(recipe, device)).history
        fast.append(time.perf_counter() - start)
        seconds, acc = baseline_run(reference, data, epochs)
        base.append(seconds)
        base_acc.append(acc)
    fast_s, base_s = statistics.median(fast), statistics.median(base)
    return {
        "model": model_name,
        "reference": reference,
        "epochs": epochs,
        "device": str(device),
        "repeat": repeat,
        "fast_seconds": round(fast_s, 1),
        "fast_last_test_acc": history[-1]["test_acc"],
        "baseline_seconds": round(base_s, 1),
        "baseline_method": "measured",  # a whole run of the reference pipeline, evaluation included
        "baseline_last_test_acc": round(base_acc[-1], 2),
        "baseline_batch_size": ref_recipe.batch_size,
        "ratio": round(base_s / fast_s, 2),
        "fast_runs": [round(v, 1) for v in fast],
        "baseline_runs": [round(v, 1) for v in base],
        "runtime": runtime.to_dict(),
        # a taught model's time includes its teacher's outputs, not the teacher's own training
        "teacher": recipe.teacher and f"{recipe.teacher_seeds} {get_entry(recipe.teacher).name} run(s)",
    }


def machine() -> dict:
    """What the figures were measured on."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "system": platform.system()}
