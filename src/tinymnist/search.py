"""Recipe search with Optuna on Ray: each trial a training run on a worker, judged on the validation split.

The driver asks Optuna's TPE sampler for a recipe (`study.ask`), runs it as a sweep's task (`sweep.run_job`,
with the test files never opened: `load_mnist(test=False)`), hands each epoch's validation accuracy to the
median pruner as the worker reports it, tells a pruned trial's worker to stop, and tells Optuna the result
(`study.tell`). The objective is the lowest validation accuracy of the last K epochs (K: the model's hold),
for recipes within the budgets. The study lives in an Optuna storage (SQLite by default), so the same command
continues an interrupted search, and a shared database lets several machines work on one study.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import TinyMnistError, held_signals
from .files import atomic_write_bytes
from .judge import Budget
from .model import Entry, count_params
from .recipes import FLOAT32_MAX, MAX_INT, MILD, Augment, Recipe, RecipeError, read_toml, recipe_to_toml, shown
from .records import write_json
from .runtime import Runtime
from .sweep import INSTALL, Coordinator, ScaleError, lost, make_job, ray_session, stop_tasks, submit

SPACE_FILE = Path(__file__).resolve().parent / "space.toml"
AUGMENT_SCALE = "augment_scale"  # multiplies the augmentation's strength (rotation, translation, shear, zoom range)
NUMBERS = {"int", "float"}


class SearchError(TinyMnistError):
    pass


def import_optuna():
    try:
        with held_signals():  # its database drivers' native parts: a Ctrl-C inside them would be lost
            import optuna
    except ImportError:
        raise ScaleError(f"search runs on Optuna and Ray, which are not installed: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the storage's heartbeat,
    warnings.filterwarnings("ignore", message="Heartbeat of storage")  # which we record ourselves with ask/tell
    return optuna


def space_fields() -> dict[str, str]:
    """What a search space may set: the recipe's number fields and `augment_scale`, with their types."""
    valid = {f.name: str(f.type) for f in fields(Recipe) if str(f.type) in NUMBERS}
    return {**valid, AUGMENT_SCALE: "float"}


def load_space(path: str | Path | None = None) -> dict[str, dict]:
    """A search space file (the default `space.toml` when None), checked: an unknown field lists the valid ones,
    and each field is a range or a list of choices that Optuna can draw from (`space_problem`)."""
    path = Path(path) if path else SPACE_FILE
    space = read_toml(path, "space file", SearchError)
    valid = space_fields()
    for name, spec in space.items():
        if name not in valid:
            raise SearchError(f"space file {path}: unknown field {shown(name)}; valid: {', '.join(valid)}")
        if problem := space_problem(spec, valid[name]):
            raise SearchError(f"space file {path}: {name} {problem}")
    if not space:
        raise SearchError(f"space file {path} declares no field; valid: {', '.join(valid)}")
    return space


def _number(value, kind: str) -> bool:
    """A finite number of the field's kind (a whole number for an int field) within float32's range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind == "int":
        return isinstance(value, int) and abs(value) <= MAX_INT
    return abs(value) <= FLOAT32_MAX and math.isfinite(value)  # in this order: a huge int is no float


def space_problem(spec, kind: str) -> str | None:
    """What is wrong with one field of a search space (None: nothing): `low` <= `high`, finite numbers of the
    field's kind, `log` a boolean and then `low` > 0; or a non-empty list of such numbers, `choices`."""
    what = f"a whole number up to {MAX_INT:,}" if kind == "int" else "a finite number"
    if not isinstance(spec, dict):
        return f"is {shown(spec)}; it needs a table: `low` <= `high` (and `log = true` or not), or `choices`"
    if set(spec) == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices or not all(_number(c, kind) for c in choices):
            return f"needs `choices`, a non-empty list of which each is {what}"
        return None
    if not {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        return (f"needs `low` <= `high` (and `log = true` or not) or a non-empty list `choices`, not the keys "
                f"{', '.join(map(shown, spec))}")
    if not (_number(spec["low"], kind) and _number(spec["high"], kind)):
        return f"needs `low` and `high` that are each {what}"
    if spec["low"] > spec["high"]:
        return f"needs `low` <= `high`, not {spec['low']} > {spec['high']}"
    if not isinstance(spec.get("log", False), bool):
        return "needs `log = true` or `log = false`"
    if spec.get("log") and spec["low"] <= 0:
        return f"is drawn on a log scale (`log = true`), which needs `low` > 0, not {spec['low']}"
    return None


def suggest(trial, space: dict[str, dict]) -> dict:
    """The trial's values for each field of the space."""
    kinds = space_fields()
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kinds[name] == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               log=spec.get("log", False))
    return params


