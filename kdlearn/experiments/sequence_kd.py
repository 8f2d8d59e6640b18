"""Teacher-written data (lesson 09): hard labels, word-level KD, sequence-level KD, both, and a
sampled transfer set filtered by the task's verifier, on the same student with the same budget.

    python -m kdlearn.experiments.sequence_kd            the table: test accuracy per method, seeds 0-2
    python -m kdlearn.experiments.sequence_kd --json     the mean accuracy per method, as JSON
    python -m kdlearn.experiments.sequence_kd --scan --out kdlearn/experiments/sequence_kd_scan.json
                                                         the validation scan the defaults come from

Accuracy is the share of the split's prompts whose greedy output the task's verifier accepts.
The teacher is a shipped one (kdlearn.teachers), by default ``any_order``: four distinct digits
in, the same digits in any order out, 24 correct answers per prompt. Its training data drew one
of them at random, so the original data are noisy, and the teacher's greedy output, one fixed
ordering per prompt, is simpler data: Kim and Rush's "the teacher simplifies the data".

The methods (Kim and Rush 2016, https://arxiv.org/abs/1606.07947):

* hard_labels: the original data (each prompt with the task's own completion), cross-entropy.
* word_kd: the same data, forward KL to the teacher's next-token distribution at every position
  (their Word-KD, without its interpolation with the labels' cross-entropy).
* sequence_kd: the teacher's greedy completions of the same prompts, cross-entropy (Seq-KD;
  greedy decoding stands in for their beam search).
* sequence_kd_plus_word_kd: the teacher's greedy completions, forward KL per token (both).
* sampled_filtered: samples_per_prompt completions per prompt sampled at ``temperature``, those
  the verifier rejects thrown away, at most keep_per_prompt kept per prompt (rejection sampling,
  as DeepSeek-R1's distilled students were made).

Every method trains the same student architecture for the same number of steps on batches of
the same size; only the learning rate is each method's own. A run's seed draws everything
random in it: the training prompts, the teacher's samples, the student's initial weights and
its batches. The token-level methods read the teacher's logits from a cache computed once per
transfer set (distill.CachedTeacher), which gives the same loss as running the teacher at every step,
for the cost of one pass.

The settings chosen by measurement (the student's width, each method's learning rate, the
sampled set's temperature, samples and filter) come from ``scan``, on the validation split and
seeds of its own; its result ships as sequence_kd_scan.json (``load_scan``). The number of
steps is not tuned: it is what lesson 09's time budget allows. The scan also trains the chosen
student for 200 to 1600 steps: given 1600 steps (and a learning rate of 1e-2), hard labels and
word-level KD learn the task's rule and answer every validation prompt, while sequence-level KD
stays near half; ``--steps 1600 --lr 0.01`` gives the test figures at that budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdlearn import distill, lm, teachers
from kdlearn.experiments import positive_int, read_scan, seed_std

METHODS = ("hard_labels", "word_kd", "sequence_kd", "sequence_kd_plus_word_kd", "sampled_filtered")
# What each method trains on ("original", "greedy" or "sampled" completions), and whether its loss
# is the teacher's per-token distribution (forward KL) rather than cross-entropy on the completions.
SOURCE = {"hard_labels": "original", "word_kd": "original", "sequence_kd": "greedy",
          "sequence_kd_plus_word_kd": "greedy", "sampled_filtered": "sampled"}
TOKEN_LEVEL = frozenset({"word_kd", "sequence_kd_plus_word_kd"})
LABELS = {"hard_labels": "hard labels", "word_kd": "word-level KD", "sequence_kd": "sequence-level KD",
          "sequence_kd_plus_word_kd": "sequence-level + word-level KD", "sampled_filtered": "sampled, filtered"}
SOURCE_LABELS = {"original": "the original data", "greedy": "the teacher's greedy outputs",
                 "sampled": "the teacher's samples"}
# Kim and Rush 2016, WMT English -> German, BLEU: their best student against the student trained
# without distillation (REFERENCES.md).
PAPER = {"greedy_gain": 4.2, "beam_gain": 1.7, "speedup": 10}
SHIPPED_SCAN = Path(__file__).with_name("sequence_kd_scan.json")
EVALUATION_SPLITS = ("test", "validation")

# The scan's choices (tests/test_sequence_kd_experiment.py checks them against the shipped scan).
DEFAULT_LEARNING_RATES = {"hard_labels": 1e-3, "word_kd": 3e-2, "sequence_kd": 1e-3,
                          "sequence_kd_plus_word_kd": 3e-2, "sampled_filtered": 1e-3}


@dataclass(frozen=True)
class Settings:
    teacher: str = "any_order"
    prompts: int = 4000                  # training prompts each transfer set is written for
    width: int = 32                      # the student: one block of this width, two heads
    depth: int = 1
    heads: int = 2
    steps: int = 400
    batch_size: int = 64
    learning_rates: dict = field(default_factory=lambda: dict(DEFAULT_LEARNING_RATES))
    temperature: float = 3.0             # sampled_filtered: the teacher's sampling temperature,
    samples_per_prompt: int = 1          # how many samples it writes per prompt,
    keep_per_prompt: int | None = None   # and how many accepted ones are kept per prompt (None: all)
    verify: bool = True                  # whether the verifier filters the samples at all
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS

    def __post_init__(self):
        for name in ("prompts", "width", "depth", "heads", "steps", "batch_size", "samples_per_prompt"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.keep_per_prompt is not None and (not isinstance(self.keep_per_prompt, int) or self.keep_per_prompt < 1):
            raise ValueError(f"keep_per_prompt must be None (keep every accepted sample) or a positive int, "
                             f"got {self.keep_per_prompt!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be a number above 0 (sampled_filtered samples; the greedy "
                             f"transfer set is sequence_kd's), got {self.temperature!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty selection of {', '.join(METHODS)}; got {list(self.methods)}")
        missing = [m for m in self.methods if m not in self.learning_rates]
        if missing:
            raise ValueError(f"learning_rates has no learning rate for {', '.join(missing)}")
        if not self.seeds:
            raise ValueError("seeds is empty: pass at least one seed")

    def lr(self, method: str) -> float:
        return self.learning_rates[method]


# --- the pieces ------------------------------------------------------------------------------------


def keep_accepted(samples: Sequence[tuple[str, str]], verifier: Callable[[str, str], bool],
                  at_most: int | None = None) -> tuple[list[tuple[str, str]], float]:
    """Rejection sampling: the (prompt, output) samples that verifier(prompt, output) accepts, in their
    order, at most ``at_most`` per prompt (None: every accepted one), and the share of all samples kept."""
    if at_most is not None and (not isinstance(at_most, int) or isinstance(at_most, bool) or at_most < 1):
        raise ValueError(f"at_most must be None or a positive int, got {at_most!r}")
    if not samples:
        raise ValueError("samples is empty: there is nothing to filter")
    kept, per_prompt = [], defaultdict(int)
    for prompt, output in samples:
        if (at_most is None or per_prompt[prompt] < at_most) and verifier(prompt, output):
            kept.append((prompt, output))
            per_prompt[prompt] += 1
    return kept, len(kept) / len(samples)


@dataclass
class TransferSets:
    """One seed's training prompts and what each source wrote for them, with the share kept."""

    data: dict[str, list[tuple[str, str]]]
    kept: dict[str, float]


