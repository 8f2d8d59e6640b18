"""Hinton, Vinyals and Dean (2015), reproduced: teacher, small net from scratch, small net distilled.

    python -m kdlearn.experiments.hinton                  the embedded digits, seeds 0-2 (about 30 s)
    python -m kdlearn.experiments.hinton --seeds 12       seeds 0-11: how far three seeds can be trusted
    python -m kdlearn.experiments.hinton --data mnist     the real MNIST (downloads once; slow on a CPU)
    python -m kdlearn.experiments.hinton --json           the same figures as JSON

    from kdlearn.experiments import hinton
    results = hinton.run(hinton.default_settings("digits"))
    print(hinton.format_table(results))

Per seed, three nets are trained and their errors counted on the test set: a big regularised
teacher on the training set; a small net on the same images with hard labels only; and the
same small net, from the same initial weights, distilled from the teacher on the transfer set
with kd_loss. The paper's MNIST figures are 67 / 146 / 74 test errors of 10,000: distillation
closed 91% of the gap between the small net and the teacher.

Three splits, three uses (see kdlearn.data): the nets learn from the training set, settings are
chosen on the validation split, held out of the training images, and the figures reported are
counted on the test split, which no choice has looked at. run(..., evaluate_on="validation")
counts validation errors instead, for choosing.

How the digits settings were chosen: kdlearn.experiments.hinton_tuning scans them on the
validation split, stage by stage (the teacher's learning rate and dropout, then its epochs; the
student from scratch's learning rate and epochs; the distilled student's; then T and alpha),
several seeds of its own per configuration, and keeps the lowest mean validation errors. The
scan, every configuration's validation errors per seed, ships as hinton_tuning.json; the
defaults of Settings are its choices, and a test holds the two together. To see it:
hinton_tuning.format_scan(hinton_tuning.load()); to redo it: python -m
kdlearn.experiments.hinton_tuning --out kdlearn/experiments/hinton_tuning.json.

Fixed by design, not scanned:
- The widths (models.WIDTHS): a teacher with room to spare, and a student short enough of
  capacity to leave a gap for distillation to close, yet wide enough to follow soft targets.
- A fair baseline: each way of training the student gets its own learning rate and number of
  epochs, and the scan of the student from scratch includes the distilled student's longest
  budget, so that a gain from distillation is not a gain from training longer.
- Adam with cosine decay and batches of 64; the students without dropout or weight decay, as
  in the paper.
- No jitter: on 8x8 digits the smallest shift, 1 pixel, is an eighth of the image (the paper
  shifts 28x28 MNIST images by up to 2 pixels).

The figures themselves are not quoted here, since they would go stale: the commands above
print them, and lesson 02 shows them beside the paper's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from kdlearn import _validation as check
from kdlearn import data, models, training
from kdlearn.experiments import positive_int, seed_std

MODELS = ("teacher", "scratch", "distilled")
# Where run counts errors: the test split for the figures reported, the validation split for choosing.
EVALUATION_SPLITS = ("test", "validation")
# The paper's MNIST test errors, of 10,000 test images (teacher 1200-1200, student 800-800, T = 20).
PAPER_ERRORS = {"teacher": 67, "scratch": 146, "distilled": 74}
PAPER_TEST_SIZE = 10_000
# The students start from weights of their own, drawn from seed + STUDENT_SEED_OFFSET.
STUDENT_SEED_OFFSET = 1000


@dataclass(frozen=True)
class Settings:
    """Everything that decides the outcome. The defaults are the digits setup: the learning rates,
    epochs, dropout, T and alpha are the choices of the validation scan in
    kdlearn.experiments.hinton_tuning (hinton_tuning.json), the rest fixed by design (see the
    module docstring); default_settings("mnist") gives the paper's."""

    data: str = "digits"
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    # The teacher: wide, dropout after each hidden layer, trained on the training set.
    teacher_hidden: tuple[int, ...] = models.WIDTHS["digits"]["teacher"]
    teacher_dropout: float = 0.5
    teacher_jitter: int = 0  # pixels; 1 pixel is already an eighth of an 8x8 digit
    teacher_epochs: int = 120
    teacher_lr: float = 3e-3
    # The student: no dropout, no weight decay, as in the paper. Each way of training it gets the
    # learning rate and epochs that suited it best on the validation split.
    student_hidden: tuple[int, ...] = models.WIDTHS["digits"]["small_student"]
    scratch_epochs: int = 100
    scratch_lr: float = 5e-2
    distilled_epochs: int = 150
    distilled_lr: float = 5e-2
    # Distillation: kd_loss = alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE.
    T: float = 4.0
    alpha: float = 0.9
    transfer_jitter: int = 0


