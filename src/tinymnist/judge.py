"""What counts as success, and the one judgement of it: the target (test accuracy >= `TARGET` % in each of the
last K epochs) with each role's K, a run's budget, the verdict on a run, each role's goal over several seeds,
the rule that gives the roles, and a recipe's training cost in optimizer steps.

Every hold is judged by `held_last` and every run's verdict is `verdict`: `run`, `report`, `sweep`, `search`
and the CLI ask here, and the holds are defined here (an `Entry` names its own from these). It reads no files
and knows no registry: it judges the histories and records it is given.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .errors import TinyMnistError
from .recipes import Recipe

TARGET = 99.40  # test accuracy (%) to hold in each of the last K epochs, every target's
HOLD = 5  # K of the final target (the reference held it in epochs 11 to 15), and of every step by default
TINY_HOLD = 3  # K of the tiny target: the steps under 4,000 parameters
TRAIN_IMAGES = 60_000  # MNIST's training set: every judged record trained on all of it, a validation run on part
ACCURACY = {"test_acc": "test accuracy", "val_acc": "validation accuracy"}  # the columns a hold is judged on


class BudgetError(TinyMnistError):
    pass


class VerdictError(TinyMnistError):
    pass


def check_param_budget(name: str, params: int, max_params: int | None) -> None:
    """Refuses a network over `max_params` (its count comes from the meta device: nothing is allocated yet)."""
    if max_params is not None and params > max_params:
        raise BudgetError(f"{name} has {params:,} parameters, over the budget of {max_params:,} (--max-params)")


@dataclass(frozen=True)
class Budget:
    """What a run may spend, and the target it is judged by: >= `target` % test accuracy in each of the last
    `hold` epochs, with at most `max_params` parameters and `max_epochs` epochs (None: no limit)."""

    max_params: int | None = None
    max_epochs: int | None = None
    target: float = TARGET
    hold: int = HOLD

    def check(self, name: str, params: int, epochs: int) -> None:
        """Refuses a run over budget before it trains."""
        check_param_budget(name, params, self.max_params)
        if self.max_epochs is not None and epochs > self.max_epochs:
            raise BudgetError(f"the recipe trains {epochs} epochs, over the budget of {self.max_epochs} (--max-epochs)")

    def to_dict(self) -> dict:
        return asdict(self)


def is_percent(x) -> bool:
    """A finite number from 0 to 100 (a bool is no number)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x <= 100


def held_last(history: list[dict], target: float, hold: int, column: str = "test_acc") -> tuple[bool, list[float]]:
    """Whether the accuracy in `column` (the test accuracy, or a validation run's) stayed >= `target` in each of
    the last `hold` epochs, and those accuracies.

    Every hold is judged here, so here it refuses what cannot be judged: NaN compares false, so `min` steps over
    it and the run "held"; an accuracy above 100 is no accuracy; a `hold` below 1 slices the wrong epochs
    (`accs[-0:]` is all of them, `accs[2:]` for -2)."""
    if not (isinstance(hold, int) and not isinstance(hold, bool) and hold >= 1):
        raise VerdictError(f"cannot judge the last {hold!r} epochs: the hold must be a whole number >= 1")
    if not is_percent(target):
        raise VerdictError(f"cannot judge against a target of {target!r}: not a percentage from 0 to 100")
    accs = [row.get(column) if isinstance(row, dict) else None for row in history]
    bad = next((i for i, a in enumerate(accs, 1) if not is_percent(a)), None)
    if bad is not None:
        raise VerdictError(f"cannot judge a {ACCURACY[column]} of {accs[bad - 1]!r} (epoch {bad}): not a "
                           "percentage from 0 to 100")
    last = accs[-hold:]
    return len(accs) >= hold and min(last) >= target, last


def verdict(history: list[dict], budget: Budget, params: int) -> dict:
    """Whether a run of `params` parameters met its budget's target within its budget, with a line that says so:
    `held` (the target held, `held_last`), `within_budget`, `last` (the judged epochs' test accuracies),
    `above` (the epochs at the target or above) and `text`."""
    held, last = held_last(history, budget.target, budget.hold)
    within = (budget.max_params is None or params <= budget.max_params) and (
        budget.max_epochs is None or len(history) <= budget.max_epochs)
    above = [row.get("epoch") for row in history if row["test_acc"] >= budget.target]
    text = (f"target {'MET' if held and within else 'NOT MET'}: test accuracy >= {budget.target:.2f}% in each of "
            f"the last {budget.hold} epochs (last {len(last)}: "
            f"{', '.join(f'{a:.2f}' for a in last)})" + ("" if within else ", and over budget"))
    return {"held": held, "within_budget": within, "last": last, "above": above, "text": text}