def write_transfer_sets(teacher: teachers.Teacher, settings: Settings, seed: int) -> TransferSets:
    """The seed's training prompts with each source the settings' methods need: the task's own
    completions ("original"), the teacher's greedy ones ("greedy"), its filtered samples ("sampled").
    kept: the share of each source's completions that it keeps ("original" and "greedy" keep all;
    for "greedy" it is the share the verifier would accept, for information)."""
    task, model, tokenizer = teacher.task, teacher.model, teacher.tokenizer
    pairs = task.pairs("train", settings.prompts, seed=seed)
    prompts = [p for p, _ in pairs]
    max_new_tokens = task.max_completion_length + 1
    needed = {SOURCE[m] for m in settings.methods}
    data, kept = {}, {}
    if "original" in needed:
        data["original"], kept["original"] = pairs, 1.0
    if "greedy" in needed:
        greedy = distill.write_transfer_set(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        data["greedy"] = greedy.examples
        kept["greedy"] = sum(task.is_correct(p, o) for p, o in greedy.examples) / greedy.written
    if "sampled" in needed:
        sampled = distill.write_transfer_set(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                             temperature=settings.temperature,
                                             samples_per_prompt=settings.samples_per_prompt, seed=seed)
        if settings.verify:
            data["sampled"], kept["sampled"] = keep_accepted(sampled.examples, task.is_correct,
                                                             settings.keep_per_prompt)
        else:
            data["sampled"], kept["sampled"] = sampled.examples, 1.0
        if not data["sampled"]:
            raise ValueError(f"the verifier accepted none of the teacher's samples at temperature "
                             f"{settings.temperature}: lower the temperature or write more samples per prompt")
    return TransferSets(data, kept)


def transfer_cache(teacher: teachers.Teacher, data: Sequence[tuple[str, str]]) -> distill.CachedTeacher:
    """The teacher's logits on the (prompt, completion) texts of data, computed once."""
    tokenizer = teacher.tokenizer
    sequences = [tokenizer.encode_prompt(p) + tokenizer.encode_completion(c) for p, c in data]
    return distill.CachedTeacher(teacher.model, tokenizer.pad_id, sequences)


def new_student(teacher: teachers.Teacher, settings: Settings, seed: int) -> lm.GPT:
    """The settings' untrained student of the teacher, its weights drawn from seed."""
    return distill.new_student(teacher.model, width=settings.width, depth=settings.depth, heads=settings.heads,
                               seed=seed)


def train_student(method: str, data: Sequence[tuple[str, str]], teacher: teachers.Teacher, settings: Settings,
                  seed: int, cached: distill.CachedTeacher | None = None) -> lm.GPT:
    """A new student trained by ``method`` on ``data`` for the settings' budget. Token-level methods
    use ``cached`` (the teacher's logits on data) when given, else build the cache."""
    student = new_student(teacher, settings, seed)
    if method in TOKEN_LEVEL:
        cached = cached or transfer_cache(teacher, data)
        objective, teacher_model = distill.Objective("forward"), cached
    else:
        objective, teacher_model = distill.Objective("ce"), None
    distill.train(student, teacher.tokenizer, data, teacher=teacher_model, objective=objective,
                  steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr(method), seed=seed,
                  progress=False)
    return student


# --- the experiment ------------------------------------------------------------------------------


@dataclass
class Results:
    settings: Settings
    evaluated_on: str
    evaluation_size: int
    student_parameters: int
    teacher_parameters: int
    teacher_accuracy: float
    accuracy: dict[str, list[float]]                 # per method, one per seed
    kept: dict[str, list[float]]                     # per source, one per seed
    seconds: dict[str, float]                        # per method, training and evaluation, all seeds
    students: dict[str, list[lm.GPT]] = field(repr=False, default_factory=dict)

    def mean(self, method: str) -> float:
        return statistics.fmean(self.accuracy[method])

    def std(self, method: str) -> float:
        values = self.accuracy[method]
        return seed_std(values)

    def to_json(self) -> dict:
        """The mean accuracy per method, in METHODS' order."""
        return {m: round(self.mean(m), 4) for m in METHODS if m in self.accuracy}


def run(settings: Settings | None = None, *, evaluate_on: str = "test", progress: bool = True) -> Results:
    """Every method of ``settings`` on every seed: train a student, count the split's prompts it answers."""
    settings = settings or Settings()
    if evaluate_on not in EVALUATION_SPLITS:
        raise ValueError(f"evaluate_on must be one of {EVALUATION_SPLITS}, got {evaluate_on!r}")
    teacher = teachers.load(settings.teacher)
    task, tokenizer = teacher.task, teacher.tokenizer
    examples = task.examples(evaluate_on)
    accuracy, kept = defaultdict(list), defaultdict(list)
    seconds, students = defaultdict(float), defaultdict(list)
    bar = tqdm(total=len(settings.seeds) * len(settings.methods), desc="students", unit="student",
               disable=not progress, leave=False)
    for seed in settings.seeds:
        sets = write_transfer_sets(teacher, settings, seed)
        for source, share in sets.kept.items():
            kept[source].append(share)
        caches = {}
        for method in settings.methods:
            began = time.perf_counter()
            source = SOURCE[method]
            if method in TOKEN_LEVEL and source not in caches:
                caches[source] = transfer_cache(teacher, sets.data[source])
            student = train_student(method, sets.data[source], teacher, settings, seed, caches.get(source))
            accuracy[method].append(task.accuracy(student, tokenizer, examples))
            students[method].append(student)
            seconds[method] += time.perf_counter() - began
            bar.update()
    bar.close()
    return Results(settings, evaluate_on, len(examples), students[settings.methods[0]][0].num_parameters(),
                   teacher.model.num_parameters(), task.accuracy(teacher.model, tokenizer, examples),
                   dict(accuracy), dict(kept), dict(seconds), dict(students))


def format_table(results: Results) -> str:
    s = results.settings
    seeds = ", ".join(map(str, s.seeds))
    lines = [f"Teacher-written data on {s.teacher}: the share of the {results.evaluation_size} {results.evaluated_on} "
             f"prompts whose greedy output is correct, seeds {seeds}",
             f"student: {s.depth} block of width {s.width} ({results.student_parameters:,} parameters), teacher: "
             f"{results.teacher_parameters:,} parameters; {s.steps} steps of {s.batch_size}, {s.prompts} training "
             f"prompts per seed",
             "",
             f"{'method':34}{'trained on':34}{'loss':16}{'lr':>8}{'mean ± std':>16}   per seed"]
    for m in s.methods:
        source = SOURCE[m]
        trained_on = SOURCE_LABELS[source]
        if source == "sampled":
            trained_on = f"samples at T={s.temperature:g}, {s.samples_per_prompt}/prompt"
        loss = "forward KL" if m in TOKEN_LEVEL else "cross-entropy"
        per_seed = " ".join(f"{a:.3f}" for a in results.accuracy[m])
        lines.append(f"{LABELS[m]:34}{trained_on:34}{loss:16}{s.lr(m):8.0e}"
                     f"{results.mean(m):9.3f} ± {results.std(m):.3f}   {per_seed}")
    lines.append(f"{'teacher (greedy)':34}{'':34}{'':16}{'':8}{results.teacher_accuracy:9.3f}")
    if "sampled" in results.kept:
        what = "accepted and kept" if s.verify else "kept (no verifier)"
        lines.append(f"\nsampled set: {statistics.fmean(results.kept['sampled']):.1%} of the teacher's samples "
                     f"{what}" + (f", at most {s.keep_per_prompt} per prompt" if s.keep_per_prompt else ""))
    lines.append(f"Kim & Rush 2016 (WMT English->German, BLEU): their best student gained {PAPER['greedy_gain']} "
                 f"BLEU with greedy decoding and {PAPER['beam_gain']} with beam search over the same student "
                 f"trained without distillation")
    return "\n".join(lines)


# --- the validation scan ----------------------------------------------------------------------------

SCAN_SEEDS = (100, 101, 102)
SCAN_WIDTHS = (16, 32, 48)
SCAN_LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SCAN_TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0)
# The sampled transfer sets the scan writes at each temperature: (samples_per_prompt, verify, keep_per_prompt).
SCAN_SAMPLING = ((1, False, None), (1, True, None), (4, False, None), (4, True, None), (4, True, 1))
# The longer and shorter budgets the scan also trains the chosen student for, with these learning rates.
SCAN_BUDGETS = (200, 800, 1600)
SCAN_BUDGET_LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
SCAN_METHODS = METHODS[:4]
BASELINE_FLOOR = 0.2
WIDTH_RULE = (f"the smallest width at which the student trained on the original data (hard labels, at its best "
              f"learning rate) answers at least {BASELINE_FLOOR:.0%} of the validation prompts: a smaller one fails "
              f"at nearly everything, and the smallest that does not has the most to gain from a teacher")
