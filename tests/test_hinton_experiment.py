"""Tests of the Hinton 2015 experiment: its command line (table, JSON, MNIST offline) on tiny
settings, and the tuned default outcome on digits: distillation closes at least half the gap."""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest

from kdlearn import data
from kdlearn.experiments import hinton

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


def test_default_digits_run_distillation_closes_at_least_half_the_gap():
    """The tuned outcome the lesson relies on (about 20 s on one core): over the default 3 seeds,
    the distilled student beats the student from scratch and closes >= half its gap to the teacher."""
    results = hinton.run(hinton.default_settings("digits"), progress=False)
    assert len(results.settings.seeds) >= 3
    teacher, scratch, distilled = (results.mean(name) for name in hinton.MODELS)
    assert teacher < distilled < scratch
    assert scratch - distilled >= 0.5 * (scratch - teacher), hinton.format_table(results)