def scaled(augment: Augment | None, k: float) -> Augment:
    """The augmentation `k` times as strong: rotation, translation, shear and the zoom's distance from 1."""
    base = augment or MILD
    return replace(base, rotation=min(180.0, base.rotation * k), shear=min(89.0, base.shear * k),
                   translate=min(1.0, base.translate * k), scale_min=max(0.01, 1 - (1 - base.scale_min) * k),
                   scale_max=1 + (base.scale_max - 1) * k)


def trial_recipe(base: Recipe, params: dict) -> Recipe:
    fields_ = {k: v for k, v in params.items() if k != AUGMENT_SCALE}
    recipe = base.with_overrides(**fields_)
    if AUGMENT_SCALE in params:
        recipe = recipe.with_overrides(augment=scaled(base.augment, params[AUGMENT_SCALE]))
    return recipe


def open_study(optuna, storage: str, name: str, epochs: int):
    """The study `name` in `storage`, created or continued; a storage that cannot be opened is one line."""
    try:
        if storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=90) if "://" in storage \
            else storage
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=4)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 3))
        study = optuna.create_study(storage=rdb, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except Exception as e:  # noqa: BLE001  whatever the storage's driver raises, the URL is what the user can fix
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SearchError(f"--storage {storage}: cannot open it ({first})") from None
    optuna.storages.fail_stale_trials(study)  # trials in flight when an earlier search was killed
    return study


def objective(rows: list[dict], hold: int) -> float | None:
    """The lowest validation accuracy of the last `hold` epochs (None when fewer epochs ran)."""
    return min(r["val_acc"] for r in rows[-hold:]) if len(rows) >= hold else None


def check_epochs(space: dict, base: Recipe, hold: int) -> None:
    """The objective needs `hold` epochs: refuses a recipe (or a space) that trains fewer, before any trial."""
    spec = space.get("epochs")
    values = [base.epochs] if spec is None else spec.get("choices", [spec.get("low")])
    fewest = min((v for v in values if isinstance(v, int | float)), default=hold)
    if fewest < hold:
        where = "the recipe trains" if spec is None else "the search space allows"
        raise SearchError(f"{where} {fewest} epoch{'s' * (fewest != 1)}, fewer than the {hold} whose lowest "
                          f"validation accuracy is the objective; use at least {hold} (--set epochs={hold})")


def search(entry: Entry, base: Recipe, runtime: Runtime, space: dict, *, trials: int, val: int, storage: str,
           study_name: str, budget: Budget, workers: int, threads: int, address: str | None = None, limit=None,
           data_dir=None, teachers_dir=None, say: Callable[[str], None] = print) -> dict:
    """Runs trials until the study holds `trials` finished ones; returns its summary (best recipe included)."""
    check_epochs(space, base, budget.hold)
    optuna = import_optuna()
    study = open_study(optuna, storage, study_name, base.epochs)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done:
        say(f"study {study_name} in {storage}: {done} trials already finished")
    todo = max(0, trials - done)
    if todo:
        with ray_session(address, workers * threads) as ray:
            options = dict(limit=limit, val=val, data_dir=data_dir, test=False, teachers_dir=teachers_dir, keep=False,
                           judged=True)
            Trials(ray, optuna, study, entry, base, space, runtime, budget, workers, threads, options, say,
                   heartbeat="://" in storage).run(todo)
    return summary(optuna, study, entry, val, budget, limit)


@dataclass
class Trials:
    """The driver's loop of a search: at most `workers` trials in flight; each epoch's validation accuracy handed
    to the pruner as the board brings it, and its verdict sent back."""

    ray: object
    optuna: object
    study: object
    entry: Entry
    base: Recipe
    space: dict
    runtime: Runtime
    budget: Budget
    workers: int
    threads: int
    job_options: dict  # `sweep.make_job`'s
    say: Callable[[str], None]
    heartbeat: bool  # the storage records the trials' heartbeats (a database, not a journal file)
    pending: dict = field(default_factory=dict)  # ObjectRef -> key
    running: dict = field(default_factory=dict)  # key -> [trial, last epoch judged, stop]

    def __post_init__(self):
        self.coordinator = Coordinator(self.ray, self.resend, self.say)

    def run(self, todo: int) -> None:
        started, last_beat = 0, time.monotonic()
        try:
            while started < todo or self.pending:
                while started < todo and len(self.pending) < self.workers:
                    started += 1
                    self.start(self.study.ask())
                if not self.pending:
                    continue
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=1.0)
                self.judge(self.coordinator.poll())
                if time.monotonic() - last_beat > 10 and self.heartbeat:
                    for trial, _, _ in self.running.values():
                        self.study._storage.record_heartbeat(trial._trial_id)
                    last_beat = time.monotonic()
                for ref in ready:
                    self.finish(ref)
        except KeyboardInterrupt:
            stop_tasks(self.ray, list(self.pending))  # their trials stay running: the next search fails them
            raise
        except self.ray.exceptions.RayError as e:
            if isinstance(e, self.ray.exceptions.RayTaskError):  # a bug, raised again by `finish`
                raise
            stop_tasks(self.ray, list(self.pending))
            raise SearchError(f"{lost(self.ray, e, 'the board of the search')}; the finished trials are in the "
                              "study, and the same command continues it") from None

    def start(self, trial) -> None:
        try:
            recipe = trial_recipe(self.base, suggest(trial, self.space))
            self.budget.check(self.entry.name, count_params(self.entry.build(recipe)), recipe.epochs)
        except TinyMnistError as e:
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            self.say(f"trial {trial.number}: failed: {e}")
            return
        trial.set_user_attr("recipe", json.loads(json.dumps(recipe.to_dict())))
        key = f"trial{trial.number}"
        # every trial from seed 1: the recipes are what differ
        job = make_job(self.entry, recipe, self.runtime, 1, self.threads, self.budget, key, **self.job_options)
        self.pending.update({ref: key for ref in submit(self.ray, [job], self.coordinator.board, self.threads)})
        self.running[key] = [trial, 0, False]

    def judge(self, news: dict) -> None:
        for key, (_, rows, _) in news.items():
            if key not in self.running:
                continue
            entry = self.running[key]
            for row in rows[entry[1]:]:
                entry[0].report(row["val_acc"], row["epoch"])
                entry[1], entry[2] = row["epoch"], entry[0].should_prune()
                self.ray.get(self.coordinator.board.judge.remote(key, row["epoch"], entry[2]))

    def resend(self, board) -> None:
        """To a restarted board: the verdicts given so far on the trials in flight."""
        for key, (_, epoch, stop) in self.running.items():
            if epoch:
                board.judge.remote(key, epoch, stop)

    def finish(self, ref) -> None:
        key = self.pending.pop(ref)
        trial, _, _ = self.running.pop(key)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            result = {"error": f"{lost(self.ray, e, 'its worker')}, also when retried"}
        rows = self.coordinator.rows.get(key, [])
        self.coordinator.forget(key)
        trial.set_user_attr("val_acc", [r["val_acc"] for r in rows])
        if result.get("stopped"):
            self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
            self.say(f"trial {trial.number}: pruned after epoch {len(rows)} (val {rows[-1]['val_acc']:.2f}%)")
        elif "error" in result:
            trial.set_user_attr("error", result["error"])
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            self.say(f"trial {trial.number}: failed: {result['error']}")
        else:
            value = objective(result["record"]["epochs"], self.budget.hold)
            self.study.tell(trial, value)
            self.say(f"trial {trial.number}: lowest val accuracy of the last {self.budget.hold} epochs "
                     f"{value:.2f}% ({', '.join(f'{k}={v:.4g}' for k, v in trial.params.items())})")


