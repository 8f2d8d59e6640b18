"""Tests of lesson 09's experiment, kdlearn.experiments.sequence_kd: its command line (table, JSON) on
tiny settings, the transfer sets it writes, the cached teacher against the teacher itself, the
settings' checks, the shipped validation scan (that Settings' defaults are its choices, and that its
choices follow its rules; read, not rerun) and the scan itself on a tiny grid."""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest
import torch

from kdlearn import distill, lm, teachers
from kdlearn.experiments import sequence_kd

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = ["--seeds", "2", "--steps", "3", "--prompts", "40", "--quiet"]


@pytest.fixture(scope="module")
def teacher():
    return teachers.load("any_order")


def tiny(**overrides) -> sequence_kd.Settings:
    return dataclasses.replace(sequence_kd.Settings(), **{"steps": 3, "prompts": 40, "width": 8, "seeds": (0,),
                                                          **overrides})


# --- the command line ---------------------------------------------------------------------------------


def test_json_gives_each_methods_mean_accuracy(capsys):
    assert sequence_kd.main(TINY + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == list(sequence_kd.METHODS)
    assert all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in report.values())


def test_table_lists_each_method_with_its_spread_and_the_paper(capsys):
    assert sequence_kd.main(TINY + ["--methods", "sequence_kd", "hard_labels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "any_order" in lines[0] and "200 test prompts" in lines[0] and "seeds 0, 1" in lines[0]
    assert "3 steps of 64" in lines[1] and "40 training prompts" in lines[1]
    rows = [line for line in lines if line.startswith(("hard labels", "sequence-level KD"))]
    assert [row.split("  ")[0] for row in rows] == ["hard labels", "sequence-level KD"]   # METHODS' order
    for row in rows:
        per_seed = [float(x) for x in row.split()[-2:]]
        assert f"{statistics.fmean(per_seed):.3f} ± {statistics.stdev(per_seed):.3f}" in row
    assert any(line.startswith("teacher (greedy)") and line.endswith("1.000") for line in lines)
    assert "Kim & Rush 2016" in lines[-1] and "4.2" in lines[-1] and "1.7" in lines[-1]


def test_lr_sets_every_methods_learning_rate(capsys):
    assert sequence_kd.main(TINY + ["--seeds", "1", "--lr", "0.02", "--methods", "word_kd", "sequence_kd"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("word-level KD", "sequence-level KD"))]
    assert len(rows) == 2 and all(" 2e-02 " in row for row in rows)


def test_a_bad_temperature_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sequence_kd.main(TINY + ["--temperature", "0"])
    assert exit_info.value.code == 2
    assert "temperature must be a number above 0" in capsys.readouterr().err


# --- the pieces ---------------------------------------------------------------------------------------


def test_transfer_sets_hold_the_task_data_the_greedy_outputs_and_only_accepted_samples(teacher):
    settings = tiny(temperature=3.0, samples_per_prompt=2)
    sets = sequence_kd.write_transfer_sets(teacher, settings, seed=5)
    examples = teacher.task.examples("train", 40, seed=5)
    assert sets.data["original"] == [(e.prompt, e.answer) for e in examples]
    greedy = lm.complete(teacher.model, teacher.tokenizer, [e.prompt for e in examples], max_new_tokens=5,
                         temperature=0)
    assert sets.data["greedy"] == list(zip([e.prompt for e in examples], greedy))
    assert sets.kept["greedy"] == pytest.approx(statistics.fmean(teacher.task.is_correct(e.prompt, g)
                                                                 for e, g in zip(examples, greedy)))
    sampled = sets.data["sampled"]
    assert sampled and all(teacher.task.is_correct(p, o) for p, o in sampled)
    assert sets.kept["sampled"] == pytest.approx(len(sampled) / 80)
    assert sets.kept["sampled"] < 0.9   # at T = 3 the teacher's samples are often wrong: the filter works


def test_unfiltered_samples_are_kept_whole(teacher):
    sets = sequence_kd.write_transfer_sets(teacher, tiny(temperature=3.0, verify=False, methods=("sampled_filtered",)),
                                           seed=5)
    assert set(sets.data) == {"sampled"} and len(sets.data["sampled"]) == 40 and sets.kept["sampled"] == 1.0
    assert not all(teacher.task.is_correct(p, o) for p, o in sets.data["sampled"])


def test_word_kd_with_the_cache_trains_the_student_as_the_teacher_itself_does(teacher):
    data = sequence_kd.write_transfer_sets(teacher, tiny(), seed=0).data["original"]
    settings = tiny()
    cached = sequence_kd.train_student("word_kd", data, teacher, settings, seed=0)
    direct = sequence_kd.new_student(teacher, settings, seed=0)
    distill.train(direct, teacher.tokenizer, data, teacher=teacher.model, objective=distill.Objective("forward"),
                  steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr("word_kd"), seed=0,
                  progress=False)
    for a, b in zip(cached.parameters(), direct.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_run_is_deterministic():
    settings = tiny(methods=("hard_labels", "sampled_filtered"), steps=20)
    first, second = (sequence_kd.run(settings, evaluate_on="validation", progress=False) for _ in range(2))
    assert first.accuracy == second.accuracy and first.kept == second.kept
    assert first.evaluated_on == "validation" and first.evaluation_size == 200


@pytest.mark.parametrize("field, value, words", [
    ("steps", 0, "steps must be a positive int"),
    ("prompts", 2.5, "prompts must be a positive int"),
    ("samples_per_prompt", 0, "samples_per_prompt must be a positive int"),
    ("keep_per_prompt", 0, "keep_per_prompt must be None"),
    ("temperature", 0.0, "temperature must be a number above 0"),
    ("methods", ("beam_kd",), "methods must be a non-empty selection"),
    ("methods", (), "methods must be a non-empty selection"),
    ("learning_rates", {"hard_labels": 1e-3}, "learning_rates has no learning rate for word_kd"),
    ("seeds", (), "seeds is empty"),
])
def test_bad_settings_are_refused_by_name(field, value, words):
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(sequence_kd.Settings(), **{field: value})


def test_run_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="evaluate_on must be one of"):
        sequence_kd.run(tiny(), evaluate_on="train")


def test_distinct_per_prompt_counts_different_completions():
    data = [("a:", "1"), ("a:", "2"), ("a:", "1"), ("b:", "3")]
    assert sequence_kd.distinct_per_prompt(data) == pytest.approx(1.5)


# --- the validation scan ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return sequence_kd.load_scan()


def test_defaults_are_the_shipped_scans_choices(shipped):
    assert sequence_kd.settings_from_scan(shipped) == sequence_kd.Settings()
    fixed = shipped["fixed"]
    defaults = sequence_kd.Settings()
    assert {k: getattr(defaults, k) for k in fixed} == fixed
    assert shipped["evaluated_on"] == "validation" and shipped["seeds"] == list(sequence_kd.SCAN_SEEDS)
    assert not set(shipped["seeds"]) & set(defaults.seeds)


def check_choices_follow_the_rules(scan):
    results = scan["student"]["results"]

    def mean(width, lr, method):
        return next(r["mean"] for r in results if (r["width"], r["lr"], r["method"]) == (width, lr, method))

    lrs, widths = scan["student"]["grid"]["lr"], sorted(scan["student"]["grid"]["width"])
    chosen = scan["student"]["chosen"]
    for method in scan["student"]["grid"]["method"]:
        best = max(mean(chosen["width"], lr, method) for lr in lrs)
        assert mean(chosen["width"], chosen["learning_rates"][method], method) == best
    assert chosen["learning_rates"]["sampled_filtered"] == chosen["learning_rates"]["sequence_kd"]

    def baseline(width):
        return max(mean(width, lr, "hard_labels") for lr in lrs)

    reaching = [w for w in widths if baseline(w) >= sequence_kd.BASELINE_FLOOR]
    assert chosen["width"] == (reaching[0] if reaching else widths[-1])
    filtered = [r for r in scan["sampling"]["results"] if r["verify"]]
    best = max(r["mean"] for r in filtered)
    pick = next(r for r in filtered if r["mean"] == best)
    assert scan["sampling"]["chosen"] == {k: pick[k] for k in ("temperature", "samples_per_prompt", "verify",
                                                               "keep_per_prompt")}
    for r in scan["sampling"]["results"]:
        assert r["mean"] == pytest.approx(statistics.fmean(r["accuracy"]), abs=1e-4)
        assert 0 <= r["kept"] <= 1 and (r["kept"] == 1.0 if not r["verify"] else r["kept"] <= r["correct"] + 1e-9)


def test_the_shipped_scans_choices_follow_its_rules(shipped):
    check_choices_follow_the_rules(shipped)
    assert len(shipped["student"]["results"]) == (len(sequence_kd.SCAN_WIDTHS) * len(sequence_kd.SCAN_LEARNING_RATES)
                                                  * len(sequence_kd.SCAN_METHODS))
    assert len(shipped["sampling"]["results"]) == len(sequence_kd.SCAN_TEMPERATURES) * len(sequence_kd.SCAN_SAMPLING)


def test_the_scan_runs_end_to_end_on_a_tiny_grid(tmp_path, capsys):
    base = dataclasses.replace(sequence_kd.Settings(), steps=3, prompts=40)
    scan = sequence_kd.scan(seeds=(100,), widths=(8, 16), learning_rates=(1e-3, 1e-2), temperatures=(2.0,),
                            sampling=((1, False, None), (2, True, 1)), budgets=(2, 3), budget_learning_rates=(3e-3,),
                            base=base, progress=False)
    check_choices_follow_the_rules(scan)
    assert scan["fixed"]["steps"] == 3 and scan["seeds"] == [100]
    assert {(r["steps"], r["lr"]) for r in scan["budget"]["results"]} == {(2, 3e-3), (3, 3e-3)}
    path = tmp_path / "scan.json"
    path.write_text(json.dumps(scan))
    assert sequence_kd.load_scan(path) == scan
    assert "sampled transfer sets" in sequence_kd.format_scan(scan)


def test_load_scan_says_what_is_missing_or_broken(tmp_path):
    with pytest.raises(FileNotFoundError, match="--scan --out"):
        sequence_kd.load_scan(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="not the JSON of a scan"):
        sequence_kd.load_scan(broken)