def default_settings(data_name: str = "digits") -> Settings:
    """The settings for "digits" (chosen on its validation split by hinton_tuning; seconds a seed
    on one CPU core) or "mnist" (the paper's nets, jitter and T = 20, not tuned; a few epochs only,
    since the paper's long training takes hours on a CPU)."""
    if data_name == "digits":
        return Settings()
    if data_name == "mnist":
        return Settings(data="mnist", batch_size=128,
                        teacher_hidden=models.WIDTHS["mnist"]["teacher"], teacher_dropout=0.5, teacher_jitter=2,
                        teacher_epochs=20, student_hidden=models.WIDTHS["mnist"]["big_student"],
                        scratch_epochs=20, scratch_lr=1e-3, distilled_epochs=20, distilled_lr=1e-3, T=20.0,
                        alpha=0.9)
    raise ValueError(f"data must be one of {data.DATASETS}, got {data_name!r}")


@dataclass
class Results:
    """Errors of each model per seed (in the order of settings.seeds) on the split evaluated_on
    ("test" unless run was asked for "validation"), of test_size images (that split's size,
    whichever it is), and the nets trained (models[name][i] for seed i), for lessons that look
    further."""

    settings: Settings
    in_features: int
    num_classes: int
    test_size: int
    errors: dict[str, list[int]] = field(default_factory=lambda: {name: [] for name in MODELS})
    models: dict[str, list[nn.Module]] = field(default_factory=lambda: {name: [] for name in MODELS})
    evaluated_on: str = "test"

    def mean(self, name: str) -> float:
        return statistics.fmean(self.errors[name])

    def std(self, name: str) -> float:
        """The sample standard deviation over seeds (0 for a single seed)."""
        return seed_std(self.errors[name])

    def percent(self, name: str) -> float:
        return 100.0 * self.mean(name) / self.test_size

    def gap_closed(self) -> float:
        """(scratch - distilled) / (scratch - teacher) of the mean errors: the share of the
        student's gap to the teacher that distillation closes (nan when there is no gap)."""
        return _gap_closed(self.mean("teacher"), self.mean("scratch"), self.mean("distilled"))

    def to_json(self) -> dict:
        return {
            "data": self.settings.data,
            "evaluated_on": self.evaluated_on,
            "test_size": self.test_size,
            "seeds": list(self.settings.seeds),
            "models": {name: {"errors": self.errors[name], "mean": self.mean(name), "std": self.std(name),
                              "error_percent": self.percent(name)} for name in MODELS},
            "gap_closed": _finite_or_none(self.gap_closed()),
            "paper": {"data": "mnist", "test_size": PAPER_TEST_SIZE, "errors": PAPER_ERRORS,
                      "gap_closed": _gap_closed(*(PAPER_ERRORS[name] for name in MODELS))},
            "settings": dataclasses.asdict(self.settings),
        }


def evaluation_split(dataset: data.Dataset, evaluate_on: str = "test") -> data.Split:
    """The split whose errors are counted: dataset.test ("test", for the figures reported) or
    dataset.validation ("validation", for choosing settings)."""
    check.check_choice("evaluate_on", evaluate_on, EVALUATION_SPLITS)
    split = getattr(dataset, evaluate_on)
    if split is None:
        raise ValueError(f"evaluate_on='{evaluate_on}' needs a dataset with a {evaluate_on} split; "
                         f"{dataset.name!r} was built without one")
    return split


def train_teacher(dataset: data.Dataset, settings: Settings, seed: int) -> nn.Module:
    """The teacher of one seed, trained on dataset.train (which holds no validation image)."""
    teacher = models.mlp(dataset.train.x.shape[1], settings.teacher_hidden, dataset.num_classes,
                         dropout=settings.teacher_dropout, seed=seed)
    training.train(teacher, dataset.train, epochs=settings.teacher_epochs, batch_size=settings.batch_size,
                   lr=settings.teacher_lr, jitter=settings.teacher_jitter, seed=seed, progress=False)
    return teacher