# --- a role's goal, judged over several seeds --------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A target of the project for a role, judged over a model's full-data records."""

    role: str
    max_params: int
    hold: int  # test accuracy >= TARGET in each of the last `hold` epochs, on every seed
    min_mean: float | None = None  # and the mean of those last-`hold` accuracies over all seeds at least this
    seeds: int = 5  # the fewest seeds that count

    def describe(self) -> str:
        mean = f", mean of those >= {self.min_mean:.2f} %" if self.min_mean else ""
        return (f"{self.role}: <= {self.max_params:,} params, >= {TARGET:.2f} % in each of the last {self.hold} "
                f"epochs on every seed (>= {self.seeds} seeds){mean}")


GOALS = (Goal("final", 7_999, hold=HOLD, min_mean=99.50), Goal("tiny", 4_000, hold=TINY_HOLD))


def held_and_mean(records: list[dict], hold: int) -> tuple[int, float]:
    """On how many of the records (one model, several seeds) test accuracy holds >= TARGET in each of the
    last `hold` epochs, and the mean of those epochs' test accuracy over all of them (0.0 without records)."""
    held = sum(verdict(rec["epochs"], Budget(hold=hold), rec["params"])["held"] for rec in records)
    lasts = [r["test_acc"] for rec in records for r in rec["epochs"][-hold:]]
    return held, statistics.mean(lasts) if lasts else 0.0


def assess(records: list[dict], goal: Goal) -> dict:
    """How `records` (one model, several seeds) fare against `goal`; the mean is not rounded before judging."""
    held, mean = held_and_mean(records, goal.hold)
    params = max((r["params"] for r in records), default=0)  # seeds of one network agree; if not, the most counts
    met = (
        bool(records) and len(records) >= goal.seeds and held == len(records) and params <= goal.max_params
        and (goal.min_mean is None or mean >= goal.min_mean)
    )
    return {"seeds": len(records), "held": held, "mean": mean, "params": params, "met": met}


def training_steps(recipe: Recipe, recipe_of: Callable[[str], Recipe]) -> int:
    """Optimizer steps to train from scratch with `recipe`, its teachers' runs included (`recipe_of` gives a
    teacher's recipe by its model's name): the training cost by which the final model is chosen. Every recipe
    sees the same images, and for networks this small a step has a large fixed cost, so on a CPU the training
    time follows the steps (the end-to-end records in the Performance section: batch 256 trains in well under
    the time of batch 64)."""
    steps = recipe.epochs * -(-TRAIN_IMAGES // recipe.batch_size)
    if recipe.teacher:
        steps += recipe.teacher_seeds * training_steps(recipe_of(recipe.teacher), recipe_of)
    return steps


def choose_roles(records: dict[str, list[dict]], steps: Callable[[str], int]) -> dict[str, str | None]:
    """Which model each role goes to by the rule in `model.ROLES`'s comment, judged from `records` (each model's
    full-data records), `steps` giving a model's `training_steps`. "final": of the models that meet its goal,
    the one cheapest to train, then the one with the highest mean; while none meets it, the best of the models
    with enough seeds under the budget: those that hold on every seed first, then by mean (the main job must
    train something). "tiny": the smallest model that meets its goal, else nobody."""
    roles: dict[str, str | None] = {}
    for goal in GOALS:
        scored = {n: assess(recs, goal) for n, recs in records.items()}
        met = [n for n, a in scored.items() if a["met"]]
        if goal.role == "tiny":
            roles["tiny"] = min(met, key=lambda n: scored[n]["params"], default=None)
        elif met:
            roles[goal.role] = min(met, key=lambda n: (steps(n), -scored[n]["mean"]))
        else:
            held = [n for n, a in scored.items() if a["seeds"] >= goal.seeds and 0 < a["params"] <= goal.max_params]
            roles[goal.role] = max(
                held, key=lambda n: (scored[n]["held"] == scored[n]["seeds"], scored[n]["mean"]), default=None
            )
    return roles
