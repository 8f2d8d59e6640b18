"""Tests of the on-policy experiment (kdlearn.experiments.on_policy): its command line (table and JSON) on
a tiny setting, the per-position error rates and teacher forcing against independent computations, the
speed of generation, the equal-wall-time budget, bad settings, the validation scan on a tiny grid, the
shipped scan (on_policy_scan.json, load_scan and its errors, --scan --out), and that the defaults are its
choices."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest

from kdlearn import lm, tasks, teachers
from kdlearn.experiments import on_policy

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = ["--seeds", "2", "--steps", "10", "--start-steps", "10", "--quiet"]


@pytest.fixture(scope="module")
def tiny_report():
    """The JSON of a tiny run, and its table, from the command line (one run shared by the tests below)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert on_policy.main(TINY + ["--json"]) == 0
    return json.loads(out.getvalue())


def test_json_gives_each_method_a_mean_over_seeds(tiny_report):
    report = tiny_report
    assert report["evaluated_on"] == "test" and report["seeds"] == [0, 1]
    for method, lmbda in on_policy.METHODS.items():
        figures = report[method]
        assert figures["lmbda"] == lmbda and len(figures["exact_per_seed"]) == 2
        assert figures["exact"] == pytest.approx(statistics.fmean(figures["exact_per_seed"]))
        assert figures["exact_std"] == pytest.approx(statistics.stdev(figures["exact_per_seed"]))
        assert all(0 <= x <= 1 for x in figures["exact_per_seed"]) and figures["seconds"] > 0
        assert len(figures["own_prefix_errors"]) == len(figures["data_prefix_errors"]) == 4
        timed = figures["equal_time"]
        assert timed["steps"] % 10 == 0 and len(timed["exact_per_seed"]) == 2
    assert report["off_policy"]["generation_seconds"] == 0 and report["off_policy"]["on_policy_steps"] == [0, 0]
    assert report["on_policy"]["generation_seconds"] > 0 and report["on_policy"]["on_policy_steps"] == [10, 10]
    assert report["off_policy"]["equal_time"]["exact_per_seed"] == report["off_policy"]["exact_per_seed"]
    assert report["off_policy"]["cost_ratio"] == 1.0
    assert report["settings"]["steps"] == 10 and report["settings"]["start_steps"] == 10
    assert set(report["tokens_per_second"]) == {"cache", "no_cache"}
    assert "twice" in report["paper"]["cost"] and report["start"]["steps"] == 10