def train_student(dataset: data.Dataset, settings: Settings, seed: int, teacher: nn.Module | None = None,
                  transfer: data.Split | None = None) -> nn.Module:
    """The small net of one seed: from scratch on dataset.train's hard labels when teacher is None,
    else distilled from teacher (kd_loss with settings.T and settings.alpha) on `transfer`
    (default dataset.transfer). Both start from the same weights for the same seed."""
    student = models.mlp(dataset.train.x.shape[1], settings.student_hidden, dataset.num_classes,
                         seed=seed + STUDENT_SEED_OFFSET)
    if teacher is None:
        training.train(student, dataset.train, loss="ce", epochs=settings.scratch_epochs, lr=settings.scratch_lr,
                       batch_size=settings.batch_size, seed=seed, progress=False)
    else:
        training.train(student, dataset.transfer if transfer is None else transfer, teacher=teacher, loss="kd",
                       T=settings.T, alpha=settings.alpha, jitter=settings.transfer_jitter,
                       epochs=settings.distilled_epochs, lr=settings.distilled_lr, batch_size=settings.batch_size,
                       seed=seed, progress=False)
    return student


def run(settings: Settings | None = None, *, dataset: data.Dataset | None = None, progress: bool = True,
        evaluate_on: str = "test") -> Results:
    """Train teacher, scratch and distilled student for every seed; count their errors on the test
    split (or, with evaluate_on="validation", on the validation split, for choosing settings).

    dataset: the data to use (default: data.load(settings.data)), e.g. one already loaded.
    progress: one progress bar over all the nets (tqdm.auto)."""
    settings = settings or default_settings()
    check.check_choice("evaluate_on", evaluate_on, EVALUATION_SPLITS)  # before minutes of training, not after
    check.check_temperature(settings.T)
    check.check_unit_interval("alpha", settings.alpha)
    dataset = dataset or data.load(settings.data)
    counted = evaluation_split(dataset, evaluate_on)
    results = Results(settings, in_features=counted.x.shape[1], num_classes=dataset.num_classes,
                      test_size=len(counted.y), evaluated_on=evaluate_on)
    bar = tqdm(total=3 * len(settings.seeds), desc="hinton", unit="net", disable=not progress, leave=False)
    for seed in settings.seeds:
        bar.set_postfix_str(f"seed {seed}: teacher")
        teacher = train_teacher(dataset, settings, seed)
        bar.update()
        bar.set_postfix_str(f"seed {seed}: student from scratch")
        scratch = train_student(dataset, settings, seed)
        bar.update()
        bar.set_postfix_str(f"seed {seed}: student distilled")
        distilled = train_student(dataset, settings, seed, teacher=teacher)
        bar.update()
        for name, net in zip(MODELS, (teacher, scratch, distilled)):
            results.models[name].append(net)
            results.errors[name].append(training.test_errors(net, counted))
    bar.close()
    return results


def format_table(results: Results) -> str:
    """The comparison as text: per model the errors per seed (on the test split, or the validation
    split if that is what run counted), mean ± sample std over seeds, as a percentage, and the
    paper's MNIST test figure beside it; then the settings."""
    s = results.settings
    names = {
        "teacher": f"teacher {_architecture(results, s.teacher_hidden)}",
        "scratch": f"student {_architecture(results, s.student_hidden)}, from scratch",
        "distilled": f"student {_architecture(results, s.student_hidden)}, distilled",
    }
    width = max(len(name) for name in names.values())
    per_seed_width = max(len("errors per seed"), *(len(" ".join(map(str, e))) for e in results.errors.values()))
    lines = [
        f"Hinton, Vinyals & Dean 2015 on {s.data}: {results.evaluated_on} errors of {results.test_size} "
        f"{results.evaluated_on} images, "
        f"seeds {', '.join(map(str, s.seeds))} (mean ± sample std over seeds)",
        "",
        f"{'model':<{width}}  {'errors per seed':<{per_seed_width}}  {'mean ± std':>13}  {'error':>6}"
        f"  {'paper (MNIST, of 10,000)':>24}",
    ]
    for name in MODELS:
        per_seed = " ".join(map(str, results.errors[name]))
        paper = f"{PAPER_ERRORS[name]} ({100 * PAPER_ERRORS[name] / PAPER_TEST_SIZE:.2f}%)"
        spread = f"{results.mean(name):6.1f} ± {results.std(name):4.1f}"
        lines.append(f"{names[name]:<{width}}  {per_seed:<{per_seed_width}}  {spread}  "
                     f"{results.percent(name):5.2f}%  {paper:>24}")
    paper_closed = _gap_closed(*(PAPER_ERRORS[name] for name in MODELS))
    lines += [
        "",
        f"gap closed by distillation, (scratch - distilled) / (scratch - teacher): "
        f"{100 * results.gap_closed():.0f}% (paper: {100 * paper_closed:.0f}%)",
        f"settings: {_describe(s)}",
    ]
    return "\n".join(lines)


