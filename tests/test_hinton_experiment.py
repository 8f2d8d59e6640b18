"""Tests of the Hinton 2015 experiment: its command line (table, JSON, MNIST offline) on tiny
settings, counting on the validation split, the default outcome on digits, the validation scan
shipped in hinton_tuning.json (that Settings' defaults are its choices; read, not retrained) and
the tuning module itself on a tiny grid."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import pytest

import torch

from kdlearn import data, training
from kdlearn.experiments import hinton, hinton_tuning

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = ["--seeds", "2", "--epochs", "1", "--quiet"]


def test_table_lists_each_model_per_seed_beside_the_paper(capsys):
    assert hinton.main(TINY + ["--T", "3", "--alpha", "0.5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "on digits" in lines[0] and "540 test images" in lines[0] and "seeds 0, 1" in lines[0]
    assert "mean ± std" in out and "paper (MNIST, of 10,000)" in out
    rows = {name: next(line for line in lines if line.startswith(prefix)) for name, prefix in
            [("teacher", "teacher 64-256-256-10"), ("scratch", "student 64-20-20-10, from scratch"),
             ("distilled", "student 64-20-20-10, distilled")]}
    for name, row in rows.items():
        paper = hinton.PAPER_ERRORS[name]
        assert row.endswith(f"{paper} ({paper / 100:.2f}%)")
        cells = row.split()
        errors = [int(cells[i]) for i in range(len(cells)) if cells[i].isdigit()][:2]
        mean = statistics.fmean(errors)
        assert f"{mean:.1f} ± {statistics.stdev(errors):4.1f}" in row
        assert f"{100 * mean / 540:.2f}%" in row
    assert "gap closed by distillation" in out and "(paper: 91%)" in out
    assert "T=3.0" in out and "alpha=0.5" in out
    assert "teacher_epochs=1" in out and "scratch_epochs=1" in out and "distilled_epochs=1" in out


def test_json_gives_errors_per_seed_means_and_settings(capsys):
    assert hinton.main(TINY + ["--json", "--T", "2.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == "digits" and report["test_size"] == 540 and report["seeds"] == [0, 1]
    assert set(report["models"]) == {"teacher", "scratch", "distilled"}
    for figures in report["models"].values():
        assert len(figures["errors"]) == 2 and all(isinstance(e, int) and 0 <= e <= 540 for e in figures["errors"])
        assert figures["mean"] == pytest.approx(statistics.fmean(figures["errors"]))
        assert figures["error_percent"] == pytest.approx(100 * figures["mean"] / 540)
    assert report["paper"]["errors"] == {"teacher": 67, "scratch": 146, "distilled": 74}
    settings = report["settings"]
    assert settings["T"] == 2.5 and settings["alpha"] == hinton.Settings().alpha
    assert settings["teacher_epochs"] == settings["scratch_epochs"] == settings["distilled_epochs"] == 1
    assert settings["seeds"] == [0, 1]


def offline(*args, **kwargs):
    raise data.DataUnavailableError("MNIST could not be downloaded (no network); kdlearn.data.digits() needs none")


def test_mnist_offline_says_so_and_stops(monkeypatch, capsys):
    monkeypatch.setattr(data, "mnist", offline)
    assert hinton.main(["--data", "mnist", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "MNIST could not be downloaded" in captured.err and "--data digits" in captured.err
    assert captured.out == ""


def test_mnist_offline_falls_back_to_digits_when_asked(monkeypatch, capsys):
    monkeypatch.setattr(data, "mnist", offline)
    assert hinton.main(["--data", "mnist", "--fallback", "--seeds", "1", "--epochs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "Falling back" in captured.err and "on digits" in captured.out


def test_bad_temperature_stops_before_training(capsys):
    with pytest.raises(SystemExit) as stop:
        hinton.main(["--T", "0", "--quiet"])
    assert stop.value.code == 2 and "T" in capsys.readouterr().err


def test_run_is_deterministic_and_keeps_the_nets():
    settings = dataclasses.replace(hinton.default_settings(), seeds=(4,), teacher_epochs=2, scratch_epochs=2,
                                   distilled_epochs=2)
    first, second = hinton.run(settings, progress=False), hinton.run(settings, progress=False)
    assert first.errors == second.errors
    assert [len(first.models[name]) for name in hinton.MODELS] == [1, 1, 1]
    assert first.models["teacher"][0][0].out_features == 256


def test_default_digits_run_distilled_student_lands_between_scratch_and_teacher():
    """The default outcome the lesson relies on (about 30 s on one core): over the default 3 seeds,
    the distilled student beats the student from scratch on the test split, and the teacher beats
    both. How much of the gap it closes is measured and printed, not asserted: with settings
    chosen on validation it is a noisy share (see python -m kdlearn.experiments.hinton --seeds 12)."""
    results = hinton.run(hinton.default_settings("digits"), progress=False)
    assert len(results.settings.seeds) >= 3 and results.evaluated_on == "test"
    teacher, scratch, distilled = (results.mean(name) for name in hinton.MODELS)
    assert teacher < distilled < scratch, hinton.format_table(results)
    assert 0 < results.gap_closed() < 1


# --- counting on the validation split -----------------------------------------------------------

TWO_EPOCHS = dict(seeds=(0,), teacher_epochs=2, scratch_epochs=2, distilled_epochs=2)


def test_run_can_count_validation_errors_instead_of_test_errors():
    settings = dataclasses.replace(hinton.default_settings(), **TWO_EPOCHS)
    ds = data.digits()
    on_validation = hinton.run(settings, dataset=ds, progress=False, evaluate_on="validation")
    assert (on_validation.evaluated_on, on_validation.test_size) == ("validation", 270)
    assert hinton.run(settings, dataset=ds, progress=False).evaluated_on == "test"
    for name in hinton.MODELS:
        net = on_validation.models[name][0]
        assert on_validation.errors[name] == [training.test_errors(net, ds.validation)]
    assert "validation errors of 270 validation images" in hinton.format_table(on_validation)
    assert on_validation.to_json()["evaluated_on"] == "validation"


def test_evaluate_on_is_checked_before_any_training(monkeypatch):
    monkeypatch.setattr(hinton, "train_teacher", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ValueError, match="evaluate_on must be one of 'test', 'validation'"):
        hinton.run(progress=False, evaluate_on="train")
    without = dataclasses.replace(data.digits(), validation=None)
    with pytest.raises(ValueError, match="evaluate_on='validation' needs a dataset with a validation split"):
        hinton.run(dataset=without, progress=False, evaluate_on="validation")


def test_the_command_line_counts_validation_errors_when_asked(capsys):
    assert hinton.main(["--seeds", "1", "--epochs", "1", "--quiet", "--evaluate-on", "validation"]) == 0
    assert "validation errors of 270 validation images" in capsys.readouterr().out


# --- the shipped validation scan, and the defaults it chose ---------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return hinton_tuning.load()


def test_defaults_are_the_choices_of_the_shipped_scan(shipped):
    assert shipped["data"] == "digits" and shipped["evaluated_on"] == "validation"
    assert shipped["chosen"], "the scan chose nothing"
    for name, value in shipped["chosen"].items():
        assert getattr(hinton.Settings(), name) == value, name
        assert getattr(hinton.default_settings("digits"), name) == value, name


def test_shipped_scan_is_the_modules_scan_and_follows_its_rule(shipped):
    assert [stage["name"] for stage in shipped["stages"]] == [stage.name for stage in hinton_tuning.STAGES]
    assert shipped["start"] == hinton_tuning._json_settings(hinton_tuning.START, exclude={"seeds"})
    assert shipped["sizes"]["validation"] == len(data.digits().validation)
    # Seeds of its own: none of those the test figures are reported on.
    assert len(shipped["seeds"]) >= 3 and not set(shipped["seeds"]) & set(range(12))
    chosen_so_far = {}
    for stage, module_stage in zip(shipped["stages"], hinton_tuning.STAGES):
        assert stage["grid"] == {name: list(values) for name, values in module_stage.grid.items()}
        # Each stage ran with the earlier stages' choices in place.
        assert all(stage["fixed"][name] == value for name, value in chosen_so_far.items() if name in stage["fixed"])
        for configuration in stage["configurations"]:
            assert len(configuration["errors"]) == len(shipped["seeds"])
            assert configuration["mean"] == pytest.approx(statistics.fmean(configuration["errors"]))
        assert stage["configurations"][hinton_tuning.choose(stage["configurations"])]["values"] == stage["chosen"]
        chosen_so_far.update(stage["chosen"])
    assert shipped["chosen"] == chosen_so_far


def test_shipped_scan_gives_the_student_from_scratch_the_distilled_budget(shipped):
    stages = {stage["name"]: stage for stage in shipped["stages"]}
    assert max(stages["scratch"]["grid"]["scratch_epochs"]) >= max(stages["distilled"]["grid"]["distilled_epochs"])


def test_shipped_check_run_agrees_with_the_stages(shipped):
    """hinton.run with the choices, on validation, repeats the chosen configurations' errors."""
    chosen = {stage["measures"]: next(c for c in stage["configurations"] if c["values"] == stage["chosen"])
              for stage in shipped["stages"]}  # the last stage measuring each net wins
    for name in hinton.MODELS:
        assert shipped["chosen_on_validation"]["models"][name]["errors"] == chosen[name]["errors"], name


