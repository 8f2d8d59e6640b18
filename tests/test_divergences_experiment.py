"""Tests of lesson 08's experiment, kdlearn.experiments.divergences, on tiny settings: its command line
(the table, the JSON's shape), determinism, the metrics against counts made here from the same samples,
the teacher cache against the teacher, and bad settings refused with a ValueError that names them."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch

from kdlearn import distill, lm, teachers
from kdlearn.experiments import divergences

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = divergences.Settings(seeds=(0, 1), width=8, depth=1, heads=2, warm_start_steps=3, steps=4, examples=64,
                            samples_per_prompt=3, prompts=4)
TINY_ARGS = ["--seeds", "2", "--width", "8", "--depth", "1", "--warm-start-steps", "3", "--steps", "4",
             "--examples", "64", "--samples", "3", "--prompts", "4", "--quiet"]


@pytest.fixture(scope="module")
def teacher():
    return teachers.load("any_order")


def test_json_has_the_three_divergences_with_every_metric(capsys):
    assert divergences.main(TINY_ARGS + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["forward", "reverse", "jsd"]
    for figures in report.values():
        assert set(figures) == {"valid", "distinct", "teacher_nll", "student_nll", "std"}
        assert set(figures["std"]) == {"valid", "distinct", "teacher_nll", "student_nll"}
        assert 0 <= figures["valid"] <= 1 and 0 <= figures["distinct"] <= 3
        assert figures["teacher_nll"] > 0 and figures["student_nll"] > 0
        assert all(value >= 0 for value in figures["std"].values())


def test_table_names_every_row_and_the_settings(capsys):
    assert divergences.main(TINY_ARGS + ["--beta", "0.25", "--evaluate-on", "validation"]) == 0
    out = capsys.readouterr().out
    assert "validation prompts (4), 3 samples each" in out and "seeds 0, 1" in out
    for row in ("teacher (its own samples)", "warm start (hard labels)", "forward KL", "reverse KL", "JSD(0.25)"):
        assert any(line.startswith(row) for line in out.splitlines()), row
    assert "warm start 3 steps of hard labels, then 4 steps of distillation" in out
    assert f"{math.log(24) / 5:.3f}" in out


def test_bad_command_line_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        divergences.main(TINY_ARGS + ["--width", "9"])      # not a multiple of the 2 heads
    assert "width (9) must be a multiple of heads (2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        divergences.main(TINY_ARGS + ["--beta", "1.5"])
    assert "beta must be a number in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), "steps must be a positive int"),
    (dict(warm_start_steps=-1), "warm_start_steps must be an int >= 0"),
    (dict(prompts=0), "prompts must be None"),
    (dict(seeds=()), "seeds must name at least one seed"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(width=10, heads=4), "width (10) must be a multiple of heads (4)"),
])
def test_bad_settings_raise_a_value_error_naming_them(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(TINY, **change)


def test_run_refuses_an_unknown_split_before_training():
    with pytest.raises(ValueError, match="evaluate_on must be one of 'test', 'validation'"):
        divergences.run(TINY, evaluate_on="train", progress=False)


def test_the_same_settings_give_the_same_figures():
    first = divergences.run(TINY, progress=False)
    second = divergences.run(TINY, progress=False)
    assert first.to_json() == second.to_json()
    assert first.metrics == second.metrics


def test_json_means_and_stds_are_over_the_seeds():
    results = divergences.run(TINY, progress=False)
    report = results.to_json()
    for name in divergences.DIVERGENCES:
        assert len(results.metrics[name]) == 2 and len(results.students[name]) == 2
        for metric in divergences.METRICS:
            values = [getattr(m, metric) for m in results.metrics[name]]
            assert report[name][metric] == pytest.approx(statistics.fmean(values))
            assert report[name]["std"][metric] == pytest.approx(statistics.stdev(values))
    assert results.student_parameters == results.students["forward"][0].num_parameters()
    assert results.teacher_parameters == 228_096 and results.prompts == 4


def test_the_students_of_a_seed_share_their_start_and_differ_by_divergence(teacher):
    """The warm start is the same for the three divergences, and its figures are measured from it:
    retrained here from the same seed, it gives the figures the run reports."""
    settings = dataclasses.replace(TINY, seeds=(0,))
    results = divergences.run(settings, progress=False)
    start = divergences.new_student(settings, teacher.model, 0)
    data = teacher.task.pairs("train", settings.examples)
    distill.train(start, teacher.tokenizer, data, steps=settings.warm_start_steps, lr=settings.lr, seed=0,
                  progress=False)
    examples = divergences.evaluation_examples(teacher.task, "test", settings.prompts)
    again = divergences.measure(start, teacher.model, teacher.tokenizer, teacher.task, examples,
                                samples_per_prompt=settings.samples_per_prompt, seed=0)
    assert again == results.metrics["warm_start"][0]
    weights = [torch.cat([p.flatten() for p in results.students[name][0].parameters()])
               for name in divergences.DIVERGENCES]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_measure_agrees_with_counts_made_here_from_the_same_samples(teacher):
    """valid, distinct and both NLLs recomputed from the samples: correctness by the list of every
    ordering, NLLs by running the models on each sequence and adding log-probabilities by hand."""
    task, tokenizer, model = teacher.task, teacher.tokenizer, teacher.model
    student = divergences.new_student(TINY, model, seed=3)
    data = task.pairs("train", 64)
    distill.train(student, tokenizer, data, steps=20, lr=3e-2, seed=0, progress=False)
    examples = task.examples("test")[:3]
    k, seed = 4, 7
    metrics = divergences.measure(student, model, tokenizer, task, examples, samples_per_prompt=k, seed=seed)

    prompts = [tokenizer.encode_prompt(e.prompt) for e in examples for _ in range(k)]
    options = dict(eos_id=tokenizer.eos_id, max_new_tokens=5, temperature=1.0)
    written = lm.generate(student, prompts, seed=seed, **options)
    from_teacher = lm.generate(model, prompts, seed=seed + 1, **options)

    def is_answer(prompt_ids, sample):
        digits = tokenizer.decode(prompt_ids)[:-1]
        return sample[-1:] == [tokenizer.eos_id] and tokenizer.decode(sample) in task.answers(digits + ":")

    correct = [is_answer(p, s) for p, s in zip(prompts, written)]
    assert metrics.valid == pytest.approx(sum(correct) / len(correct))
    distinct = [len({tuple(s) for s, ok in zip(written[i:i + k], correct[i:i + k]) if ok}) for i in range(0, 12, k)]
    assert metrics.distinct == pytest.approx(sum(distinct) / 3)

    def nll(scorer, samples):
        total = 0.0
        with torch.no_grad():
            for prompt, sample in zip(prompts, samples):
                sequence = torch.tensor([prompt + sample])
                log_probs = torch.log_softmax(scorer(sequence)[0].double(), dim=-1)
                total -= sum(log_probs[len(prompt) - 1 + i, token].item() for i, token in enumerate(sample))
        return total / sum(map(len, samples))

    assert metrics.teacher_nll == pytest.approx(nll(model, written), rel=1e-4)
    assert metrics.student_nll == pytest.approx(nll(student, from_teacher), rel=1e-4)


def test_measure_refuses_bad_input(teacher):
    args = (teacher.model, teacher.model, teacher.tokenizer, teacher.task)
    with pytest.raises(ValueError, match="examples is empty"):
        divergences.measure(*args, [])
    examples = teacher.task.examples("test")[:2]
    with pytest.raises(ValueError, match="samples_per_prompt must be a positive int"):
        divergences.measure(*args, examples, samples_per_prompt=0)
    with pytest.raises(ValueError, match="teacher_samples must hold 4 samples"):
        divergences.measure(*args, examples, samples_per_prompt=2, teacher_samples=[[3, 2]])


def test_the_teacher_reaches_the_entropy_floor_on_its_own_samples(teacher):
    """A teacher that spreads its probability evenly over the 24 orderings scores its own samples near
    ln(24) / 5 per token, and never noticeably below it."""
    examples = teacher.task.examples("test")[:25]
    metrics = divergences.measure(teacher.model, teacher.model, teacher.tokenizer, teacher.task, examples,
                                  samples_per_prompt=8)
    assert metrics.valid > 0.95
    assert divergences.ENTROPY_FLOOR - 0.02 < metrics.student_nll < divergences.ENTROPY_FLOOR + 0.1
