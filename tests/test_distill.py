"""Knowledge distillation: the teacher's weights, the blended loss, and bad settings."""

import shutil
from dataclasses import replace

import pytest
import torch

from tinymnist.engine import fit, make_teacher, set_seed, training_loss
from tinymnist.model import REGISTRY, create_model, get_entry
from tinymnist.recipe import Recipe
from tinymnist.records import WEIGHTS_DIR, CheckpointError
from tinymnist.report import ship_weights
from test_engine import fake_data

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
    ],
)
def test_bad_distillation_settings_are_errors(overrides, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("]", r"\]")):
        make_teacher(TAUGHT.with_overrides(**overrides), torch.device("cpu"))


def test_a_teacher_without_shipped_weights_is_a_clear_error():
    with pytest.raises(CheckpointError, match="no shipped weights for Model_9"):
        make_teacher(TAUGHT.with_overrides(teacher="Model_9"), torch.device("cpu"))


def test_every_teacher_in_the_registry_ships_its_weights():
    teachers = {e.recipe.teacher for e in REGISTRY.values() if e.recipe.teacher}
    for name in teachers:
        assert (WEIGHTS_DIR / f"{get_entry(name).name}.pt").is_file(), name


def test_ship_weights_keeps_a_teacher_that_holds_no_role(tmp_path, monkeypatch):
    results = tmp_path / "results"
    for name in ("Model_11", "Model_13"):
        (results / name).mkdir(parents=True)
        shutil.copyfile(WEIGHTS_DIR / "Model_11.pt", results / name / "seed1.pt")  # any file: only copied
        (results / name / "seed1.json").write_text('{"seed": 1, "epochs": [{"test_acc": 99.0, "test_correct": 9900}]}')
    entries = {name: replace(REGISTRY[name], role=None) for name in ("Model_11", "Model_13")}
    monkeypatch.setattr("tinymnist.report.REGISTRY", entries)
    shipped = ship_weights(results, tmp_path / "weights")
    assert [p.name for p in shipped] == ["Model_11.pt"]  # the teacher, though it holds no role; not its pupil
