"""Training recipes: what is computed when a network is trained (optimizer, schedule, batch, augmentation,
regularisation, teacher), as one typed object validated when it is built, and the project's named recipes.

How fast it is computed (kernels, memory layout, dropout sampler, evaluation batch, threads) is not part of a
recipe: see `runtime.py`. The resolved recipe is saved with every record and checkpoint.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import TinyMnistError
from .files import describe_missing


class RecipeError(TinyMnistError):
    pass


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "exp", "step", "onecycle")
# fields that older records kept in the recipe and that now belong to the runtime configuration
RUNTIME_FIELDS = ("dropout_impl", "kernels", "channels_last", "eval_batch_size")
FLOAT32_MAX = 3.4028234663852886e38
MAX_INT = 2**31 - 1  # counts (epochs, images, batches) beyond this are typing mistakes, and overflow int32
MAX_TOML_BYTES = 1 << 20  # a recipe or a search space is a few hundred bytes
MAX_TOML_NESTING = 8  # tables and arrays within each other: a search space's `choices` are 3 deep


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RecipeError(message)


def shown(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for an error message about a value from a file."""
    text = repr(value) if not isinstance(value, list | dict | tuple) else f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_types(obj) -> None:
    """Each field holds its declared type (an int where a float is declared is accepted and kept), in range."""
    for f in fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if kind.startswith("Augment") or kind.startswith("str | None"):
            continue
        expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[kind]
        ok = isinstance(value, expected) and (kind == "bool" or not isinstance(value, bool))
        _check(ok, f"recipe field {f.name} must be {'a number' if kind == 'float' else 'a ' + kind}, not "
               f"{shown(value)}")
        if kind == "float":
            _check(abs(value) <= FLOAT32_MAX and math.isfinite(value), f"recipe field {f.name} must be finite, "
                   f"not {shown(value)}")
        if kind == "int":  # a 20-digit epochs would train until killed
            _check(abs(value) <= MAX_INT, f"recipe field {f.name} must be at most {MAX_INT:,}, not {shown(value)}")


@dataclass(frozen=True)
class Augment:
    """Per-sample random augmentation, applied to a whole batch at once (see `augment.py`).

    The defaults are the reference's torchvision pipeline: RandomAffine(7, translate=(0.1, 0.1),
    scale=(0.8, 1.2), shear=10) followed by ColorJitter(brightness=0.4, contrast=0.4).
    """

    rotation: float = 7.0  # degrees, drawn uniformly from [-rotation, rotation]
    shear: float = 10.0  # degrees of x-shear, uniform in [-shear, shear]
    translate: float = 0.1  # fraction of the image side, uniform in [-translate, translate] on each axis
    scale_min: float = 0.8  # isotropic zoom, uniform in [scale_min, scale_max]
    scale_max: float = 1.2
    brightness: float = 0.4  # brightness factor uniform in [1 - brightness, 1 + brightness]
    contrast: float = 0.4  # contrast factor uniform in [1 - contrast, 1 + contrast]

    def __post_init__(self):
        _check_types(self)
        _check(0 <= self.rotation <= 180 and 0 <= self.shear < 90, "augment: rotation must be in [0, 180] and "
               "shear in [0, 90) degrees")
        _check(0 <= self.translate <= 1, f"augment: translate must be in [0, 1], not {self.translate}")
        _check(0 < self.scale_min <= self.scale_max, "augment: need 0 < scale_min <= scale_max")
        _check(0 <= self.brightness <= 1 and 0 <= self.contrast <= 1, "augment: brightness and contrast must be "
               "in [0, 1]")


