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

from .data import MEAN, STD, MNIST
from .engine import configure, evaluate, fit, make_optimizer, make_teacher, train_one_epoch
from .model import create_model, get_entry, replace_dropout
from .recipe import KERNELS, Augment, Recipe
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


def time_fast(model_name: str, data: MNIST, recipe: Recipe, batches: int, device, warmup: int = 5,
              tweak=None, autocast: bool = False) -> float:
    """Images per second of the project's pipeline on `batches` batches of `recipe.batch_size`.

    `tweak(model) -> model` and `autocast` (bfloat16) are for trying variants in `options`.
    """
    model = configure(create_model(model_name, dropout=recipe.dropout).to(device), recipe)
    if tweak is not None:
        model = tweak(model)
    optimizer = make_optimizer(model, recipe)
    n = recipe.batch_size
    # a taught model's steps include its teacher's forward pass, or with `teacher_cache` a look-up
    teacher = make_teacher(recipe, device, data.train_images[: max(warmup, batches) * n])
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)
    with ctx:
        train_one_epoch(model, optimizer, data.train_images[: warmup * n], data.train_labels[: warmup * n], recipe,
                        teacher=teacher)
    images, labels = data.train_images[: batches * n], data.train_labels[: batches * n]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with ctx:
        train_one_epoch(model, optimizer, images, labels, recipe, teacher=teacher)  # ends with .item(): synchronised
    return len(labels) / (time.perf_counter() - start)


def project_settings(recipe: Recipe) -> dict:
    """The project pipeline's speed settings for a network trained as `recipe` defines it: FastDropout,
    channels-last activations and the fast CPU kernels (or the recipe's own, when it names faster ones).
    They were measured faster together on Model_6 and Model_7, whose recipes use none of them: in
    channels-last, PyTorch's BatchNorm is slow for 8 or 24 channels, which the fast kernels replace (see the
    README's Performance section and `bench --options`)."""
    kernels = "fast" if recipe.kernels == "torch" else recipe.kernels
    return {"dropout_impl": "fast", "channels_last": True, "kernels": kernels}


def option_variants(base: Recipe) -> tuple[str, dict, list[tuple[str, dict, object, bool]]]:
    """The speed options worth timing for a recipe: (label of the starting point, its overrides, variants).

    The recipe as it is comes first; the other variants start from the project's settings (`project_settings`)
    and change one thing each. Each variant is (label, recipe overrides, tweak(model) -> model or None,
    bfloat16 autocast). The dropout variants appear only for a model with dropout.
    """
    dropout = base.dropout > 0
    fast = project_settings(base)
    names = {"dropout_impl": "FastDropout", "channels_last": "channels_last", "kernels": f'kernels="{fast["kernels"]}"'}
    changed = [names[k] for k, v in fast.items() if getattr(base, k) != v and (k != "dropout_impl" or dropout)]
    start_label = "project settings" if changed else "as the recipe"
    impl = {"torch": "nn.Dropout", "fast": "FastDropout"}[base.dropout_impl] if dropout else "no dropout"
    layout = "channels_last" if base.channels_last else "NCHW"
    variants = [(f'as the recipe: batch {base.batch_size}, {impl}, {layout}, kernels="{base.kernels}"', {}, None, False)]
    if changed:
        variants.append((f"{start_label}: {' + '.join(changed)}", fast, None, False))
    if dropout:
        variants += [
            (f"{start_label}, nn.Dropout instead of FastDropout", {**fast, "dropout_impl": "torch"}, None, False),
            (f"{start_label}, nn.Dropout2d (whole channels: another regulariser)", fast,
             lambda m: replace_dropout(m, nn.Dropout2d), False),
            (f"{start_label}, no dropout", {**fast, "dropout": 0.0}, None, False),
        ]
    variants.append((f"{start_label}, NCHW instead of channels_last", {**fast, "channels_last": False}, None, False))
    variants += [(f'{start_label}, kernels="{k}" instead of "{fast["kernels"]}"' + (" (PyTorch's own)" if k == "torch" else ""),
                  {**fast, "kernels": k}, None, False) for k in KERNELS if k != fast["kernels"]]
    variants.append((f"{start_label} + bfloat16 autocast", fast, None, True))
    variants += [(f"{start_label}, batch {b}", {**fast, "batch_size": b}, None, False) for b in (128, 256) if b != base.batch_size]
    if dropout:
        variants.append((f"{start_label}, no dropout, batch 256", {**fast, "dropout": 0.0, "batch_size": 256}, None, False))
    return start_label, fast, variants


