"""kdlearn.experiments.schemes: the CLI on a tiny setting, its JSON, determinism, the shipped scan
and the defaults it chose, and bad arguments."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kdlearn import data, models, training
from kdlearn.experiments import schemes

TINY = ["--seeds", "2", "--epochs", "2", "--quiet"]


def tiny_json(capsys):
    assert schemes.main(TINY + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_gives_every_method_its_mean_std_and_seeds(capsys):
    report = tiny_json(capsys)
    expected = {*schemes.METHODS, *schemes.REFERENCES, "born_again_gen1", "born_again_gen2"}
    assert set(report) == expected
    for name, row in report.items():
        assert set(row) == {"test_errors", "std", "seeds"}, name
        assert row["seeds"] == 2 and 0 <= row["test_errors"] <= 540 and row["std"] >= 0


def test_the_cli_is_deterministic(capsys):
    assert tiny_json(capsys) == tiny_json(capsys)


def test_json_means_and_stds_are_those_of_the_errors_per_seed():
    settings = schemes.Settings(seeds=(0, 1), epochs=2, teacher_epochs=2)
    results = schemes.run(settings, progress=False)
    for name, row in results.to_json().items():
        a, b = results.errors[name]
        assert row["test_errors"] == pytest.approx((a + b) / 2)
        assert row["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)
    assert results.errors["born_again"] == results.errors["born_again_gen2"]


def test_the_table_names_every_method_and_both_claims(capsys):
    assert schemes.main(["--seeds", "1", "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for name in schemes.METHODS:
        assert f"\n{name} " in out
    assert "born-again generation 1 beats its same-size teacher" in out
    assert "teacher-assistant chain" in out and "61.1%" in out


def test_evaluate_on_validation_counts_the_validation_split():
    results = schemes.run(schemes.Settings(seeds=(0,), epochs=1, teacher_epochs=1), progress=False,
                          evaluate_on="validation", methods=("scratch",))
    assert results.test_size == len(data.digits().validation) and set(results.errors) == {"scratch"}


def test_scratch_and_response_kd_are_the_train_calls_they_say_they_are():
    """Written out with kdlearn.training: the student from scratch and the one distilled from the
    teacher start from the same weights (seed + STUDENT_SEED_OFFSET) and are counted on the test split."""
    settings = schemes.Settings(seeds=(3,), epochs=2, teacher_epochs=2)
    results = schemes.run(settings, progress=False, methods=("scratch", "response_kd"))
    ds = data.digits()
    teacher = models.mlp(64, settings.teacher_hidden, dropout=settings.teacher_dropout, seed=3)
    training.train(teacher, ds.train, epochs=2, lr=settings.teacher_lr, seed=3, progress=False)
    by_hand = {}
    for name in ("scratch", "response_kd"):
        student = models.mlp(64, settings.student_hidden, seed=3 + schemes.STUDENT_SEED_OFFSET)
        extra = dict(teacher=teacher, loss="kd", T=settings.T, alpha=settings.alpha) if name == "response_kd" else {}
        training.train(student, ds.train, epochs=2, lr=settings.lr, seed=3, progress=False, **extra)
        by_hand[name] = [training.test_errors(student, ds.test)]
    assert results.errors["scratch"] == by_hand["scratch"]
    assert results.errors["response_kd"] == by_hand["response_kd"]
    assert results.errors["teacher"] == [training.test_errors(teacher, ds.test)]


def test_share_of_ensemble_gain_matches_the_papers_figures():
    assert schemes.paper_share_of_ensemble_gain() == pytest.approx((60.8 - 58.9) / (61.1 - 58.9))
    assert schemes.share_of_ensemble_gain(20, 10, 15) == pytest.approx(0.5)  # errors: lower is better


# --- the scan ------------------------------------------------------------------------------------


def test_the_defaults_are_the_shipped_scans_choices():
    scan = schemes.load_scan()
    defaults = schemes.Settings()
    assert scan["chosen"] and all(getattr(defaults, k) == v for k, v in scan["chosen"].items()), scan["chosen"]


def test_the_shipped_scans_choices_follow_its_rule_from_its_own_figures():
    scan = schemes.load_scan()
    assert scan["evaluated_on"] == "validation"
    assert not set(scan["seeds"]) & set(schemes.Settings().seeds), "the scan's seeds are its own"
    for stage in scan["stages"]:
        best = min(stage["configurations"], key=lambda c: c["mean"])
        assert stage["chosen"] == best["values"], stage["name"]
        for c in stage["configurations"]:
            assert c["mean"] == pytest.approx(sum(c["errors"]) / len(c["errors"]))
    assert [s["name"] for s in scan["stages"]] == [name for name, _, _ in schemes.SCAN_STAGES]


def test_scan_runs_end_to_end_on_a_tiny_grid(monkeypatch):
    monkeypatch.setattr(schemes, "SCAN_STAGES", (("kd", "response_kd", {"T": (2.0, 4.0)}),
                                                 ("byot", "byot", {"byot_alpha": (0.5,)})))
    result = schemes.scan(seeds=(100,), base=schemes.Settings(epochs=1, teacher_epochs=1), progress=False)
    assert set(result["chosen"]) == {"T", "byot_alpha"} and result["seeds"] == [100]
    assert len(result["stages"][0]["configurations"]) == 2


def test_scan_out_writes_json_that_load_scan_reads_back(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(schemes, "SCAN_STAGES", (("mutual", "mutual", {"mutual_T": (1.0,)}),))
    monkeypatch.setattr(schemes, "SCAN_SEEDS", (100,))
    out = tmp_path / "scan.json"
    assert schemes.main(["--scan", "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    assert "written to" in capsys.readouterr().out
    assert schemes.load_scan(out)["chosen"] == {"mutual_T": 1.0}


def test_a_missing_scan_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="kdlearn.experiments.schemes --scan"):
        schemes.load_scan(tmp_path / "none.json")


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "must be a positive integer"),
    (["--epochs", "-3"], "must be a positive integer"),
    (["--out", "scan.json"], "--out writes the scan"),
    (["--evaluate-on", "train"], "invalid choice"),
])
def test_bad_options_are_refused_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit):
        schemes.main(argv + ["--quiet"])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"T": 0.0}, "T \\(temperature\\)"),
    ({"alpha": 1.5}, "alpha"),
    ({"byot_alpha": -1.0}, "byot_alpha"),
    ({"mutual_T": 0.0}, "mutual_T"),
    ({"generations": 0}, "generations"),
    ({"ensemble_size": 0}, "ensemble_size"),
    ({"seeds": ()}, "seeds"),
])
def test_bad_settings_are_refused_naming_the_setting(change, message):
    with pytest.raises(ValueError, match=message):
        schemes.run(dataclasses.replace(schemes.Settings(), **change), progress=False)


def test_bad_run_arguments_are_refused_before_training():
    with pytest.raises(ValueError, match="evaluate_on"):
        schemes.run(evaluate_on="train", progress=False)
    with pytest.raises(ValueError, match="methods must be"):
        schemes.run(methods=("distillation",), progress=False)