@dataclass(frozen=True)
class Recipe:
    """Everything about a training run except the network and the seed."""

    epochs: int = 15  # the exercise's budget
    batch_size: int = 64  # the reference's batch size (938 steps an epoch)
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.01  # initial (peak, for "onecycle") learning rate
    momentum: float = 0.9  # SGD momentum; ignored by Adam
    weight_decay: float = 0.0  # L2 penalty added by the optimizer
    schedule: str = "constant"  # "constant", "exp" (lr * gamma**epoch, the reference's LambdaLR), "step", "onecycle"
    gamma: float = 0.65  # decay factor per epoch for "exp", per `step_size` epochs for "step"
    step_size: int = 6  # epochs between decays for "step"
    warmup: float = 3.0  # "onecycle": epochs of linear warm-up from lr / 10 to lr, then cosine decay to 0
    nesterov: bool = False  # Nesterov momentum for SGD
    dropout: float = 0.0  # dropout probability after each convolution block of networks that have dropout layers
    augment: Augment | None = None  # None trains on the images as they are
    clean_epochs: int = 0  # the last this many epochs train on the images as they are, without augmentation
    ema: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights, this decay per step
    teacher: str | None = None  # a model whose checkpoints (its records') teach this one (knowledge distillation)
    distill: float = 0.0  # weight of the distillation loss against the teacher; the label loss gets 1 - distill
    temperature: float = 1.0  # divides both models' class scores before the distillation loss compares them
    teacher_seeds: int = 1  # how many of the teacher's runs (seeds 1, 2, ...) teach together, as one ensemble
    teacher_cache: bool = False  # the teacher's outputs for the training images as they are, computed once, stand
    # in for its outputs on each augmented batch: no teacher forward pass per step (soft labels as in ReLabel)
    ghost_batch: int = 0  # > 0: in training, BatchNorm normalises each group of this many images of a batch with
    # the group's own statistics (ghost batch normalisation, ghost.py)
    label_smoothing: float = 0.0  # the label loss's target gives this much probability, spread evenly, to all classes

    def __post_init__(self):
        _check_types(self)
        _check(self.augment is None or isinstance(self.augment, Augment), "recipe field augment must be an "
               "augmentation or none")
        _check(self.teacher is None or isinstance(self.teacher, str), "recipe field teacher must be a model name")
        _check(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        _check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        _check(self.epochs >= 1 and self.batch_size >= 1 and self.step_size >= 1 and self.teacher_seeds >= 1,
               "epochs, batch_size, step_size and teacher_seeds must be at least 1")
        _check(self.lr > 0 and self.gamma > 0 and self.temperature > 0, "lr, gamma and temperature must be positive")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), not {self.momentum}")
        _check(self.weight_decay >= 0 and self.warmup >= 0, "weight_decay and warmup must be 0 or more")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), not {self.dropout}")
        _check(self.clean_epochs >= 0, f"clean_epochs must be 0 or more, not {self.clean_epochs}")
        _check(self.ema == 0 or 0 < self.ema < 1, f"ema must be 0 (off) or a decay per step in (0, 1), not {self.ema}")
        _check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), not {self.label_smoothing}")
        _check(self.ghost_batch >= 0, f"ghost_batch must be 0 (off) or a number of images, not {self.ghost_batch}")
        _check((self.teacher is None) == (self.distill == 0), "a teacher needs distill > 0, and distill > 0 a teacher")
        _check(0 <= self.distill <= 1, f"distill must be in [0, 1], not {self.distill}")
        _check(not self.teacher_cache or self.teacher is not None, "teacher_cache needs a teacher")

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with some fields changed, validated; an unknown field name is an error listing the valid ones."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        _check(not unknown, f"unknown recipe field(s): {', '.join(unknown)}; valid: "
               f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """A recipe from a record or checkpoint; the speed settings older records kept in it are left out."""
        _check(isinstance(data, dict), f"the recipe is a {type(data).__name__}, not a mapping of its fields")
        data = {k: v for k, v in data.items() if k not in RUNTIME_FIELDS}
        if isinstance(data.get("augment"), dict):
            data["augment"] = Augment(**_known(Augment, data["augment"]))
        return cls(**_known(cls, data))

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the defaults."""
        default = Recipe()
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) != getattr(default, f.name)}


def _known(cls, data: dict) -> dict:
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    _check(not unknown, f"unknown {cls.__name__.lower()} field(s): {', '.join(unknown)}; valid: {', '.join(valid)}")
    return data


def lr_at(recipe: Recipe, epoch: float) -> float:
    """Learning rate at `epoch` (0-based; fractional part = progress through the epoch). A pure function.

    "exp" and "step" change once an epoch, as the reference's per-epoch scheduler did; "onecycle" changes
    every step.
    """
    if recipe.schedule == "exp":
        return recipe.lr * recipe.gamma ** math.floor(epoch)
    if recipe.schedule == "step":
        return recipe.lr * recipe.gamma ** (math.floor(epoch) // recipe.step_size)
    if recipe.schedule == "onecycle":
        if epoch < recipe.warmup:
            return recipe.lr * (0.1 + 0.9 * epoch / recipe.warmup)
        progress = (epoch - recipe.warmup) / max(recipe.epochs - recipe.warmup, 1e-9)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return recipe.lr  # "constant"


# --- the named recipes ---------------------------------------------------------------------------------
# Each is written out whole: every field that differs from the defaults above. `tinymnist recipe NAME` prints
# one resolved, with those fields marked.

REFERENCE_AUGMENT = Augment()  # the reference's RandomAffine + ColorJitter
MILD = Augment(rotation=8.0, shear=0.0, translate=0.08, scale_min=0.9, scale_max=1.1, brightness=0.0, contrast=0.0)
MILDER = Augment(rotation=5.0, shear=0.0, translate=0.05, scale_min=0.95, scale_max=1.05, brightness=0.0, contrast=0.0)
# the project's SGD: Nesterov momentum, a one-cycle learning rate (3 epochs of warm-up, cosine to 0) and weight
# decay, which with BatchNorm keeps the effective step size from shrinking as the weights grow
ONE_CYCLE = dict(optimizer="sgd", momentum=0.9, nesterov=True, schedule="onecycle", warmup=3.0, augment=MILD)
# a teacher: three runs of Model_11, their class probabilities softened by a temperature of 2
ENSEMBLE = dict(teacher="Model_11", teacher_seeds=3, temperature=2.0)

RECIPES: dict[str, Recipe] = {
    # the reference progression: SGD 0.01, momentum 0.9, batch 64, 15 epochs
    "base": Recipe(),
    "dropout": Recipe(dropout=0.05),
    "augmented": Recipe(dropout=0.05, augment=REFERENCE_AUGMENT),
    "reference": Recipe(dropout=0.05, augment=REFERENCE_AUGMENT, schedule="exp", gamma=0.65),
    # beyond it: batch 128, one-cycle SGD, milder augmentation, no dropout
    "one-cycle": Recipe(**ONE_CYCLE, batch_size=128, lr=0.05, weight_decay=5e-4),
    "averaged": Recipe(**ONE_CYCLE, batch_size=128, lr=0.05, weight_decay=5e-4, ema=0.999),
    "averaged-low-decay": Recipe(**ONE_CYCLE, batch_size=128, lr=0.05, weight_decay=1e-4, ema=0.999),
    "small-batch": Recipe(**ONE_CYCLE, batch_size=64, lr=0.05, weight_decay=5e-4, ema=0.999),
    "scaled-128": Recipe(**ONE_CYCLE, batch_size=128, lr=0.1, weight_decay=5e-4, ema=0.998),
    # the taught tiny models: 90 % of the loss from the teacher
    "taught": Recipe(**ONE_CYCLE, batch_size=64, lr=0.05, weight_decay=1e-4, ema=0.999, teacher="Model_11",
                     distill=0.9, temperature=2.0),
    "taught-32": Recipe(**ONE_CYCLE, batch_size=32, lr=0.05, weight_decay=1e-4, ema=0.999, teacher="Model_11",
                        distill=0.9, temperature=2.0),
    "ensemble-taught": Recipe(**ONE_CYCLE, batch_size=64, lr=0.05, weight_decay=1e-4, ema=0.999, **ENSEMBLE,
                              distill=0.9),
    "ensemble-taught-mild": Recipe(**{**ONE_CYCLE, "augment": MILDER}, batch_size=64, lr=0.05, weight_decay=1e-4,
                                   ema=0.999, **ENSEMBLE, distill=0.9),
    # batch 256: the learning rate and the weight average scaled with the batch
    "large-batch": Recipe(**ONE_CYCLE, batch_size=256, lr=0.1, weight_decay=5e-4, ema=0.998),
    "large-batch-low-decay": Recipe(**ONE_CYCLE, batch_size=256, lr=0.1, weight_decay=1e-4, ema=0.998),
    "large-batch-0.05": Recipe(**ONE_CYCLE, batch_size=256, lr=0.05, weight_decay=5e-4, ema=0.998),
    "large-batch-high-decay": Recipe(**ONE_CYCLE, batch_size=256, lr=0.05, weight_decay=2e-3, ema=0.998),
    "large-batch-0.07": Recipe(**ONE_CYCLE, batch_size=256, lr=0.07, weight_decay=5e-4, ema=0.998),
    "clean-3": Recipe(**ONE_CYCLE, batch_size=256, lr=0.05, weight_decay=5e-4, ema=0.998, clean_epochs=3),
    "clean-5": Recipe(**ONE_CYCLE, batch_size=256, lr=0.05, weight_decay=5e-4, ema=0.998, clean_epochs=5),
    "clean-end": Recipe(**ONE_CYCLE, batch_size=256, lr=0.07, weight_decay=5e-4, ema=0.998, clean_epochs=5),
    "cached-teacher": Recipe(**ONE_CYCLE, batch_size=256, lr=0.07, weight_decay=5e-4, ema=0.998, clean_epochs=5,
                             **ENSEMBLE, distill=0.5, teacher_cache=True),
    "cached-teacher-0.9": Recipe(**ONE_CYCLE, batch_size=256, lr=0.07, weight_decay=5e-4, ema=0.998, clean_epochs=5,
                                 **ENSEMBLE, distill=0.9, teacher_cache=True),
    "cached-teacher-lr0.1": Recipe(**ONE_CYCLE, batch_size=256, lr=0.1, weight_decay=5e-4, ema=0.998, clean_epochs=5,
                                   **ENSEMBLE, distill=0.5, teacher_cache=True),
    "cached-teacher-lr0.05": Recipe(**ONE_CYCLE, batch_size=256, lr=0.05, weight_decay=5e-4, ema=0.998,
                                    clean_epochs=5, **ENSEMBLE, distill=0.5, teacher_cache=True),
    "label-smoothing": Recipe(**ONE_CYCLE, batch_size=256, lr=0.07, weight_decay=5e-4, ema=0.998, clean_epochs=5,
                              label_smoothing=0.1),
    # BatchNorm statistics over groups of 64 images of each batch of 256 (ghost batch normalisation)
    "ghost": Recipe(**ONE_CYCLE, batch_size=256, lr=0.1, weight_decay=5e-4, ema=0.998, ghost_batch=64),
    "ghost-clean-end": Recipe(**ONE_CYCLE, batch_size=256, lr=0.07, weight_decay=5e-4, ema=0.998, clean_epochs=5,
                              ghost_batch=64),
}


def _typed(field_type: str, text: str, name: str):
    """A `--set` value as the field's declared type."""
    try:
        if field_type == "bool":
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "yes", "1")
        if field_type == "int":
            return int(text)
        if field_type == "float":
            return float(text)
    except ValueError:
        expected = "true or false" if field_type == "bool" else f"a {field_type}"
        raise RecipeError(f"--set {name}={text}: expected {expected}") from None
    if field_type.startswith("str | None"):
        return None if text.lower() in ("none", "") else text
    return text