LR_RULE = "each method's learning rate: its highest mean validation accuracy at the chosen width"
SAMPLING_RULE = ("of the filtered sampled sets, the one with the highest mean validation accuracy (a tie goes to "
                 "the one listed first), trained at sequence_kd's learning rate")
BUDGET_NOTE = ("for information, not a choice: the chosen student trained for other numbers of steps, each method "
               "at each learning rate of the grid")


def _summary(values: list[float]) -> dict:
    return {"accuracy": [round(v, 4) for v in values], "mean": round(statistics.fmean(values), 4),
            "std": round(seed_std(values), 4)}


def _best(grid, accuracy: dict, key) -> object:
    """The value of ``grid`` whose per-seed accuracies accuracy[key(value)] have the highest mean; max
    keeps the first of equal means, so the grid's order breaks ties."""
    return max(grid, key=lambda value: statistics.fmean(accuracy[key(value)]))


def distinct_per_prompt(data: Sequence[tuple[str, str]]) -> float:
    """How many different completions a prompt of ``data`` has, on average over its distinct prompts."""
    completions = defaultdict(set)
    for prompt, completion in data:
        completions[prompt].add(completion)
    return statistics.fmean(len(c) for c in completions.values())


def scan(teacher_name: str = "any_order", seeds: Sequence[int] = SCAN_SEEDS, *, widths=SCAN_WIDTHS,
         learning_rates=SCAN_LEARNING_RATES, temperatures=SCAN_TEMPERATURES, sampling=SCAN_SAMPLING,
         budgets=SCAN_BUDGETS, budget_learning_rates=SCAN_BUDGET_LEARNING_RATES, base: Settings | None = None,
         progress: bool = True) -> dict:
    """The validation scan behind Settings' defaults, as a dict (the JSON that ships).

    Stage "student": every width x learning rate x method of SCAN_METHODS; chooses the width by
    WIDTH_RULE, then each method's learning rate by LR_RULE. Stage "sampling": at that width, every
    temperature x sampled transfer set of ``sampling``; chooses sampled_filtered's by SAMPLING_RULE.
    Stage "budget" (BUDGET_NOTE): at that width, every number of steps of ``budgets`` x learning
    rate x method. Only the validation split is looked at. ``base`` gives the settings not scanned
    (prompts, steps, batch size, depth, heads; default Settings())."""
    base = base or Settings()
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds is empty: the scan needs at least one seed")
    began = time.perf_counter()
    teacher = teachers.load(teacher_name)
    task, tokenizer = teacher.task, teacher.tokenizer
    examples = task.examples("validation")
    core = dataclasses.replace(base, teacher=teacher_name, seeds=seeds, methods=SCAN_METHODS)
    budgets = tuple(b for b in budgets if b != core.steps)
    extra = len([lr for lr in budget_learning_rates if lr not in learning_rates])   # at the lesson's budget
    total = len(seeds) * len(SCAN_METHODS) * (len(widths) * len(learning_rates)
                                              + (len(budgets) * len(budget_learning_rates) + extra))
    bar = tqdm(total=total + len(seeds) * len(temperatures) * len(sampling), desc="validation scan", unit="student",
               disable=not progress, leave=False)
    sets = {seed: write_transfer_sets(teacher, core, seed) for seed in seeds}
    caches = {(seed, source): transfer_cache(teacher, sets[seed].data[source])
              for seed in seeds for source in ("original", "greedy")}
    accuracy = defaultdict(list)   # (steps, width, lr, method) -> per seed

    def measure(steps: int, width: int, lr: float, method: str) -> None:
        settings = dataclasses.replace(core, steps=steps, width=width, learning_rates={method: lr}, methods=(method,))
        for seed in seeds:
            source = SOURCE[method]
            student = train_student(method, sets[seed].data[source], teacher, settings, seed, caches[seed, source])
            accuracy[steps, width, lr, method].append(task.accuracy(student, tokenizer, examples))
            bar.update()

    for width, lr, method in itertools.product(widths, learning_rates, SCAN_METHODS):
        measure(core.steps, width, lr, method)
    student_results = [{"width": w, "lr": lr, "method": m, **_summary(accuracy[core.steps, w, lr, m])}
                       for w, lr, m in itertools.product(widths, learning_rates, SCAN_METHODS)]

    def best_lr(width: int, method: str) -> float:
        return _best(learning_rates, accuracy, lambda lr: (core.steps, width, lr, method))

    width = next((w for w in sorted(widths)
                  if statistics.fmean(accuracy[core.steps, w, best_lr(w, "hard_labels"), "hard_labels"])
                  >= BASELINE_FLOOR), max(widths))
    chosen_lrs = {m: best_lr(width, m) for m in SCAN_METHODS}
    chosen_lrs["sampled_filtered"] = chosen_lrs["sequence_kd"]

    for steps, lr, method in itertools.product(sorted({*budgets, core.steps}), budget_learning_rates, SCAN_METHODS):
        if (steps, width, lr, method) not in accuracy:   # the lesson's budget was measured above, for most of them
            measure(steps, width, lr, method)
    budget_results = [{"steps": steps, "lr": lr, "method": m, **_summary(accuracy[steps, width, lr, m])}
                      for steps in sorted({*budgets, core.steps}) for lr in budget_learning_rates for m in SCAN_METHODS]

    sampled_results = []
    for temperature, (samples, verify, keep) in itertools.product(temperatures, sampling):
        settings = dataclasses.replace(core, width=width, learning_rates=chosen_lrs, methods=("sampled_filtered",),
                                       temperature=temperature, samples_per_prompt=samples, verify=verify,
                                       keep_per_prompt=keep)
        values, correct, kept, sizes, distinct = [], [], [], [], []
        for seed in seeds:
            prompts = [e.prompt for e in task.examples("train", settings.prompts, seed=seed)]
            written = distill.write_transfer_set(teacher.model, tokenizer, prompts,
                                                 max_new_tokens=task.max_completion_length + 1,
                                                 temperature=temperature, samples_per_prompt=samples, seed=seed)
            correct.append(sum(task.is_correct(p, o) for p, o in written.examples) / written.written)
            data, share = (keep_accepted(written.examples, task.is_correct, keep) if verify
                           else (written.examples, 1.0))
            student = train_student("sampled_filtered", data, teacher, settings, seed)
            values.append(task.accuracy(student, tokenizer, examples))
            kept.append(share)
            sizes.append(len(data))
            distinct.append(distinct_per_prompt(data))
            bar.update()
        sampled_results.append({"temperature": temperature, "samples_per_prompt": samples, "verify": verify,
                                "keep_per_prompt": keep, **_summary(values),
                                "correct": round(statistics.fmean(correct), 4),
                                "kept": round(statistics.fmean(kept), 4),
                                "size": round(statistics.fmean(sizes)),
                                "distinct_per_prompt": round(statistics.fmean(distinct), 3)})
    bar.close()
    best = max((r for r in sampled_results if r["verify"]), key=lambda r: r["mean"])
    fixed = {name: getattr(core, name) for name in ("prompts", "depth", "heads", "steps", "batch_size")}
    reference = {m: {"lr": chosen_lrs[m], **_summary(accuracy[core.steps, width, chosen_lrs[m], m])}
                 for m in ("hard_labels", "sequence_kd")}
    reference_distinct = {source: round(statistics.fmean(distinct_per_prompt(sets[seed].data[source]) for seed in seeds), 3)
                          for source in ("original", "greedy")}
    return {
        "about": "How kdlearn.experiments.sequence_kd's settings were chosen: validation accuracy only.",
        "command": f"python -m kdlearn.experiments.sequence_kd --scan --out kdlearn/experiments/{SHIPPED_SCAN.name}",
        "teacher": teacher_name, "task": task.describe(), "evaluated_on": "validation",
        "evaluation_size": len(examples), "seeds": list(seeds), "fixed": fixed,
        "student": {"grid": {"width": list(widths), "lr": list(learning_rates), "method": list(SCAN_METHODS)},
                    "rule": f"{WIDTH_RULE}; {LR_RULE}", "results": student_results,
                    "chosen": {"width": width, "learning_rates": chosen_lrs}},
        "sampling": {"grid": {"temperature": list(temperatures),
                              "sets": [{"samples_per_prompt": n, "verify": v, "keep_per_prompt": k}
                                       for n, v, k in sampling]},
                     "rule": SAMPLING_RULE, "results": sampled_results,
                     "reference": reference, "reference_distinct_per_prompt": reference_distinct,
                     "chosen": {k: best[k] for k in ("temperature", "samples_per_prompt", "verify", "keep_per_prompt")}},
        "budget": {"grid": {"steps": sorted({*budgets, core.steps}), "lr": list(budget_learning_rates),
                            "method": list(SCAN_METHODS)},
                   "note": BUDGET_NOTE, "width": width, "results": budget_results},
        "seconds": round(time.perf_counter() - began),
    }