def test_format_stage_marks_the_choice(shipped):
    for stage in shipped["stages"]:
        table = hinton_tuning.format_stage(shipped, stage["name"])
        marked = [line for line in table.splitlines() if line.startswith("* ")]
        assert len(marked) == 1 and "validation errors per seed" in table
    assert "chosen:" in hinton_tuning.format_scan(shipped)
    with pytest.raises(ValueError, match="name must be one of 'teacher'"):
        hinton_tuning.format_stage(shipped, "student")


def test_load_names_the_command_when_there_is_no_scan(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m kdlearn.experiments.hinton_tuning --out"):
        hinton_tuning.load(tmp_path / "missing.json")


# --- the tuning module itself, on a tiny grid ----------------------------------------------------

TINY_START = dataclasses.replace(hinton_tuning.START, teacher_epochs=2, scratch_epochs=2, distilled_epochs=2)
TINY_STAGES = (
    hinton_tuning.Stage("teacher", "teacher", {"teacher_lr": (1e-3, 1e-2)}, "teacher lr"),
    hinton_tuning.Stage("scratch", "scratch", {"scratch_epochs": (1, 3)}, "scratch epochs"),
    hinton_tuning.Stage("temperature", "distilled", {"T": (2.0, 4.0), "alpha": (1.0,)}, "T"),
)


def test_tuning_scan_on_a_tiny_grid_never_looks_at_the_test_split():
    ds = data.digits()
    scan = hinton_tuning.scan(ds, seeds=(100,), stages=TINY_STAGES, start=TINY_START, progress=False)
    assert [stage["name"] for stage in scan["stages"]] == ["teacher", "scratch", "temperature"]
    for stage in scan["stages"]:
        best = min(c["mean"] for c in stage["configurations"])
        assert next(c for c in stage["configurations"] if c["values"] == stage["chosen"])["mean"] == best
        assert all(0 <= e <= 270 for c in stage["configurations"] for e in c["errors"])
    assert "distilled_from_it" in scan["stages"][0]["configurations"][0]
    # Later stages run with earlier choices in place.
    assert scan["stages"][1]["fixed"]["teacher_lr"] == scan["chosen"]["teacher_lr"]
    assert set(scan["chosen"]) == {"teacher_lr", "scratch_epochs", "T", "alpha"}
    json.dumps(scan, allow_nan=False)  # writable as JSON
    # A test split of nonsense changes nothing: the scan never counts on it.
    nonsense = data.Split(torch.zeros(1, 64), torch.tensor([3]))
    again = hinton_tuning.scan(dataclasses.replace(ds, test=nonsense), seeds=(100,), stages=TINY_STAGES,
                               start=TINY_START, progress=False)
    assert again["stages"] == scan["stages"] and again["chosen_on_validation"] == scan["chosen_on_validation"]


def test_choose_takes_the_lowest_mean_then_fewer_epochs_then_the_first():
    def c(mean, **values):
        return {"mean": mean, "values": values}

    assert hinton_tuning.choose([c(5.0, lr=1), c(4.0, lr=2), c(4.5, lr=3)]) == 1
    assert hinton_tuning.choose([c(4.0, scratch_epochs=150), c(4.0, scratch_epochs=50)]) == 1
    assert hinton_tuning.choose([c(4.0, T=2.0), c(4.0, T=4.0)]) == 0
    with pytest.raises(ValueError, match="configurations"):
        hinton_tuning.choose([])


def test_tuning_scan_rejects_a_bad_stage_or_no_seeds():
    with pytest.raises(ValueError, match="grid names fields Settings does not have"):
        hinton_tuning.scan(stages=(hinton_tuning.Stage("x", "teacher", {"teacher_rate": (1,)}, "?"),), progress=False)
    with pytest.raises(ValueError, match="measures must be one of"):
        hinton_tuning.scan(stages=(hinton_tuning.Stage("x", "student", {"T": (1.0,)}, "?"),), progress=False)
    with pytest.raises(ValueError, match="seeds must hold at least one seed"):
        hinton_tuning.scan(seeds=(), progress=False)


def test_tuning_command_line_writes_a_scan_that_load_reads(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        hinton_tuning.main(["--help"])
    assert stop.value.code == 0 and "--seeds" in capsys.readouterr().out
    monkeypatch.setattr(hinton_tuning, "STAGES", TINY_STAGES[1:])
    monkeypatch.setattr(hinton_tuning, "START", TINY_START)
    out = tmp_path / "scan.json"
    assert hinton_tuning.main(["--seeds", "1", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    scan = hinton_tuning.load(out)
    assert scan["seeds"] == [hinton_tuning.FIRST_SEED] and "scratch epochs" in printed
    assert hinton_tuning.format_scan(scan) in printed


def test_the_experiments_shared_helpers():
    from kdlearn.experiments import positive_int, seed_std
    assert seed_std([1.0, 2.0, 3.0]) == 1.0 and seed_std(iter([4.0, 8.0])) == pytest.approx(2 ** 1.5)
    assert seed_std([5.0]) == 0.0
    assert positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer, got 0"):
        positive_int("0")
