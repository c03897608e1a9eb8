"""Knowledge distillation: the teacher's weights, the blended loss, and bad settings."""

import json
import shutil
from pathlib import Path
from dataclasses import replace

import pytest
import torch

from tinymnist.engine import Ensemble, fit, make_teacher, predict, set_seed, training_loss
from tinymnist.model import REGISTRY, create_model, get_entry
from tinymnist.recipe import Recipe
from tinymnist.records import WEIGHTS_DIR, CheckpointError, shipped_name
from tinymnist.report import ReportError, ship_weights
from test_engine import fake_data

RESULTS = Path(__file__).resolve().parent.parent / "results"
TAUGHT = Recipe(epochs=1, batch_size=32, teacher="Model_11", distill=0.9, temperature=2.0)


def test_the_teacher_is_frozen_and_its_weights_do_not_move():
    before = torch.load(WEIGHTS_DIR / "Model_11.pt", weights_only=True)["state_dict"]
    teacher = make_teacher(TAUGHT, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    set_seed(0)
    fit(create_model("Model_12"), fake_data(), TAUGHT)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_teacher_changes_the_training():
    runs = []
    for recipe in (TAUGHT, TAUGHT.with_overrides(teacher=None, distill=0.0)):
        set_seed(0)
        model = create_model("Model_12")
        fit(model, fake_data(), recipe)
        runs.append(model.conv1[0].weight.detach().clone())
    assert not torch.equal(*runs)


def test_distillation_loss_is_zero_when_student_agrees_with_teacher_and_only_it_counts():
    out = torch.log_softmax(torch.randn(8, 10), dim=1)
    y = torch.randint(0, 10, (8,))
    only_teacher = TAUGHT.with_overrides(distill=1.0)
    assert training_loss(out, y, only_teacher, out.clone()).abs().item() < 1e-6
    assert training_loss(out, y, TAUGHT, None).item() == pytest.approx(torch.nn.functional.nll_loss(out, y).item())


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(teacher=None, distill=0.5), "needs a teacher"),
        (dict(distill=0.0), "distill must be in (0, 1]"),
        (dict(distill=1.5), "distill must be in (0, 1]"),
        (dict(temperature=0.0), "temperature must be positive"),
        ({"teacher": None, "distill": 0.0, "teacher_cache": True}, "teacher_cache needs a teacher"),
    ],
)
def test_bad_distillation_settings_are_errors(overrides, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("]", r"\]")):
        make_teacher(TAUGHT.with_overrides(**overrides), torch.device("cpu"))


def test_a_cached_teacher_is_its_outputs_on_the_images_as_they_are():
    images = fake_data().train_images
    cached = make_teacher(TAUGHT.with_overrides(teacher_cache=True), torch.device("cpu"), images)
    assert cached.shape == (len(images), 10)
    torch.testing.assert_close(cached, predict(make_teacher(TAUGHT, torch.device("cpu")), images))


def test_without_augmentation_a_cached_teacher_teaches_as_the_live_one():
    """The same targets, looked up instead of computed per batch: the same training up to float rounding.
    (With augmentation they differ on purpose: the cache holds the outputs for the images as they are.)"""
    histories = []
    for cache in (False, True):
        set_seed(0)
        recipe = TAUGHT.with_overrides(epochs=2, teacher_cache=cache)
        histories.append([row["train_loss"] for row in fit(create_model("Model_12"), fake_data(), recipe)])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


def test_a_teacher_without_shipped_weights_is_a_clear_error():
    with pytest.raises(CheckpointError, match="no shipped weights for Model_9"):
        make_teacher(TAUGHT.with_overrides(teacher="Model_9"), torch.device("cpu"))


def test_every_teacher_in_the_registry_ships_its_weights():
    for entry in REGISTRY.values():
        if entry.recipe.teacher:
            for seed in range(1, entry.recipe.teacher_seeds + 1):
                path = WEIGHTS_DIR / f"{shipped_name(get_entry(entry.recipe.teacher).name, seed)}.pt"
                assert path.is_file(), (entry.name, path)


def test_a_teacher_ensemble_averages_its_members_log_probabilities(tmp_path, monkeypatch):
    for seed in (1, 2):  # two runs of the final model, as `report` would ship them
        shutil.copyfile(RESULTS / "Model_11" / f"seed{seed}.pt", tmp_path / f"{shipped_name('Model_11', seed)}.pt")
    monkeypatch.setattr("tinymnist.records.WEIGHTS_DIR", tmp_path)
    ensemble = make_teacher(TAUGHT.with_overrides(teacher_seeds=2), torch.device("cpu"))
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    assert not ensemble.training and not any(p.requires_grad for p in ensemble.parameters())
    x = torch.randn(4, 1, 28, 28)
    a, b = (m(x) for m in ensemble.members)
    assert not torch.equal(a, b)  # two different runs
    assert torch.allclose(ensemble(x), (a + b) / 2)
    with pytest.raises(CheckpointError, match="no shipped weights for Model_11 seed 3"):
        make_teacher(TAUGHT.with_overrides(teacher_seeds=3), torch.device("cpu"))
    with pytest.raises(ValueError, match="teacher_seeds must be at least 1"):
        make_teacher(TAUGHT.with_overrides(teacher_seeds=0), torch.device("cpu"))


def _fake_results(results: Path, runs: dict[str, int]) -> None:
    for name, seeds in runs.items():
        (results / name).mkdir(parents=True)
        for seed in range(1, seeds + 1):
            shutil.copyfile(WEIGHTS_DIR / "Model_11.pt", results / name / f"seed{seed}.pt")  # any file: only copied
            (results / name / f"seed{seed}.json").write_text(
                f'{{"seed": {seed}, "epochs": [{{"test_acc": 99.0, "test_correct": 9900}}]}}'
            )


def test_ship_weights_keeps_a_teacher_that_holds_no_role(tmp_path, monkeypatch):
    _fake_results(tmp_path / "results", {"Model_11": 1, "Model_13": 1})
    entries = {name: replace(REGISTRY[name], role=None) for name in ("Model_11", "Model_13")}
    monkeypatch.setattr("tinymnist.report.REGISTRY", entries)
    shipped = ship_weights(tmp_path / "results", tmp_path / "weights")
    assert [p.name for p in shipped] == ["Model_11.pt"]  # the teacher, though it holds no role; not its pupil


def test_ship_weights_ships_every_seed_of_a_teacher_ensemble_and_says_which(tmp_path, monkeypatch):
    _fake_results(tmp_path / "results", {"Model_11": 3, "Model_13": 1})
    pupil = REGISTRY["Model_13"]
    entries = {
        "Model_11": replace(REGISTRY["Model_11"], role=None),
        "Model_13": replace(pupil, recipe=pupil.recipe.with_overrides(teacher_seeds=3)),
    }
    monkeypatch.setattr("tinymnist.report.REGISTRY", entries)
    shipped = ship_weights(tmp_path / "results", tmp_path / "weights")
    assert [p.name for p in shipped] == ["Model_11.pt", "Model_11.seed2.pt", "Model_11.seed3.pt"]
    assert json.loads((tmp_path / "weights" / "Model_11.seed3.json").read_text())["seed"] == 3
    (tmp_path / "results" / "Model_11" / "seed3.pt").unlink()
    with pytest.raises(ReportError, match="no seed-3 checkpoint and record of the teacher Model_11"):
        ship_weights(tmp_path / "results", tmp_path / "weights")