def _architecture(results: Results, hidden: tuple[int, ...]) -> str:
    return "-".join(map(str, (results.in_features, *hidden, results.num_classes)))


def _describe(settings: Settings) -> str:
    fields = dataclasses.asdict(settings)
    del fields["data"], fields["seeds"]
    return ", ".join(f"{key}={'-'.join(map(str, value)) if isinstance(value, (tuple, list)) else value}"
                     for key, value in fields.items())


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN


def _gap_closed(teacher: float, scratch: float, distilled: float) -> float:
    return (scratch - distilled) / (scratch - teacher) if scratch != teacher else float("nan")


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.experiments.hinton") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Hinton et al. 2015 reproduced: teacher, small net from scratch, small net distilled, "
                    "their test errors beside the paper's. The digits settings were chosen on the "
                    "validation split: python -m kdlearn.experiments.hinton_tuning shows how.")
    parser.add_argument("--data", choices=data.DATASETS, default="digits",
                        help="digits: scikit-learn's 8x8 digits, on disk (default); mnist: the real MNIST, "
                             "downloaded once into the cache (slow on a CPU)")
    parser.add_argument("--fallback", action="store_true",
                        help="with --data mnist: if MNIST cannot be had (offline), run on digits instead of stopping")
    parser.add_argument("--seeds", type=positive_int, default=3, help="how many seeds, 0 .. N-1 (default 3)")
    parser.add_argument("--T", type=float, help="distillation temperature (default: the dataset's)")
    parser.add_argument("--alpha", type=float, help="weight of the soft term in kd_loss (default: the dataset's)")
    parser.add_argument("--epochs", type=positive_int, help="epochs for teacher and students alike "
                                                             "(default: the dataset's)")
    parser.add_argument("--evaluate-on", choices=EVALUATION_SPLITS, default="test",
                        help="count errors on the test split (default) or on the validation split, "
                             "the one to choose settings on")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        dataset = data.load(args.data)
    except data.DataUnavailableError as error:  # offline: the message says why and names the digits
        if not args.fallback:
            print(f"{error}\nRun with --data digits for the embedded data, or add --fallback to fall back to it.",
                  file=sys.stderr)
            return 1
        print(f"{error}\nFalling back to the embedded digits (--fallback).", file=sys.stderr)
        dataset = data.digits()

    if dataset.name == "digits":
        # Nets this small gain nothing from a second thread, and lose much when the cores are busy.
        torch.set_num_threads(1)
    settings = default_settings(dataset.name)
    overrides = {"seeds": tuple(range(args.seeds))}
    if args.T is not None:
        overrides["T"] = args.T
    if args.alpha is not None:
        overrides["alpha"] = args.alpha
    if args.epochs is not None:
        overrides.update(teacher_epochs=args.epochs, scratch_epochs=args.epochs, distilled_epochs=args.epochs)
    settings = dataclasses.replace(settings, **overrides)

    try:
        results = run(settings, dataset=dataset, progress=not args.quiet, evaluate_on=args.evaluate_on)
    except ValueError as error:  # a bad --T or --alpha, worded by kdlearn's checks
        parser.error(str(error))
    print(json.dumps(results.to_json(), indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