def apply_settings(recipe: Recipe, settings: list[str]) -> Recipe:
    """`field=value` settings over a recipe, typed from its fields: `lr=0.1`, `augment.rotation=5`,
    `augment=none`, `augment=default` (the reference's); an unknown field lists the valid ones."""
    for setting in settings:
        key, eq, text = setting.partition("=")
        key = key.strip()
        _check(bool(eq and key), f"--set {setting!r}: expected field=value")
        if key == "augment":
            _check(text.lower() in ("none", "default"), "--set augment=none or augment=default (or augment.FIELD=v)")
            recipe = recipe.with_overrides(augment=None if text.lower() == "none" else Augment())
        elif key.startswith("augment."):
            sub = key.split(".", 1)[1]
            valid = {f.name: str(f.type) for f in fields(Augment)}
            _check(sub in valid, f"unknown augment field {sub!r}; valid: {', '.join(valid)}")
            base = recipe.augment or Augment()
            recipe = recipe.with_overrides(augment=replace(base, **{sub: _typed(valid[sub], text, key)}))
        else:
            valid = {f.name: str(f.type) for f in fields(Recipe)}
            _check(key in valid, f"unknown recipe field {key!r}; valid: {', '.join(valid)}")
            recipe = recipe.with_overrides(**{key: _typed(valid[key], text, key)})
    return recipe