def summary(optuna, study, entry: Entry, val: int, budget: Budget, limit) -> dict:
    """The study as a record: every trial, and the best recipe; no trial completed is one line."""
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        errors = [t.user_attrs["error"] for t in all_trials if "error" in t.user_attrs]
        why = f": {errors[0]}" if errors else ""
        raise SearchError(f"none of the {len(all_trials)} trials of study {study.study_name} completed{why}")
    best = study.best_trial
    return {
        "kind": "search", "model": entry.name, "study": study.study_name, "val": val, "limit": limit,
        "objective": f"lowest validation accuracy (%) of the last {budget.hold} epochs", "budget": budget.to_dict(),
        "trials": [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                    "val_acc": t.user_attrs.get("val_acc", [])} for t in all_trials],
        "best": {"number": best.number, "value": best.value, "params": best.params,
                 "recipe": best.user_attrs["recipe"]},
    }


def write_best(result: dict, out: Path) -> Path:
    """The best recipe as a TOML recipe file (`train --recipe out`) and the search's record beside it (.json)."""
    recipe = Recipe.from_dict(result["best"]["recipe"])
    head = (f"# found by `tinymnist search {result['model']}` (study {result['study']}): trial "
            f"{result['best']['number']} of {len(result['trials'])}, {result['objective']} "
            f"{result['best']['value']:.2f} on a validation split of {result['val']} images\n")
    try:
        atomic_write_bytes(out, (head + recipe_to_toml(recipe)).encode())
    except OSError as e:
        raise SearchError(f"cannot write {out}: {e.strerror}") from None
    write_json(out.with_suffix(".json"), result)
    return out


def check_recipe_fields(space: dict) -> None:
    """Each value a space can give a field (its choices, the ends of its range) makes a valid recipe."""
    for name, spec in space.items():
        for value in spec["choices"] if "choices" in spec else (spec["low"], spec["high"]):
            try:
                trial_recipe(Recipe(), {name: value})
            except RecipeError as e:
                raise SearchError(f"search space: {name} = {shown(value)}: {e}") from None


def main_line(result: dict, out: Path) -> str:
    b = result["best"]
    return (f"best: trial {b['number']}, {result['objective']} {b['value']:.2f}%; recipe written to {out} "
            f"(confirm on the test set: tinymnist train {result['model']} --recipe {out} --seeds 1-5)")

