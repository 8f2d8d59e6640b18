"""kdlearn.experiments.families: each method's loss is wired as its docstring says (checked against
computations done here by hand), adapters train, runs repeat, the CLI's JSON has the issue's
shape, the shipped validation scan and Settings' defaults agree, and bad input is refused."""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest
import torch
import torch.nn.functional as F

from kdlearn import data, features, models, training
from kdlearn.experiments import families
from kdlearn.losses import kd_loss

TINY = families.Settings(seeds=(0,), teacher_epochs=2, full_epochs=1, few_epochs=3)


@pytest.fixture(scope="module")
def dataset():
    return data.digits()


@pytest.fixture(scope="module")
def teacher(dataset):
    return families.train_teacher(dataset, TINY)


def batch(dataset, n=12):
    return dataset.train.x[:n], dataset.train.y[:n]


def attention_by_hand(a):
    q = a.pow(2).sum(dim=1).flatten(1)
    return q / q.norm(dim=1, keepdim=True)


def outputs_by_hand(net, x, names):
    with features.capture(net, names) as captured:
        logits = net(x)
    return logits, dict(captured)


def test_scratch_and_response_kd_are_ce_and_kd_loss(dataset, teacher):
    x, y = batch(dataset)
    for method in ("scratch", "response_kd"):
        student, taught_by, loss = families.student_and_loss(method, teacher, TINY, seed=0)
        assert taught_by is teacher and isinstance(student, torch.nn.Sequential)
        z, v = student(x), teacher(x)
        expected = F.cross_entropy(z, y) if method == "scratch" else kd_loss(z, v, y, T=TINY.T, alpha=TINY.alpha)
        torch.testing.assert_close(loss(z, v, y), expected)


def test_attention_matches_the_maps_of_both_blocks_added_to_ce(dataset, teacher):
    settings = dataclasses.replace(TINY, attention_weight=3.0)
    student, taught_by, loss = families.student_and_loss("attention", teacher, settings, seed=0)
    assert student.names == ("block1", "block2") and taught_by.names == ("block1", "block2")
    x, y = batch(dataset)
    z, s = outputs_by_hand(student.model, x, ["block1", "block2"])
    v, t = outputs_by_hand(teacher, x, ["block1", "block2"])
    at = sum((attention_by_hand(s[name]) - attention_by_hand(t[name])).pow(2).sum(dim=1).mean()
             for name in ("block1", "block2"))
    torch.testing.assert_close(loss(student(x), taught_by(x), y), F.cross_entropy(z, y) + 3.0 * at)


def test_rkd_adds_distances_and_twice_the_angles_to_ce(dataset, teacher):
    settings = dataclasses.replace(TINY, rkd_weight=5.0)
    student, taught_by, loss = families.student_and_loss("rkd", teacher, settings, seed=0)
    x, y = batch(dataset)
    z, s = outputs_by_hand(student.model, x, ["embed"])
    _, t = outputs_by_hand(teacher, x, ["embed"])
    # The distance term by hand: pairwise distances over their mean, smooth L1 between them.
    i, j = torch.triu_indices(len(x), len(x), offset=1)

    def psi(e):
        d = (e[i] - e[j]).norm(dim=1)
        return d / d.mean()

    distance = F.smooth_l1_loss(psi(s["embed"]), psi(t["embed"]))
    angle = features.rkd_angle_loss(s["embed"], t["embed"])
    torch.testing.assert_close(loss(student(x), taught_by(x), y),
                               F.cross_entropy(z, y) + 5.0 * (distance + 2.0 * angle))


@pytest.mark.parametrize("method, layer, adapter_type", [("hints", "block2", torch.nn.Conv2d),
                                                         ("cosine", "embed", torch.nn.Linear)])
def test_projections_map_to_the_teachers_width_and_train_with_the_student(dataset, teacher, method, layer,
                                                                          adapter_type):
    student, taught_by, loss = families.student_and_loss(method, teacher, TINY, seed=0)
    (adapter,) = student.adapters
    assert isinstance(adapter, adapter_type)
    x, y = batch(dataset)
    _, s = student(x)
    _, t = taught_by(x)
    assert s[layer].shape == t[layer].shape  # projected to the teacher's width
    # The term, by hand, on top of kd_loss.
    z, raw = outputs_by_hand(student.model, x, [layer])
    v = teacher(x)
    if method == "hints":
        term = (adapter(raw[layer]) - t[layer]).pow(2).mean()
    else:
        term = (1 - F.cosine_similarity(adapter(raw[layer]), t[layer], dim=1)).mean()
    weight = TINY.hint_weight if method == "hints" else TINY.cosine_weight
    expected = kd_loss(z, v, y, T=TINY.T, alpha=TINY.alpha) + weight * term
    torch.testing.assert_close(loss(student(x), taught_by(x), y), expected)
    before = [p.detach().clone() for p in adapter.parameters()]
    training.train(student, dataset.train, teacher=taught_by, loss=loss, epochs=1, lr=1e-2, progress=False)
    assert all(not torch.equal(b, p) for b, p in zip(before, adapter.parameters()))


def test_the_adapter_and_student_start_alike_for_a_seed(teacher):
    a, _, _ = families.student_and_loss("hints", teacher, TINY, seed=3)
    b, _, _ = families.student_and_loss("hints", teacher, TINY, seed=3)
    c, _, _ = families.student_and_loss("hints", teacher, TINY, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.adapters[0].weight, c.adapters[0].weight)


