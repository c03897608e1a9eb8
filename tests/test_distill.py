"""Knowledge distillation: the teacher's weights, the blended loss, and bad settings."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import fake_data
from tinymnist.engine import Ensemble, fit, make_teacher, set_seed, training_loss
from tinymnist.model import REGISTRY, ROLES, create_model, log_probs
from tinymnist.recipes import Recipe, RecipeError
from tinymnist.records import CheckpointError, load_teachers
from tinymnist.runtime import Runtime
from tinymnist.ship import SHIPPED_EXTRA, ShipError, ship_weights

RESULTS = Path(__file__).resolve().parent.parent / "results"
TAUGHT = Recipe(epochs=1, batch_size=32, teacher="Model_11", distill=0.9, temperature=2.0)
CPU = torch.device("cpu")


def teacher_of(recipe: Recipe, images=None):
    return make_teacher(load_teachers(recipe, CPU, RESULTS), recipe, Runtime(), images)


def test_the_teacher_comes_from_its_records_checkpoints_frozen_and_unmoved():
    before = torch.load(RESULTS / "Model_11" / "seed1.pt", weights_only=True)["state_dict"]
    members = load_teachers(TAUGHT, CPU, RESULTS)
    teacher = make_teacher(members, TAUGHT, Runtime())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    set_seed(0)
    fit(create_model("Model_12"), fake_data(), TAUGHT, teachers=members)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_teacher_changes_the_training():
    runs = []
    for recipe in (TAUGHT, TAUGHT.with_overrides(teacher=None, distill=0.0)):
        set_seed(0)
        model = fit(create_model("Model_12"), fake_data(), recipe, teachers=load_teachers(recipe, CPU, RESULTS)).model
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
        (dict(teacher=None, distill=0.5), "a teacher needs distill > 0"),
        (dict(distill=0.0), "a teacher needs distill > 0"),
        (dict(distill=1.5), "distill must be in [0, 1]"),
        (dict(temperature=0.0), "temperature must be positive"),
        (dict(teacher_seeds=0), "teacher_seeds must be at least 1"),
        ({"teacher": None, "distill": 0.0, "teacher_cache": True}, "teacher_cache needs a teacher"),
    ],
)
def test_bad_distillation_settings_are_errors(overrides, fragment):
    with pytest.raises(RecipeError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        TAUGHT.with_overrides(**overrides)


def test_a_cached_teacher_is_its_outputs_on_the_images_as_they_are():
    images = fake_data().train_images
    cached = teacher_of(TAUGHT.with_overrides(teacher_cache=True), images)
    assert cached.shape == (len(images), 10)
    torch.testing.assert_close(cached, log_probs(teacher_of(TAUGHT), images))


def test_without_augmentation_a_cached_teacher_teaches_as_the_live_one():
    """The same targets, looked up instead of computed per batch: the same training up to float rounding.
    (With augmentation they differ on purpose: the cache holds the outputs for the images as they are.)"""
    histories = []
    for cache in (False, True):
        set_seed(0)
        recipe = TAUGHT.with_overrides(epochs=2, teacher_cache=cache)
        teachers = load_teachers(recipe, CPU, RESULTS)
        histories.append([row["train_loss"] for row in fit(create_model("Model_12"), fake_data(), recipe,
                                                            teachers=teachers).history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


def test_a_teacher_without_checkpoints_in_its_records_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint .*Model_9/seed1\.pt; train it first"):
        load_teachers(TAUGHT.with_overrides(teacher="Model_9"), CPU, tmp_path)


def test_a_teacher_can_be_a_checkpoint_file():
    path = str(RESULTS / "Model_11" / "seed2.pt")
    (member,) = load_teachers(TAUGHT.with_overrides(teacher=path), CPU)
    want = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(want[k], v) for k, v in member.state_dict().items())
    with pytest.raises(CheckpointError, match="teacher_seeds must be 1"):
        load_teachers(TAUGHT.with_overrides(teacher=path, teacher_seeds=2), CPU)


@pytest.mark.artifacts
def test_every_teacher_in_the_registry_has_its_checkpoints_in_the_records():
    taught = [entry for entry in REGISTRY.values() if entry.recipe.teacher]
    if not taught:
        pytest.skip("no step of the registry has a teacher")
    for entry in taught:
        assert len(load_teachers(entry.recipe, CPU, RESULTS)) == entry.recipe.teacher_seeds, entry.name


def test_a_teacher_ensemble_averages_its_members_log_probabilities(tmp_path):
    for seed in (1, 2):
        (tmp_path / "Model_11").mkdir(exist_ok=True)
        shutil.copyfile(RESULTS / "Model_11" / f"seed{seed}.pt", tmp_path / "Model_11" / f"seed{seed}.pt")
    two = TAUGHT.with_overrides(teacher_seeds=2)
    ensemble = make_teacher(load_teachers(two, CPU, tmp_path), two, Runtime())
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    assert not ensemble.training and not any(p.requires_grad for p in ensemble.parameters())
    x = torch.randn(4, 1, 28, 28)
    a, b = (m(x) for m in ensemble.members)
    assert not torch.equal(a, b)  # two different runs
    assert torch.allclose(ensemble(x), (a + b) / 2)
    with pytest.raises(CheckpointError, match=r"no checkpoint .*seed3\.pt"):
        load_teachers(TAUGHT.with_overrides(teacher_seeds=3), CPU, tmp_path)


def test_ship_weights_ships_the_role_models_and_the_extras_only_and_says_which(tmp_path):
    results = tmp_path / "results"
    for name in [*ROLES.values(), *SHIPPED_EXTRA, "Model_11"]:
        (results / name).mkdir(parents=True)
        shutil.copyfile(RESULTS / "Model_11" / "seed1.pt", results / name / "seed1.pt")  # any file: only copied
        (results / name / "seed1.json").write_text(json.dumps({"seed": 1, "params": 1, "epochs": [
            {"epoch": 1, "train_loss": 0.1, "train_acc": 99.0, "test_loss": 0.1, "test_acc": 99.0, "test_correct": 9900,
             "lr": 0.01, "seconds": 1.0}]}))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "Model_11.pt").write_bytes(b"stale")
    shipped = ship_weights(results, tmp_path / "weights")
    assert sorted(p.stem for p in shipped) == sorted({*ROLES.values(), *SHIPPED_EXTRA})
    assert not (tmp_path / "weights" / "Model_11.pt").exists()  # a teacher holds no role: nothing ships it
    assert json.loads((tmp_path / "weights" / f"{ROLES['final']}.json").read_text())["role"] == "final"
    assert json.loads((tmp_path / "weights" / "Model_6.json").read_text())["role"] is None  # an extra, no role
    (results / ROLES["tiny"] / "seed1.pt").unlink()
    with pytest.raises(ShipError, match=f"no seed-1 checkpoint and record of the tiny model {ROLES['tiny']}"):
        ship_weights(results, tmp_path / "weights")
    shutil.copyfile(RESULTS / "Model_11" / "seed1.pt", results / ROLES["tiny"] / "seed1.pt")
    (results / "Model_6" / "seed1.pt").unlink()
    with pytest.raises(ShipError, match="no seed-1 checkpoint and record of Model_6"):
        ship_weights(results, tmp_path / "weights")