def load_scan(path: str | Path | None = None) -> dict:
    """The validation scan as a dict: the shipped one, or the JSON at ``path``."""
    return read_scan(SHIPPED_SCAN if path is None else path, "python -m kdlearn.experiments.sequence_kd --scan")


def settings_from_scan(scan_result: dict, **overrides) -> Settings:
    """Settings() with the scan's choices in it (what Settings' defaults are, for the shipped scan)."""
    return dataclasses.replace(Settings(teacher=scan_result["teacher"], **scan_result["fixed"],
                                        width=scan_result["student"]["chosen"]["width"],
                                        learning_rates=dict(scan_result["student"]["chosen"]["learning_rates"]),
                                        **scan_result["sampling"]["chosen"]), **overrides)


def format_scan(scan_result: dict) -> str:
    student, sampling = scan_result["student"], scan_result["sampling"]
    widths, methods = student["grid"]["width"], student["grid"]["method"]
    lines = [f"Validation scan on {scan_result['task']} (seeds {', '.join(map(str, scan_result['seeds']))}, "
             f"{scan_result['evaluation_size']} validation prompts): mean accuracy",
             "", "student width x learning rate:",
             f"{'width':>6}{'lr':>8}" + "".join(f"{LABELS[m]:>34}" for m in methods)]
    by_key = {(r["width"], r["lr"], r["method"]): r for r in student["results"]}
    for w in widths:
        for lr in student["grid"]["lr"]:
            cells = "".join(f"{by_key[w, lr, m]['mean']:>25.3f} ± {by_key[w, lr, m]['std']:.3f}" for m in methods)
            lines.append(f"{w:>6}{lr:>8.0e}{cells}")
    chosen = student["chosen"]
    lines += [f"chosen: width {chosen['width']}; learning rates "
              + ", ".join(f"{m} {lr:.0e}" for m, lr in chosen["learning_rates"].items()), f"rule: {student['rule']}",
              "", "sampled transfer sets, at that width:",
              f"{'T':>5}{'per prompt':>11}{'filter':>16}{'correct':>9}{'kept':>7}{'size':>7}{'orderings':>10}"
              f"{'accuracy':>18}"]
    for r in sampling["results"]:
        filt = ("none" if not r["verify"] else "every accepted" if r["keep_per_prompt"] is None
                else f"{r['keep_per_prompt']} accepted")
        lines.append(f"{r['temperature']:>5g}{r['samples_per_prompt']:>11}{filt:>16}{r['correct']:>9.3f}"
                     f"{r['kept']:>7.3f}{r['size']:>7}{r['distinct_per_prompt']:>10.2f}"
                     f"{r['mean']:>11.3f} ± {r['std']:.3f}")
    reference = sampling["reference"]
    lines += [f"for comparison: greedy outputs (sequence_kd) {reference['sequence_kd']['mean']:.3f}, original data "
              f"(hard_labels) {reference['hard_labels']['mean']:.3f}",
              "chosen: " + ", ".join(f"{k} {v}" for k, v in sampling["chosen"].items()), f"rule: {sampling['rule']}",
              "", f"budgets, at width {scan_result['budget']['width']} ({scan_result['budget']['note']}):",
              f"{'steps':>6}{'lr':>8}" + "".join(f"{LABELS[m]:>34}" for m in methods)]
    budget = {(r["steps"], r["lr"], r["method"]): r for r in scan_result["budget"]["results"]}
    for steps in scan_result["budget"]["grid"]["steps"]:
        for lr in scan_result["budget"]["grid"]["lr"]:
            cells = "".join(f"{budget[steps, lr, m]['mean']:>25.3f} ± {budget[steps, lr, m]['std']:.3f}" for m in methods)
            lines.append(f"{steps:>6}{lr:>8.0e}{cells}")
    lines.append(f"({scan_result['seconds']} s)")
    return "\n".join(lines)