def test_few_labels_draws_per_class_examples_of_the_split(dataset):
    few = families.few_labels(dataset.train, 3, seed=0)
    assert torch.bincount(few.y, minlength=10).tolist() == [3] * 10
    rows = [int(torch.nonzero((dataset.train.x == image).all(dim=1))[0]) for image in few.x]
    assert all(dataset.train.y[r] == label for r, label in zip(rows, few.y))
    assert not torch.equal(few.x, families.few_labels(dataset.train, 3, seed=1).x)
    with pytest.raises(ValueError, match="labels_per_class"):
        families.few_labels(dataset.train, 10_000, seed=0)


def test_run_repeats_and_its_curves_end_at_the_errors(dataset, teacher):
    settings = dataclasses.replace(TINY, methods=("scratch", "hints"))
    first = families.run(settings, dataset=dataset, teacher=teacher, progress=False)
    second = families.run(settings, dataset=dataset, teacher=teacher, progress=False)
    assert first.errors == second.errors and first.curves == second.curves
    for regime in families.REGIMES:
        for method in settings.methods:
            (curve,) = first.curves[regime][method]
            assert len(curve) == settings.epochs(regime) + 1  # before training, then after each epoch
            assert curve[-1] == first.errors[regime][method][0]
    assert first.teacher_errors == training.test_errors(teacher, dataset.test)


def test_run_counts_on_the_validation_split_when_asked(dataset, teacher):
    settings = dataclasses.replace(TINY, methods=("scratch",), regimes=("few",))
    results = families.run(settings, dataset=dataset, teacher=teacher, progress=False, evaluate_on="validation")
    assert results.test_size == len(dataset.validation.y)
    assert results.teacher_errors == training.test_errors(teacher, dataset.validation)


def test_cli_json_has_a_row_per_method_with_mean_std_and_seeds(capsys):
    assert families.main(["--json", "--quiet", "--seeds", "2", "--epochs", "1", "--regimes", "few",
                          "--methods", "scratch", "response_kd", "rkd"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["regimes"]["few"]
    assert list(rows) == ["scratch", "response_kd", "rkd"]
    for row in rows.values():
        assert set(row) == {"test_errors", "std", "seeds"} and row["seeds"] == 2
        assert 0 <= row["test_errors"] <= out["test_size"] == 540 and row["std"] >= 0


def test_results_json_takes_mean_and_sample_std(dataset):
    results = families.Results(TINY, "test", 540, 10, errors={"few": {"scratch": [10, 14, 12]}})
    assert results.to_json()["regimes"]["few"]["scratch"] == {"test_errors": 12, "std": statistics.stdev([10, 14, 12]),
                                                              "seeds": 3}
    assert "scratch" in families.format_table(results)


def test_settings_defaults_are_the_shipped_scans_choices():
    scan = families.load_scan()
    defaults = families.Settings()
    assert scan["evaluated_on"] == "validation" and scan["seeds"] == list(families.SCAN_SEEDS)
    assert [record["method"] for record in scan["methods"]] == list(families.SCAN_GRID)
    for record in scan["methods"]:
        assert record["grid"] == {k: list(v) for k, v in families.SCAN_GRID[record["method"]].items()}
        # The choice is the lowest score, recomputed here from the errors stored per seed.
        scores = [sum(statistics.fmean(e) for e in c["errors"].values()) for c in record["configurations"]]
        assert record["chosen"] == record["configurations"][scores.index(min(scores))]["values"]
        for name, value in record["chosen"].items():
            assert getattr(defaults, name) == value, name
    assert set(scan["seeds"]).isdisjoint(defaults.seeds)


def test_the_student_is_much_smaller_than_the_teacher():
    def size(net):
        return sum(p.numel() for p in net.parameters())

    s = families.Settings()
    teacher = models.cnn(s.teacher_channels, s.teacher_embedding)
    student = models.cnn(s.student_channels, s.student_embedding)
    assert size(teacher) > 10 * size(student)


@pytest.mark.parametrize("change, name", [
    ({"seeds": ()}, "seeds"), ({"methods": ("fitnets",)}, "methods"), ({"regimes": ()}, "regimes"),
    ({"full_epochs": 0}, "full_epochs"), ({"student_lr": 0.0}, "student_lr"),
    ({"hint_weight": -1.0}, "hint_weight"), ({"rkd_weight": float("nan")}, "rkd_weight"),
    ({"T": 0.0}, "T"), ({"alpha": 1.5}, "alpha"),
])
def test_bad_settings_are_refused_naming_the_setting(dataset, change, name):
    with pytest.raises(ValueError, match=name):
        families.run(dataclasses.replace(TINY, **change), dataset=dataset, progress=False)


def test_bad_arguments(dataset, teacher):
    with pytest.raises(ValueError, match="evaluate_on"):
        families.run(TINY, dataset=dataset, teacher=teacher, evaluate_on="train", progress=False)
    with pytest.raises(ValueError, match="method"):
        families.student_and_loss("fitnets", teacher, TINY, seed=0)
    for argv in (["--seeds", "0"], ["--methods", "fitnets"], ["--out", "x.json"], ["--epochs", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            families.main(argv)
        assert exit_info.value.code == 2