def options(model_name: str, data: MNIST, device, images: int = 12800, repeat: int = 3) -> list[dict]:
    """The project pipeline's images/s under each speed option (`option_variants`), on `model_name` as its
    recipe defines it, then on 1 thread and compiled: the median of `repeat` rounds, each timing every variant
    once on the same number of images. torch.compile's first round, compiling included, is reported apart."""
    base = get_entry(model_name).recipe
    start_label, fast, variants = option_variants(base)
    threads = torch.get_num_threads()
    runs = [(label, base.with_overrides(**overrides), tweak, autocast, threads)
            for label, overrides, tweak, autocast in variants]
    if threads > 1:
        runs.append((f"{start_label}, 1 thread instead of {threads}", base.with_overrides(**fast), None, False, 1))
    compiled = f"{start_label} + torch.compile (compile time excluded)"
    runs.append((compiled, base.with_overrides(**fast), torch.compile, False, threads))
    timings: dict[str, list[float]] = {label: [] for label, *_ in runs}
    first_compile_s = None
    for _ in range(repeat):
        for label, recipe, tweak, autocast, n_threads in runs:
            torch.set_num_threads(n_threads)
            start = time.perf_counter()
            try:
                img_s = time_fast(model_name, data, recipe, max(images // recipe.batch_size, 10), device, tweak=tweak,
                                  autocast=autocast)
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


def compare(model_name: str, data: MNIST, device, batches: int = 100, repeat: int = 3, **overrides) -> dict:
    """Median images/s of each pipeline over `repeat` alternating repetitions on the same network."""
    recipe = get_entry(model_name).recipe
    fast_recipe = recipe.with_overrides(**{**project_settings(recipe), **overrides})
    fast, base = [], []
    for _ in range(repeat):
        fast.append(time_fast(model_name, data, fast_recipe, batches, device))
        base.append(time_baseline(model_name, data, max(batches * fast_recipe.batch_size // 64, 20)))
    flops = train_flops(model_name)
    f, b = statistics.median(fast), statistics.median(base)
    return {
        "model": model_name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": fast_recipe.batch_size,
        "settings": {"dropout_impl": fast_recipe.dropout_impl, "channels_last": fast_recipe.channels_last,
                     "kernels": fast_recipe.kernels},
        "fast_img_s": round(f, 1),
        "baseline_img_s": round(b, 1),
        "ratio": round(f / b, 2),
        "fast_runs": [round(v, 1) for v in fast],
        "baseline_runs": [round(v, 1) for v in base],
        "train_flops_per_image": flops,
        "fast_gflop_s": round(flops * f / 1e9, 2),
        "baseline_gflop_s": round(flops * b / 1e9, 2),
    }


def end_to_end(model_name: str, reference: str, data: MNIST, device, epochs: int, baseline_batches: int = 150,
               repeat: int = 1) -> dict:
    """Wall time of `epochs` epochs of `model_name` with its own recipe and per-epoch evaluation, against the
    reference model with the baseline pipeline, timed on `baseline_batches` batches and scaled to full epochs.

    With `repeat` > 1, the two alternate that many times, each whole run from the same seed, and the medians
    are reported beside every run's figure."""
    recipe = get_entry(model_name).recipe.with_overrides(epochs=epochs)
    ref_recipe = get_entry(reference).recipe
    fast, base, base_img_s = [], [], []
    for _ in range(repeat):
        torch.manual_seed(0)
        model = create_model(model_name).to(device)
        start = time.perf_counter()
        history = fit(model, data, recipe)
        fast.append(time.perf_counter() - start)

        base_img_s.append(time_baseline(reference, data, baseline_batches))
        ref_model = create_model(reference)
        start = time.perf_counter()
        evaluate(ref_model, data.test_images, data.test_labels, batch_size=64)  # the reference evaluated in 64s too
        eval_s = time.perf_counter() - start
        base.append((len(data.train_labels) / base_img_s[-1] + eval_s) * epochs)
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
        "baseline_img_s": round(statistics.median(base_img_s), 1),
        "baseline_batch_size": ref_recipe.batch_size,
        "ratio": round(base_s / fast_s, 2),
        "fast_runs": [round(v, 1) for v in fast],
        "baseline_runs": [round(v, 1) for v in base],
        # a taught model's time includes its teacher's outputs, not the teacher's own training
        "teacher": recipe.teacher and f"{recipe.teacher_seeds} shipped {get_entry(recipe.teacher).name} run(s)",
    }


def machine() -> dict:
    """What the figures were measured on."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "system": platform.system()}