# --- the command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.experiments.sequence_kd") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Teacher-written data: hard labels, word-level, sequence-level KD and a filtered "
                               "sampled transfer set, on the same student and budget (lesson 09).")
    parser.add_argument("--seeds", type=positive_int, default=3, help="how many seeds, 0 .. N-1 (default 3)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="which methods (default: all)")
    parser.add_argument("--steps", type=positive_int, help=f"training steps per student (default {Settings.steps})")
    parser.add_argument("--prompts", type=positive_int, help=f"training prompts per seed (default {Settings.prompts})")
    parser.add_argument("--width", type=positive_int, help=f"the student's width (default {Settings.width})")
    parser.add_argument("--lr", type=float, help="one learning rate for every method (default: each method's own, "
                                                 "the scan's choice for the default steps)")
    parser.add_argument("--temperature", type=float, help="sampled_filtered's sampling temperature (default: the scan's)")
    parser.add_argument("--evaluate-on", choices=EVALUATION_SPLITS, default="test",
                        help="count on the test split (default) or on the validation split, the one to choose on")
    parser.add_argument("--scan", action="store_true", help="run the validation scan behind the defaults instead "
                                                            "(about 45 minutes on one core)")
    parser.add_argument("--out", type=Path, help="with --scan: write the scan's JSON here")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    # Models this small gain nothing from a second thread, and lose much when the cores are busy.
    torch.set_num_threads(1)
    if args.scan:
        base = dataclasses.replace(Settings(), **{k: v for k, v in (("steps", args.steps), ("prompts", args.prompts))
                                                  if v is not None})
        result = scan(seeds=tuple(SCAN_SEEDS[0] + i for i in range(args.seeds)), base=base, progress=not args.quiet)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1) if args.json else format_scan(result))
        return 0
    overrides = {"seeds": tuple(range(args.seeds)), "methods": tuple(m for m in METHODS if m in args.methods)}
    for name in ("steps", "prompts", "width", "temperature"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.lr is not None:
        overrides["learning_rates"] = dict.fromkeys(METHODS, args.lr)
    try:
        settings = dataclasses.replace(Settings(), **overrides)
        results = run(settings, evaluate_on=args.evaluate_on, progress=not args.quiet)
    except ValueError as error:  # a bad --temperature, worded by the checks
        parser.error(str(error))
    print(json.dumps(results.to_json(), indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