def read_toml(path: str | os.PathLike, what: str, error: type[TinyMnistError] = RecipeError) -> dict:
    """A small TOML file from outside (a recipe, a search space) as a dict, or `error` naming `what` and the
    file: it must be a regular file of at most MAX_TOML_BYTES (no more is read), UTF-8 text, and nest tables
    and arrays at most MAX_TOML_NESTING deep (tomllib recurses on nesting)."""
    import tomllib

    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open, a device never end
            raise error(f"{what} {path} {describe_missing(path)}")
        with open(path, "rb") as f:
            data = f.read(MAX_TOML_BYTES + 1)
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror}") from None
    if len(data) > MAX_TOML_BYTES:
        raise error(f"{what} {path}: larger than {MAX_TOML_BYTES:,} bytes; a {what} is a few lines of TOML")
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} {path}: not a text file (not UTF-8)") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {path}: not valid TOML ({e})") from None
    except RecursionError:
        parsed = None
    if parsed is None or _nesting(parsed) > MAX_TOML_NESTING:
        raise error(f"{what} {path}: tables or arrays nested more than {MAX_TOML_NESTING} deep")
    return parsed


def _nesting(value) -> int:
    """How deep tables and arrays nest in `value` (without recursion: it may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_recipe_file(path: str) -> Recipe:
    """A recipe from a TOML file: its fields at the top level (the defaults for the rest), the augmentation
    as an `[augment]` table (its own defaults for fields not given) or `augment = false`."""
    data = read_toml(path, "recipe file")
    if data.get("augment") is False:
        data["augment"] = None
    try:
        return Recipe.from_dict(data)
    except RecipeError as e:
        raise RecipeError(f"recipe file {path}: {e}") from None
    except TypeError as e:
        raise RecipeError(f"recipe file {path}: {e}") from None


def recipe_to_toml(recipe: Recipe) -> str:
    """A recipe as a TOML file that `load_recipe_file` reads back to the same recipe (fields that differ
    from the defaults only)."""
    lines, table = [], []
    for key, value in recipe.changes().items():
        if key == "augment":
            if value is None:
                lines.append("augment = false")
            else:
                table = ["", "[augment]"] + [f"{k} = {v!r}" for k, v in asdict(value).items()]
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + table) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}") from None


def format_recipe(recipe: Recipe, title: str) -> str:
    """Every field of the recipe, one a line; a * marks those that differ from the defaults."""
    changed = recipe.changes()
    lines = [f"{title}  (* differs from the defaults)"]
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        shown = ", ".join(f"{k}={v:g}" for k, v in asdict(value).items()) if isinstance(value, Augment) else value
        lines.append(f"{'*' if f.name in changed else ' '} {f.name:<16} {shown}")
    return "\n".join(lines)