def test_table_lists_each_method_per_seed_at_both_budgets(capsys):
    assert on_policy.main(TINY + ["--lr", "0.02", "--divergence", "jsd", "--temperature", "0.7"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "any_order(4)" in lines[0] and "200 test prompts" in lines[0] and "seeds 0, 1" in lines[0]
    assert "equal updates: 10 each" in out and "equal wall time" in out
    for name in ("off-policy", "on-policy", "mixed"):
        row = next(line for line in lines if line.startswith(name))
        left, right = row.split("│")
        per_seed = [float(x) for x in left.split("±")[1].split()[1:3]]
        mean = float(left.split("±")[0].split()[-1])
        assert mean == pytest.approx(statistics.fmean(per_seed), abs=1e-3)
        assert "JSD(0.5), lr 0.02" in left
        assert ("samples at T = 0.7" in left) == (name != "off-policy")
    assert "tokens/s with the KV cache" in out and "GKD" in out and "start_steps=10" in out


def test_bad_options_are_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        on_policy.main(["--lr", "-1", "--quiet"])
    assert "lr must be a positive number" in capsys.readouterr().err


# --- the pieces, against independent computations ---------------------------------------------------------


def test_any_order_positions_are_judged_after_what_was_written():
    task = tasks.AnyOrder(4)
    example = tasks.Example("3817:", "1873")
    # 3 ok; 3 repeats; 1 ok (not yet written); 7 ok
    assert [on_policy.wrong_at(task, example, "3317"[:i], "3317"[i]) for i in range(4)] == [False, True, False, False]
    assert on_policy.wrong_at(task, example, "38", None)          # nothing written
    assert on_policy.wrong_at(task, example, "381", "9")          # not in the prompt
    outputs = ["7138", "3317", "38", ""]
    assert on_policy.position_errors(task, [example] * 4, outputs) == pytest.approx([0.25, 0.5, 0.5, 0.5])


def test_addition_positions_are_wrong_where_they_differ_from_the_answer():
    task = tasks.Addition(3)
    example = task.examples("test")[0]
    flipped = example.answer[:2] + str((int(example.answer[2]) + 1) % 10) + example.answer[3:]
    assert on_policy.position_errors(task, [example, example], [example.answer, flipped]) == [0, 0, 0.5, 0]


def test_teacher_forced_choices_match_greedy_generation_after_the_datas_prefix():
    """Character i of teacher_forced_outputs is what greedy generation writes after prompt + answer[:i]."""
    teacher = teachers.load("any_order")
    model = lm.GPT(lm.GPTConfig(vocab_size=teacher.tokenizer.vocab_size, context=16, width=8, depth=1, heads=2),
                   seed=3)
    examples = teacher.task.examples("test")[:5]
    forced = on_policy.teacher_forced_outputs(model, teacher.tokenizer, examples)
    for example, choices in zip(examples, forced):
        for i, char in enumerate(choices):
            prompt = teacher.tokenizer.encode_prompt(example.prompt) + teacher.tokenizer.encode(example.answer[:i])
            token = lm.generate(model, [prompt], max_new_tokens=1, temperature=0.0)[0][0]
            assert char == (teacher.tokenizer.decode([token]) or "?")


def test_position_errors_refuse_unpaired_inputs():
    with pytest.raises(ValueError, match="examples and outputs must pair up"):
        on_policy.position_errors(tasks.AnyOrder(4), [tasks.Example("3817:", "3817")], [])


def test_generation_speed_counts_every_token_and_the_cache_changes_no_text():
    teacher = teachers.load("any_order")
    prompts = [teacher.tokenizer.encode_prompt(e.prompt) for e in teacher.task.examples("test")[:8]]
    written = lm.generate(teacher.model, prompts, eos_id=-1, max_new_tokens=6, temperature=1.0)
    assert all(len(w) == 6 for w in written)   # an eos_id never written: every row writes them all
    assert written == lm.generate(teacher.model, prompts, eos_id=-1, max_new_tokens=6, temperature=1.0,
                                  use_cache=False)
    for cache in (True, False):
        assert on_policy.generation_speed(teacher.model, prompts, max_new_tokens=6, use_cache=cache, eos_id=-1,
                                          repeats=1) > 0
    with pytest.raises(ValueError, match="repeats"):
        on_policy.generation_speed(teacher.model, prompts, max_new_tokens=6, use_cache=True, repeats=0)


def fake_run(method, seconds, steps=100):
    return on_policy.Run(method, on_policy.METHODS[method], 0, steps, 0.5, seconds, 0.0, 0, [0.0] * 4, [0.0] * 4)


def test_equal_wall_time_gives_each_method_the_updates_that_fit_in_off_policys_time():
    results = on_policy.Results(on_policy.Settings(steps=100), "test")
    results.updates = [fake_run("off_policy", 2.0), fake_run("off_policy", 2.2),
                       fake_run("on_policy", 3.0), fake_run("on_policy", 3.3), fake_run("mixed", 6.3)]
    assert results.cost_ratio("on_policy") == pytest.approx(6.3 / 4.2)
    assert on_policy.equal_time_steps(results, "on_policy") == 70      # 100 / 1.5 = 66.7, to a multiple of 10
    assert on_policy.equal_time_steps(results, "mixed") == 30          # 6.3 s for 100 updates: 3x off-policy's
    results.updates.append(fake_run("mixed", 1000.0))
    assert on_policy.equal_time_steps(results, "mixed") == 10          # never fewer than one grain


@pytest.mark.parametrize("change, message", [
    (dict(width=0), "width must be a positive int"),
    (dict(steps=2.5), "steps must be a positive int"),
    (dict(warmup=-1), "warmup must be an int >= 0"),
    (dict(seeds=()), "seeds must be a non-empty tuple"),
    (dict(teacher="multiplication"), "teacher"),
    (dict(start_lr=0), "start_lr must be a positive number"),
    (dict(recipes={"off_policy": on_policy.RECIPES["off_policy"]}), "recipes must map each of"),
])
def test_bad_settings_are_refused_naming_the_setting(change, message):
    with pytest.raises(ValueError, match=message):
        on_policy.Settings(**change)


@pytest.mark.parametrize("change, message", [
    (dict(lr=0), "lr must be a positive number"),
    (dict(divergence="kl"), "divergence"),
    (dict(beta=1.5), "beta"),
    (dict(sample_temperature=float("inf")), "sample_temperature must be a positive number"),
])
def test_bad_recipes_are_refused_naming_the_setting(change, message):
    with pytest.raises(ValueError, match=message):
        on_policy.Recipe(**{"lr": 1e-3, **change})


def test_run_refuses_an_unknown_split_before_training():
    with pytest.raises(ValueError, match="evaluate_on"):
        on_policy.run(evaluate_on="train", progress=False)


# --- the scan and the defaults ---------------------------------------------------------------------------------


def test_the_scan_ships_as_json_beside_the_module_and_is_what_scan_holds():
    shipped = Path(on_policy.__file__).with_name("on_policy_scan.json")
    assert on_policy.SHIPPED_SCAN == shipped
    assert on_policy.load_scan() == json.loads(shipped.read_text()) == on_policy.SCAN


def test_the_defaults_are_the_shipped_scans_choices():
    scan = on_policy.load_scan()
    assert scan["split"] == "validation" and not set(scan["seeds"]) & set(on_policy.Settings().seeds)
    assert {m: dataclasses.asdict(r) for m, r in on_policy.RECIPES.items()} == scan["choices"]
    assert on_policy.Settings().width == scan["width"] and on_policy.Settings().steps == scan["steps"]


def test_the_shipped_scans_choices_follow_its_rules_from_its_own_figures():
    """Rederived from the figures the scan recorded: the narrowest start that reaches MIN_START_EXACT, each
    method's best mean, the largest budget below MAX_EXACT, the best sampling temperature."""
    scan = on_policy.SCAN
    assert scan["width"] == next(s["width"] for s in scan["student"] if s["start_exact"] >= on_policy.MIN_START_EXACT)
    for method, rows in scan["recipe"].items():
        for row in rows:
            assert row["mean"] == pytest.approx(statistics.fmean(row["exact"]), abs=5e-5)   # stored to 4 decimals
        best = max(rows, key=lambda row: statistics.fmean(row["exact"]))
        assert (scan["choices"][method]["lr"], scan["choices"][method]["divergence"]) == (best["lr"],
                                                                                          best["divergence"])
    below = [steps for i, steps in enumerate(on_policy.SCAN_GRID["steps"])
             if all(scan["budget"][m][i]["mean"] < on_policy.MAX_EXACT for m in on_policy.METHODS)]
    assert scan["steps"] == max(below)
    for method, rows in scan["temperature"].items():
        best = max(rows, key=lambda row: statistics.fmean(row["exact"]))
        assert scan["choices"][method]["sample_temperature"] == best["sample_temperature"]


def test_scan_runs_end_to_end_on_a_tiny_grid(monkeypatch):
    monkeypatch.setitem(on_policy.SCAN_GRID, "width", (8, 12))
    monkeypatch.setitem(on_policy.SCAN_GRID, "lr", (1e-2,))
    monkeypatch.setitem(on_policy.SCAN_GRID, "divergence", ("forward", "reverse"))
    monkeypatch.setitem(on_policy.SCAN_GRID, "sample_temperature", (0.5, 1.0))
    monkeypatch.setitem(on_policy.SCAN_GRID, "steps", (3, 5))
    monkeypatch.setitem(on_policy.SCAN_GRID, "lmbda", (0.0, 1.0))
    monkeypatch.setattr(on_policy, "ADDITION_WIDTHS", (8,))
    monkeypatch.setattr(on_policy, "ADDITION_LONG", {"width": 8, "start_steps": 4, "start_seeds": (0, 1)})
    result = on_policy.scan(on_policy.Settings(seeds=(100,), start_steps=5, examples=300), progress=False)
    assert [s["width"] for s in result["student"]] == [8, 12] and result["width"] in (8, 12)
    assert set(result["recipe"]) == set(on_policy.METHODS) and len(result["recipe"]["mixed"]) == 2
    assert [row["steps"] for row in result["budget"]["on_policy"]] == [3, 5] and result["steps"] in (3, 5)
    assert set(result["temperature"]) == {"on_policy", "mixed"}
    assert [row["lmbda"] for row in result["lmbda"]] == [0.0, 1.0]
    assert len(result["addition"]["long_starts"]) == 2
    assert all(isinstance(choice, dict) for choice in result["choices"].values())
    json.dumps(result)   # it is what --scan prints


def test_scan_out_writes_json_that_load_scan_reads_back(monkeypatch, tmp_path, capsys):
    measured = {"split": "validation", "width": 12, "choices": {"mixed": {"lr": 0.01}}}
    monkeypatch.setattr(on_policy, "scan", lambda progress=True: measured)
    out = tmp_path / "scan.json"
    assert on_policy.main(["--scan", "--out", str(out), "--quiet"]) == 0
    assert on_policy.load_scan(out) == measured == json.loads(capsys.readouterr().out)


def test_out_without_scan_is_refused(capsys):
    with pytest.raises(SystemExit):
        on_policy.main(["--out", "scan.json", "--quiet"])
    assert "--out needs --scan" in capsys.readouterr().err


def test_a_missing_scan_names_the_file_and_the_command_that_writes_it(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError) as error:
        on_policy.load_scan(missing)
    assert str(missing) in str(error.value)
    assert f"python -m kdlearn.experiments.on_policy --scan --out {missing}" in str(error.value)


def test_a_scan_that_is_not_json_is_refused_naming_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"split": "validation",')
    with pytest.raises(ValueError, match="not the JSON of a scan") as error:
        on_policy.load_scan(broken)
    assert str(broken) in str(error.value) and "--scan --out" in str(error.value)
