"""Forward KL, reverse KL and JSD(beta), token by token: what each makes a small language model do.

    python -m kdlearn.experiments.divergences            the table on the test prompts, seeds 0-2
    python -m kdlearn.experiments.divergences --json     the same figures as JSON
    python -m kdlearn.experiments.divergences --evaluate-on validation    for choosing settings
    python -m kdlearn.experiments.divergences --scan     the validation scan behind the defaults

    from kdlearn.experiments import divergences
    results = divergences.run()
    print(divergences.format_table(results))

The teacher is the shipped any_order GPT (kdlearn.teachers.load("any_order")): four distinct
digits in, the same digits in any order out, so every prompt has 24 correct answers, and the
teacher spreads its probability over all of them. Per seed, one small student is fine-tuned
briefly on the training split's (prompt, random ordering) pairs with hard labels, the warm
start; then three copies of it are distilled from the teacher, on the same pairs, with forward
KL(teacher || student), reverse KL(student || teacher) and JSD(beta), each by
kdlearn.distill.train with the teacher's per-token distribution along the data's completion
as the target. The three copies share their starting weights and their batches, so a
difference between them is the divergence's. The warm start is what MiniLLM does too (Gu et
al. 2024 fine-tune the student on the data before distilling it). Without it, reverse KL
learns slowly: its gradient pulls each token up or down in proportion to the probability the
student already gives it (the scan below runs the defaults from random weights too).

Each student is then measured on the evaluation prompts (the test split's fixed set unless
evaluate_on says "validation"), samples_per_prompt temperature-1 samples of each (``measure``):

* valid: the share of the student's samples that are correct (precision, by the verifier);
* distinct: distinct correct samples per prompt;
* teacher_nll: the teacher's mean negative log-likelihood per token of the student's samples
  (precision, by likelihood: low when the student writes what the teacher would);
* student_nll: the student's mean negative log-likelihood per token of the teacher's samples
  (recall: low when the student gives probability to everything the teacher writes).

No model can give the teacher's samples a lower mean NLL than their entropy: for the uniform
distribution over 24 orderings written in 5 tokens (4 digits and the end), ln(24) / 5 = 0.636
per token (``ENTROPY_FLOOR``).

The teacher's logits are computed once per training sequence and reused by every run
(``distill.CachedTeacher``): the teacher is frozen, so this changes no value, only the time (the
teacher's forward pass is most of a step's work).

How the defaults were chosen (``scan``, python -m kdlearn.experiments.divergences --scan, most of
an hour on one core): on the validation split, with seeds 100-102 of its own, never the
test split. SCAN_GRID is the grid: students of about 4k to 16k parameters, learning rates 3e-3,
1e-2 and 3e-2, and 300, 450 or 600 distillation steps, each after the default warm start. The
rules: for each student and number of steps, each divergence's learning rate is the one that
gives the lowest validation value of the loss it minimises (``objective_value``); the student is
the smallest, and the number of steps the fewest, at which all three divergences are graded and
stable, every one's validation precision above 0.5 and its spread over the scan's seeds below
0.05 (a comparison of students at 0% or 100%, or one that flips with the seed, tells nothing).
That chose the 16 x 2 student (7.3k parameters) at 450 steps, where the three divergences agreed
on lr 1e-2 (the forward-KL students' spread, 0.049, only just inside the rule); the 4k-parameter
students stayed far below 0.5, and the 4.3k one at every length, like the 16 x 2 one after 300
steps, varied too much from seed to seed. From random weights (warm_start_steps=0), the
reverse-KL students fell far behind the other two.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from kdlearn import _validation as check
from kdlearn import distill, lm, tasks, teachers
from kdlearn.experiments import positive_int, seed_std

DIVERGENCES = ("forward", "reverse", "jsd")
METRICS = ("valid", "distinct", "teacher_nll", "student_nll")
EVALUATION_SPLITS = ("test", "validation")
# The least mean NLL per token of the teacher's samples: the entropy of 24 equally likely answers
# of 5 tokens each (see the module docstring).
ENTROPY_FLOOR = math.log(24) / 5
# Distillation draws its batches from seed + DISTILL_SEED_OFFSET, so that they are not the warm start's.
DISTILL_SEED_OFFSET = 1000
SCAN_SEEDS = (100, 101, 102)


@dataclass(frozen=True)
class Settings:
    """Everything that decides the outcome; the defaults are the choices of the validation scan
    (see the module docstring)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    # The student: a kdlearn.lm.GPT with the teacher's context and vocabulary.
    width: int = 16
    depth: int = 2
    heads: int = 2
    # Training: warm_start_steps of hard labels, then steps of distillation, both at lr.
    warm_start_steps: int = 200
    steps: int = 450
    lr: float = 1e-2
    batch_size: int = 64
    beta: float = 0.5                 # JSD(beta)'s
    examples: int = 8000              # (prompt, ordering) pairs drawn from the training split
    # Measuring: samples_per_prompt samples of each evaluation prompt (prompts of them; None: the
    # split's whole fixed set).
    samples_per_prompt: int = 8
    prompts: int | None = None

    def __post_init__(self):
        for name in ("width", "depth", "heads", "steps", "batch_size", "examples", "samples_per_prompt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.warm_start_steps, bool) or not isinstance(self.warm_start_steps, int) \
                or self.warm_start_steps < 0:
            raise ValueError(f"warm_start_steps must be an int >= 0, got {self.warm_start_steps!r}")
        if self.prompts is not None and (not isinstance(self.prompts, int) or self.prompts < 1):
            raise ValueError(f"prompts must be None (every evaluation prompt) or a positive int, got {self.prompts!r}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        check.check_unit_interval("beta", self.beta)

    def objective(self, divergence: str) -> distill.Objective:
        check.check_choice("divergence", divergence, DIVERGENCES)
        return distill.Objective(divergence, beta=self.beta)


@dataclass(frozen=True)
class Metrics:
    """What measure() finds for one model (see the module docstring)."""

    valid: float
    distinct: float
    teacher_nll: float
    student_nll: float


@dataclass
class Results:
    """Per seed (in the order of settings.seeds), the metrics of each divergence's student, of the
    warm start they began from and of the teacher itself, on the split evaluated_on; and the
    students, for lessons that look further."""

    settings: Settings
    evaluated_on: str
    prompts: int
    student_parameters: int
    teacher_parameters: int
    metrics: dict[str, list[Metrics]] = field(
        default_factory=lambda: {name: [] for name in ("teacher", "warm_start", *DIVERGENCES)})
    students: dict[str, list[lm.GPT]] = field(default_factory=lambda: {name: [] for name in DIVERGENCES})

    def values(self, name: str, metric: str) -> list[float]:
        check.check_choice("metric", metric, METRICS)
        return [getattr(m, metric) for m in self.metrics[name]]

    def mean(self, name: str, metric: str) -> float:
        return statistics.fmean(self.values(name, metric))

    def std(self, name: str, metric: str) -> float:
        """The sample standard deviation over seeds (0 for a single seed)."""
        values = self.values(name, metric)
        return seed_std(values)

    def to_json(self) -> dict:
        """{divergence: {metric: mean over seeds, ..., "std": {metric: std}}} for each divergence."""
        return {name: {**{metric: self.mean(name, metric) for metric in METRICS},
                       "std": {metric: self.std(name, metric) for metric in METRICS}}
                for name in DIVERGENCES}


def new_student(settings: Settings, teacher: lm.GPT, seed: int) -> lm.GPT:
    """The settings' untrained student of the teacher, its weights drawn from seed."""
    return distill.new_student(teacher, width=settings.width, depth=settings.depth, heads=settings.heads, seed=seed)


@torch.no_grad()
def measure(model: lm.GPT, teacher: lm.GPT, tokenizer: lm.CharTokenizer, task: tasks.Task,
            examples: list[tasks.Example], *, samples_per_prompt: int = 8, seed: int = 0,
            teacher_samples: list[list[int]] | None = None) -> Metrics:
    """valid, distinct, teacher_nll and student_nll of ``model`` on the prompts of ``examples``
    (see the module docstring), from samples_per_prompt temperature-1 samples of each prompt,
    drawn with ``seed``. The teacher's samples are drawn with seed + 1 unless given (as
    lm.generate returns them, one list of token ids per prompt and sample, prompt by prompt)."""
    if not examples:
        raise ValueError("examples is empty: pass the examples whose prompts the model is measured on")
    if not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be a positive int, got {samples_per_prompt!r}")
    texts = [e.prompt for e in examples for _ in range(samples_per_prompt)]
    prompts = [tokenizer.encode_prompt(text) for text in texts]
    options = dict(eos_id=tokenizer.eos_id, max_new_tokens=task.max_completion_length + 1, temperature=1.0)
    written = lm.generate(model, prompts, seed=seed, **options)
    if teacher_samples is None:
        teacher_samples = lm.generate(teacher, prompts, seed=seed + 1, **options)
    elif len(teacher_samples) != len(prompts):
        raise ValueError(f"teacher_samples must hold {len(prompts)} samples ({samples_per_prompt} per prompt), "
                         f"got {len(teacher_samples)}")
    correct = [task.is_correct(text, tokenizer.decode(sample)) for text, sample in zip(texts, written)]
    found = [{tuple(sample) for sample, ok in zip(written[i:i + samples_per_prompt], correct[i:i + samples_per_prompt])
              if ok} for i in range(0, len(written), samples_per_prompt)]

    def nll_per_token(scorer: lm.GPT, samples: list[list[int]]) -> float:
        return -lm.continuation_log_prob(scorer, prompts, samples).sum().item() / sum(map(len, samples))

    return Metrics(valid=sum(correct) / len(correct), distinct=statistics.fmean(map(len, found)),
                   teacher_nll=nll_per_token(teacher, written), student_nll=nll_per_token(model, teacher_samples))


def evaluation_examples(task: tasks.Task, evaluate_on: str, prompts: int | None) -> list[tasks.Example]:
    """The split's fixed evaluation set, or its first ``prompts`` examples."""
    check.check_choice("evaluate_on", evaluate_on, EVALUATION_SPLITS)
    examples = task.examples(evaluate_on)
    return examples if prompts is None else examples[:prompts]


def run(settings: Settings | None = None, *, evaluate_on: str = "test", progress: bool = True) -> Results:
    """Per seed: the warm start, then a student distilled with each divergence from it; every one of
    them, and the teacher, measured on the evaluation prompts of ``evaluate_on``."""
    settings = settings or Settings()
    check.check_choice("evaluate_on", evaluate_on, EVALUATION_SPLITS)
    teacher = teachers.load("any_order")
    task, tokenizer = teacher.task, teacher.tokenizer
    data = task.pairs("train", settings.examples)
    examples = evaluation_examples(task, evaluate_on, settings.prompts)
    packed = lm.pack([tokenizer.encode_prompt(p) for p, _ in data], [tokenizer.encode_completion(c) for _, c in data])
    cache = distill.CachedTeacher(teacher.model, tokenizer.pad_id, packed.input_ids)
    results = Results(settings, evaluate_on, len(examples), new_student(settings, teacher.model, 0).num_parameters(),
                      teacher.model.num_parameters())
    bar = tqdm(total=len(settings.seeds) * (1 + len(DIVERGENCES)), desc="divergences", unit="student",
               disable=not progress, leave=False)
    for seed in settings.seeds:
        bar.set_postfix_str(f"seed {seed}: warm start")
        start = new_student(settings, teacher.model, seed)
        if settings.warm_start_steps:
            distill.train(start, tokenizer, data, objective=distill.Objective("ce"), steps=settings.warm_start_steps,
                          batch_size=settings.batch_size, lr=settings.lr, seed=seed, progress=False)
        bar.update()
        prompts = [tokenizer.encode_prompt(e.prompt) for e in examples for _ in range(settings.samples_per_prompt)]
        teacher_samples = lm.generate(teacher.model, prompts, eos_id=tokenizer.eos_id, temperature=1.0,
                                      max_new_tokens=task.max_completion_length + 1, seed=seed + 1)

        def score(model: lm.GPT) -> Metrics:
            return measure(model, teacher.model, tokenizer, task, examples, seed=seed,
                           samples_per_prompt=settings.samples_per_prompt, teacher_samples=teacher_samples)

        results.metrics["teacher"].append(score(teacher.model))
        results.metrics["warm_start"].append(score(start))
        for divergence in DIVERGENCES:
            bar.set_postfix_str(f"seed {seed}: {divergence}")
            student = copy.deepcopy(start)
            distill.train(student, tokenizer, data, teacher=cache, objective=settings.objective(divergence),
                          steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                          seed=seed + DISTILL_SEED_OFFSET, progress=False)
            results.students[divergence].append(student)
            results.metrics[divergence].append(score(student))
            bar.update()
    bar.close()
    return results


@torch.no_grad()
def objective_value(student: lm.GPT, teacher: nn.Module, tokenizer: lm.CharTokenizer, task: tasks.Task,
                    examples: list[tasks.Example], objective: distill.Objective) -> float:
    """The loss ``objective`` puts on ``student`` on the examples' (prompt, completion) pairs: the
    mean over their completion tokens of the divergence from the teacher (what training minimises)."""
    batch = lm.pack([tokenizer.encode_prompt(e.prompt) for e in examples],
                    [tokenizer.encode_completion(task.completion(e)) for e in examples])
    student.eval()
    return distill.token_loss(student(batch.input_ids), distill.teacher_logits(teacher, batch.input_ids),
                              batch.labels, objective).item()


# The validation scan's grid: (width, depth, heads) of the student, learning rates, distillation steps;
# every configuration after the default warm start. The scan also runs the defaults from random weights.
SCAN_GRID = {"students": ((16, 1, 2), (12, 2, 2), (16, 2, 2), (24, 2, 2)), "lr": (3e-3, 1e-2, 3e-2),
             "steps": (300, 450, 600)}


def scan(grid: dict | None = None, seeds: tuple[int, ...] = SCAN_SEEDS, progress: bool = True) -> list[dict]:
    """Every configuration of ``grid`` (default SCAN_GRID), and the defaults without a warm start, run on
    the validation split with ``seeds``: one record per configuration and divergence, with the
    validation metrics per seed and the validation value of the divergence's own loss, averaged over
    the seeds."""
    grid = grid or SCAN_GRID
    teacher = teachers.load("any_order")
    validation = teacher.task.examples("validation")
    configurations = [Settings(seeds=seeds, width=width, depth=depth, heads=heads, lr=lr, steps=steps)
                      for (width, depth, heads), lr, steps in itertools.product(grid["students"], grid["lr"],
                                                                                grid["steps"])]
    configurations.append(Settings(seeds=seeds, warm_start_steps=0))
    records = []
    for settings in tqdm(configurations, desc="scan", unit="setting", disable=not progress):
        results = run(settings, evaluate_on="validation", progress=False)
        for divergence in DIVERGENCES:
            loss = statistics.fmean(
                objective_value(student, teacher.model, teacher.tokenizer, teacher.task, validation,
                                settings.objective(divergence)) for student in results.students[divergence])
            records.append({"width": settings.width, "depth": settings.depth, "heads": settings.heads,
                            "parameters": results.student_parameters, "warm_start_steps": settings.warm_start_steps,
                            "lr": settings.lr, "steps": settings.steps, "divergence": divergence, "objective": loss,
                            **{metric: results.values(divergence, metric) for metric in METRICS}})
    return records


def format_scan(records: list[dict]) -> str:
    """The scan as a table: one line per configuration and divergence, means ± std over its seeds."""
    lines = [f"{'student':>16} {'warm':>4} {'lr':>6} {'steps':>5} {'divergence':>10} {'own loss':>9}  "
             + "  ".join(f"{metric:>13}" for metric in METRICS)]
    for r in records:
        student = f"{r['width']}x{r['depth']} ({r['parameters']:,})"
        cells = [f"{statistics.fmean(r[m]):6.3f}±{seed_std(r[m]):5.3f}"
                 for m in METRICS]
        lines.append(f"{student:>16} {r['warm_start_steps']:4d} {r['lr']:6.0e} {r['steps']:5d} {r['divergence']:>10} "
                     f"{r['objective']:9.4f}  " + "  ".join(f"{cell:>13}" for cell in cells))
    return "\n".join(lines)


ROW_NAMES = {"teacher": "teacher (its own samples)", "warm_start": "warm start (hard labels)",
             "forward": "forward KL", "reverse": "reverse KL", "jsd": "JSD(beta)"}


def format_table(results: Results) -> str:
    """The comparison as text: per student, each metric's mean ± sample std over seeds; the teacher
    and the warm start the students began from as references."""
    s = results.settings
    names = {**ROW_NAMES, "jsd": f"JSD({s.beta:g})"}
    width = max(len(name) for name in names.values())
    lines = [
        f"Distilling any_order (a {results.teacher_parameters:,}-parameter teacher) into a "
        f"{results.student_parameters:,}-parameter student ({s.width} wide, {s.depth} deep): {results.evaluated_on} "
        f"prompts ({results.prompts}), {s.samples_per_prompt} samples each at temperature 1, seeds "
        f"{', '.join(map(str, s.seeds))} (mean ± sample std over seeds)",
        "",
        f"{'':<{width}}  {'valid':>13}  {'distinct':>13}  {'teacher NLL':>13}  {'student NLL':>13}",
        f"{'':<{width}}  {'(precision)':>13}  {'correct':>13}  {'(precision)':>13}  {'(recall)':>13}",
    ]
    for name in ("teacher", "warm_start", *DIVERGENCES):
        cells = [f"{results.mean(name, m):.3f} ± {results.std(name, m):.3f}" for m in METRICS]
        lines.append(f"{names[name]:<{width}}  " + "  ".join(f"{cell:>13}" for cell in cells))
    lines += [
        "",
        f"NLLs are per token; no model scores the teacher's samples below their entropy, ln(24)/5 = "
        f"{ENTROPY_FLOOR:.3f} per token for 24 equally likely answers.",
        f"settings: warm start {s.warm_start_steps} steps of hard labels, then {s.steps} steps of distillation, "
        f"lr {s.lr:g}, batches of {s.batch_size}, {s.examples} training pairs",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.experiments.divergences") -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Forward KL, reverse KL and JSD(beta), token by token: students distilled from the shipped "
                    "any_order teacher with each, measured by precision (valid samples, the teacher's NLL of "
                    "them) and recall (the student's NLL of the teacher's samples). The defaults were chosen on "
                    "the validation split (--scan shows how).")
    parser.add_argument("--seeds", type=positive_int, default=len(defaults.seeds),
                        help=f"how many seeds, 0 .. N-1 (default {len(defaults.seeds)})")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="distillation steps per student (default %(default)s)")
    parser.add_argument("--warm-start-steps", type=int, default=defaults.warm_start_steps,
                        help="hard-label steps before distilling, 0 for none (default %(default)s)")
    parser.add_argument("--width", type=positive_int, default=defaults.width, help="student width (default %(default)s)")
    parser.add_argument("--depth", type=positive_int, default=defaults.depth, help="student blocks (default %(default)s)")
    parser.add_argument("--heads", type=positive_int, default=defaults.heads,
                        help="attention heads (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="learning rate (default %(default)s)")
    parser.add_argument("--beta", type=float, default=defaults.beta, help="JSD's beta (default %(default)s)")
    parser.add_argument("--examples", type=positive_int, default=defaults.examples,
                        help="training pairs drawn from the training split (default %(default)s)")
    parser.add_argument("--samples", type=positive_int, default=defaults.samples_per_prompt,
                        help="samples per evaluation prompt (default %(default)s)")
    parser.add_argument("--prompts", type=positive_int, help="evaluate on the first N prompts only (default: all)")
    parser.add_argument("--evaluate-on", choices=EVALUATION_SPLITS, default="test",
                        help="measure on the test split (default) or on the validation split, the one to choose on")
    parser.add_argument("--scan", action="store_true",
                        help="run the validation scan behind the defaults instead (seeds 100-102; many minutes)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    # Models this small gain nothing from a second thread, and the figures are the same on every machine.
    torch.set_num_threads(1)
    if args.scan:
        records = scan(progress=not args.quiet)
        print(json.dumps(records, indent=1) if args.json else format_scan(records))
        return 0
    try:
        settings = Settings(seeds=tuple(range(args.seeds)), width=args.width, depth=args.depth, heads=args.heads,
                            warm_start_steps=args.warm_start_steps, steps=args.steps, lr=args.lr, beta=args.beta,
                            examples=args.examples, samples_per_prompt=args.samples, prompts=args.prompts)
    except ValueError as error:  # worded by kdlearn's checks
        parser.error(str(error))
    results = run(settings, evaluate_on=args.evaluate_on, progress=not args.quiet)
    print(json.dumps(results.to_json(), indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
