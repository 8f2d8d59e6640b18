"""Response, feature and relation distillation, side by side: one teacher, one student, one budget.

    python -m kdlearn.experiments.families            both regimes, seeds 0-2 (about a minute)
    python -m kdlearn.experiments.families --json     per regime and method {"test_errors", "std", "seeds"}
    python -m kdlearn.experiments.families --scan --out kdlearn/experiments/families_scan.json
                                                      how the weights were chosen (validation split only)

    from kdlearn.experiments import families
    results = families.run()
    print(families.format_table(results))

A CNN teacher (models.cnn, channels 32-64, embedding 128: 151k parameters) is trained once per
run on the 987 training digits with their labels. A student CNN with fifteen times fewer
parameters (channels 8-16, embedding 32: 10k) is then trained by each family, from the same
initial weights for the same seed:

    scratch       hard labels only: CE
    response_kd   Hinton et al.'s soft targets: kd_loss = alpha T² KL(p_T || q_T) + (1 - alpha) CE
    hints         FitNets: kd_loss + w · hint_loss(r(block2_s), block2_t), r a learned 1x1 convolution
                  from the student's channels to the teacher's, trained with the student
    attention     attention transfer: CE + w · (AT(block1) + AT(block2)), the teacher's and the
                  student's normalised attention maps matched at both blocks
    cosine        DistilBERT's third term: kd_loss + w · (1 - cos(r(embed_s), embed_t)), r a learned linear map
    rkd           relational KD: CE + w · (RKD-D + 2 RKD-A) on the embeddings (the paper's 25 : 50)

Each feature or relation term is added where its paper adds it: FitNets trains its hints before
a KD stage and DistilBERT sums its cosine term with the soft-target loss, so those two add to
kd_loss (here in one stage, not FitNets' two); attention transfer and RKD report their terms added
to the task's cross-entropy, so those two add to CE. The students' learning rate (one for
every method: they differ in their loss alone), T and alpha, and the weights w are chosen on the
validation split by ``scan`` (shipped as families_scan.json; Settings' defaults are its
choices, and a test holds the two together).

Two regimes. "full": the student trains on all 987 training digits and their labels. "few": the
student sees only 3 labelled digits a class (30 images, 3% of the training set), as in Hinton et
al.'s 3% experiment (speech: 57.0% frame accuracy from soft targets against 44.5% from hard ones),
where the student, too, saw only the 3%; the teacher, trained on everything, gives its outputs and
features on those 30 images. Each seed draws its own 30 (all methods share them), so the spread
over seeds includes which 30 were drawn.

Every net records its errors, on the split being counted, after each epoch: the learning curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdlearn import _validation as check
from kdlearn import data, features, models, training
from kdlearn.experiments import positive_int, read_scan, seed_std
from kdlearn.losses import kd_loss

METHODS = ("scratch", "response_kd", "hints", "attention", "cosine", "rkd")
# What each method adds its term to (the papers' choices; see the module docstring).
BASE = {"scratch": "ce", "response_kd": "kd", "hints": "kd", "attention": "ce", "cosine": "kd", "rkd": "ce"}
REGIMES = ("full", "few")
EVALUATION_SPLITS = ("test", "validation")
# Hinton, Vinyals and Dean 2015, §4 (speech): frame accuracy on the test set.
PAPER_FRAME_ACCURACY = {"baseline, 100% of the training set, hard targets": 58.9,
                        "3% of the training set, hard targets": 44.5,
                        "3% of the training set, soft targets": 57.0}
TEACHER_SEED = 0
# The students start from weights of their own, drawn from seed + STUDENT_SEED_OFFSET.
STUDENT_SEED_OFFSET = 1000
# RKD's angle term weighs twice its distance term, as the paper's 25 and 50.
RKD_ANGLE_PER_DISTANCE = 2.0
SHIPPED_SCAN = Path(__file__).with_name("families_scan.json")
SCAN_COMMAND = "python -m kdlearn.experiments.families --scan"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the outcome. The defaults of student_lr, T, alpha and the four
    weights are the choices of the validation scan (families_scan.json); the rest is fixed by design."""

    seeds: tuple[int, ...] = (0, 1, 2)
    regimes: tuple[str, ...] = REGIMES
    methods: tuple[str, ...] = METHODS
    batch_size: int = 64
    teacher_channels: tuple[int, int] = (32, 64)
    teacher_embedding: int = 128
    teacher_epochs: int = 30
    teacher_lr: float = 3e-3
    student_channels: tuple[int, int] = (8, 16)
    student_embedding: int = 32
    # One optimiser for every method (Adam, cosine decay), its rate the one that suited scratch.
    student_lr: float = 3e-2
    # The same budget for every method: epochs over the student's split (16 batches an epoch
    # with full labels, a single batch with few).
    full_epochs: int = 30
    few_epochs: int = 150
    labels_per_class: int = 3  # the "few" regime: 30 digits, 3% of the 987
    T: float = 16.0
    alpha: float = 0.9
    hint_weight: float = 0.01
    attention_weight: float = 0.1
    cosine_weight: float = 0.01
    rkd_weight: float = 1000.0

    def epochs(self, regime: str) -> int:
        return self.full_epochs if regime == "full" else self.few_epochs


@dataclass
class Results:
    """errors[regime][method]: the errors per seed (in settings.seeds' order) on the split
    evaluated_on, of size test_size; curves[regime][method]: per seed, the errors after each
    epoch (the first entry before training); teacher_errors on the same split."""

    settings: Settings
    evaluated_on: str
    test_size: int
    teacher_errors: int
    errors: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)
    teacher: nn.Module | None = None

    def mean(self, regime: str, method: str) -> float:
        return statistics.fmean(self.errors[regime][method])

    def std(self, regime: str, method: str) -> float:
        """The sample standard deviation over seeds (0 for a single seed)."""
        values = self.errors[regime][method]
        return seed_std(values)

    def mean_curve(self, regime: str, method: str) -> list[float]:
        """The errors after each epoch, averaged over the seeds."""
        return [statistics.fmean(epoch) for epoch in zip(*self.curves[regime][method])]

    def to_json(self) -> dict:
        return {
            "evaluated_on": self.evaluated_on,
            "test_size": self.test_size,
            "teacher": {"test_errors": self.teacher_errors},
            "regimes": {regime: {method: {"test_errors": self.mean(regime, method), "std": self.std(regime, method),
                                          "seeds": len(self.errors[regime][method])}
                                 for method in self.errors[regime]} for regime in self.errors},
            "paper": {"data": "speech (Hinton et al. 2015, §4)", "frame_accuracy_percent": PAPER_FRAME_ACCURACY},
            "settings": _json_settings(self.settings),
        }


def validate(settings: Settings) -> None:
    """A ValueError naming the first setting that cannot be run."""
    if not settings.seeds:
        raise ValueError("seeds must hold at least one seed")
    for name, values, allowed in (("regimes", settings.regimes, REGIMES), ("methods", settings.methods, METHODS)):
        if not values or any(value not in allowed for value in values):
            raise ValueError(f"{name} must be a non-empty selection of {allowed}, got {values!r}")
    for name in ("batch_size", "teacher_epochs", "full_epochs", "few_epochs", "labels_per_class",
                 "teacher_embedding", "student_embedding"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
    for name in ("teacher_lr", "student_lr"):
        if not getattr(settings, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(settings, name)}")
    for name in ("hint_weight", "attention_weight", "cosine_weight", "rkd_weight"):
        value = getattr(settings, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    check.check_temperature(settings.T)
    check.check_unit_interval("alpha", settings.alpha)


def few_labels(split: data.Split, per_class: int, seed: int) -> data.Split:
    """per_class examples of every class of split, drawn by seed, in split's order."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(split.num_classes):
        members = torch.nonzero(split.y == c).flatten()
        if len(members) < per_class:
            raise ValueError(f"labels_per_class={per_class} but class {c} has only {len(members)} examples")
        rows.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    rows = torch.cat(rows).sort().values
    return data.Split(split.x[rows], split.y[rows], split.num_classes)


def train_teacher(dataset: data.Dataset, settings: Settings) -> nn.Module:
    """The teacher CNN, trained on all of dataset.train with its labels."""
    teacher = models.cnn(settings.teacher_channels, settings.teacher_embedding, dataset.num_classes,
                         image_shape=dataset.image_shape, seed=TEACHER_SEED)
    training.train(teacher, dataset.train, epochs=settings.teacher_epochs, lr=settings.teacher_lr,
                   batch_size=settings.batch_size, seed=TEACHER_SEED, progress=False)
    return teacher


def student_and_loss(method: str, teacher: nn.Module, settings: Settings, seed: int,
                     num_classes: int = 10, image_shape: tuple[int, int] = (8, 8)):
    """(student, teacher as the method sees it, loss callable) for one method: the student a
    WithFeatures wrapper (its adapters, if any, train with it) where the method reads features,
    the plain CNN otherwise; ``student.model`` / the student itself is the net to evaluate."""
    net = models.cnn(settings.student_channels, settings.student_embedding, num_classes,
                     image_shape=image_shape, seed=seed + STUDENT_SEED_OFFSET)
    s = settings

    def base(student_logits, teacher_logits, labels):
        if BASE[method] == "ce":
            return F.cross_entropy(student_logits, labels)
        return kd_loss(student_logits, teacher_logits, labels, T=s.T, alpha=s.alpha)

    if method in ("scratch", "response_kd"):
        return net, teacher, base
    if method == "hints":
        names, weight = ["block2"], s.hint_weight
        # The adapter starts from the student's seed too, so a rerun draws the same projection.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + STUDENT_SEED_OFFSET)
            adapters = {"block2": nn.Conv2d(s.student_channels[1], s.teacher_channels[1], 1)}

        def term(student_features, teacher_features):
            return features.hint_loss(student_features["block2"], teacher_features["block2"])
    elif method == "attention":
        names, adapters, weight = ["block1", "block2"], {}, s.attention_weight

        def term(student_features, teacher_features):
            return sum(features.attention_transfer_loss(student_features[name], teacher_features[name])
                       for name in names)
    elif method == "cosine":
        names, weight = ["embed"], s.cosine_weight
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + STUDENT_SEED_OFFSET)
            adapters = {"embed": nn.Linear(s.student_embedding, s.teacher_embedding)}

        def term(student_features, teacher_features):
            return features.cosine_loss(student_features["embed"], teacher_features["embed"])
    elif method == "rkd":
        names, adapters, weight = ["embed"], {}, s.rkd_weight

        def term(student_features, teacher_features):
            st, te = student_features["embed"], teacher_features["embed"]
            return features.rkd_distance_loss(st, te) + RKD_ANGLE_PER_DISTANCE * features.rkd_angle_loss(st, te)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    def loss(student_output, teacher_output, labels):
        (student_logits, student_features), (teacher_logits, teacher_features) = student_output, teacher_output
        return base(student_logits, teacher_logits, labels) + weight * term(student_features, teacher_features)

    return features.WithFeatures(net, names, adapters), features.WithFeatures(teacher, names), loss


def train_student(method: str, split: data.Split, teacher: nn.Module, settings: Settings, seed: int, epochs: int,
                  counted: data.Split | None = None) -> tuple[nn.Module, list[int]]:
    """The student trained by ``method`` on split; returns the plain CNN and, when ``counted`` is
    given, its errors on counted before training and after each epoch."""
    student, taught_by, loss = student_and_loss(method, teacher, settings, seed, split.num_classes,
                                                _image_shape(split))
    net = student.model if isinstance(student, features.WithFeatures) else student
    curve: list[int] = []
    batches = math.ceil(len(split.y) / settings.batch_size)
    step = 0

    def loss_with_curve(student_output, teacher_output, labels):
        # train() calls the loss once a batch: at the first batch of an epoch the weights are
        # those the previous epoch left, which is where the curve is read.
        nonlocal step
        if counted is not None and step % batches == 0:
            curve.append(training.test_errors(net, counted))
        step += 1
        return loss(student_output, teacher_output, labels)

    training.train(student, split, teacher=taught_by, loss=loss_with_curve, epochs=epochs, lr=settings.student_lr,
                   batch_size=settings.batch_size, seed=seed, progress=False)
    if counted is not None:
        curve.append(training.test_errors(net, counted))
    return net, curve


def run(settings: Settings | None = None, *, dataset: data.Dataset | None = None, evaluate_on: str = "test",
        progress: bool = True, teacher: nn.Module | None = None) -> Results:
    """Train the teacher (unless given), then every method's student for every regime and seed;
    count errors on the test split (or, evaluate_on="validation", the validation split)."""
    settings = settings or Settings()
    validate(settings)
    check.check_choice("evaluate_on", evaluate_on, EVALUATION_SPLITS)
    dataset = dataset or data.digits()
    counted = getattr(dataset, evaluate_on)
    teacher = teacher or train_teacher(dataset, settings)
    results = Results(settings, evaluate_on, len(counted.y), training.test_errors(teacher, counted), teacher=teacher)
    total = len(settings.regimes) * len(settings.methods) * len(settings.seeds)
    bar = tqdm(total=total, desc="families", unit="net", disable=not progress, leave=False)
    for regime in settings.regimes:
        results.errors[regime] = {method: [] for method in settings.methods}
        results.curves[regime] = {method: [] for method in settings.methods}
        for seed in settings.seeds:
            split = dataset.train if regime == "full" else few_labels(dataset.train, settings.labels_per_class, seed)
            for method in settings.methods:
                bar.set_postfix_str(f"{regime} labels, {method}, seed {seed}")
                net, curve = train_student(method, split, teacher, settings, seed, settings.epochs(regime), counted)
                results.errors[regime][method].append(curve[-1])
                results.curves[regime][method].append(curve)
                bar.update()
    bar.close()
    return results


REGIME_NAMES = {"full": "all 987 labels", "few": "3 labels a class (30)"}


def format_table(results: Results) -> str:
    """Per regime, each method's errors (mean ± sample std over seeds, and the errors per seed)
    on the split counted, with the teacher's for reference."""
    what = f"{results.evaluated_on} errors of {results.test_size}"
    lines = [f"teacher CNN {'-'.join(map(str, results.settings.teacher_channels))}: {results.teacher_errors} {what}",
             f"student CNN {'-'.join(map(str, results.settings.student_channels))}, seeds "
             f"{', '.join(map(str, results.settings.seeds))}:"]
    for regime, per_method in results.errors.items():
        lines.append(f"\n{REGIME_NAMES[regime]}: {what} (mean ± std, per seed)")
        for method in per_method:
            lines.append(f"  {method:<12} {BASE[method]:>2}  {results.mean(regime, method):7.1f} ± "
                         f"{results.std(regime, method):5.1f}   {' '.join(map(str, per_method[method]))}")
    return "\n".join(lines)


# --- how the defaults were chosen: a scan on the validation split ---------------------------------

SCAN_SEEDS = (100, 101, 102)
# Which Settings fields each method's scan varies, and over what. The scan runs in this order and
# keeps each choice for the methods after it: the learning rate chosen from scratch serves every
# method (the methods differ in their loss alone), and response_kd's T and alpha serve the methods
# that add to kd_loss.
SCAN_GRID = {
    "scratch": {"student_lr": (3e-3, 1e-2, 3e-2, 1e-1)},
    "response_kd": {"T": (2.0, 4.0, 8.0, 16.0), "alpha": (0.5, 0.9)},
    "hints": {"hint_weight": (0.01, 0.1, 1.0, 10.0)},
    "attention": {"attention_weight": (0.1, 1.0, 10.0, 100.0)},
    "cosine": {"cosine_weight": (0.01, 0.1, 1.0, 10.0)},
    "rkd": {"rkd_weight": (1.0, 10.0, 100.0, 1000.0)},
}
SCAN_RULE = ("per method, the lowest score: the validation errors averaged over the seeds, summed over the two "
             "regimes; a tie goes to the value listed first")


def scan(dataset: data.Dataset | None = None, seeds: tuple[int, ...] = SCAN_SEEDS, start: Settings | None = None,
         grid: dict[str, dict[str, tuple]] | None = None, progress: bool = True) -> dict:
    """Choose each method's settings on the validation split (seeds of the scan's own), method
    by method in grid's order; returns the scan as a JSON-ready dict, with "chosen"."""
    dataset = dataset or data.digits()
    grid = SCAN_GRID if grid is None else grid
    current = dataclasses.replace(start or Settings(), seeds=tuple(seeds))
    validate(current)
    started = time.perf_counter()
    teacher = train_teacher(dataset, current)
    records = []
    combinations = {method: [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
                    for method, values in grid.items()}
    bar = tqdm(total=sum(map(len, combinations.values())), desc="families scan", unit="setting",
               disable=not progress, leave=False)
    for method, options in combinations.items():
        configurations = []
        for values in options:
            settings = dataclasses.replace(current, methods=(method,), **values)
            result = run(settings, dataset=dataset, evaluate_on="validation", progress=False, teacher=teacher)
            per_regime = {regime: result.errors[regime][method] for regime in settings.regimes}
            configurations.append({"values": values, "errors": per_regime,
                                   "score": sum(statistics.fmean(e) for e in per_regime.values())})
            bar.update()
        best = min(range(len(configurations)), key=lambda i: (configurations[i]["score"], i))
        chosen = configurations[best]["values"]
        records.append({"method": method, "grid": {k: list(v) for k, v in grid[method].items()},
                        "configurations": configurations, "chosen": chosen})
        current = dataclasses.replace(current, **chosen)
    bar.close()
    return {
        "about": "How kdlearn.experiments.families' T, alpha and weights were chosen: validation errors only.",
        "command": f"{SCAN_COMMAND} --out kdlearn/experiments/families_scan.json",
        "evaluated_on": "validation",
        "validation_size": len(dataset.validation.y),
        "teacher_validation_errors": training.test_errors(teacher, dataset.validation),
        "seeds": list(seeds),
        "rule": SCAN_RULE,
        "methods": records,
        "chosen": {name: value for record in records for name, value in record["chosen"].items()},
        "seconds": round(time.perf_counter() - started),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads()},
    }


def load_scan(path: str | Path | None = None) -> dict:
    """The scan as scan() wrote it (default: the shipped one, the basis of Settings' defaults)."""
    return read_scan(SHIPPED_SCAN if path is None else path, SCAN_COMMAND)


def _image_shape(split: data.Split) -> tuple[int, int]:
    side = math.isqrt(split.x.shape[1])
    return side, side


def _json_settings(settings: Settings) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(settings).items()}


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.experiments.families") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Response, feature and relation distillation of one CNN student from one CNN teacher, "
                    "with all labels and with 3 labels a class: test errors, mean ± std over seeds. "
                    "The weights were chosen on the validation split (--scan).")
    parser.add_argument("--seeds", type=positive_int, default=len(Settings().seeds),
                        help="how many seeds, 0 .. N-1 (default 3)")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES),
                        help="full: all labels; few: 3 labelled digits a class (default: both)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="which methods (default: all)")
    parser.add_argument("--epochs", type=positive_int,
                        help="the students' epochs in every regime (default: 30 with full labels, 150 with few)")
    parser.add_argument("--evaluate-on", choices=EVALUATION_SPLITS, default="test",
                        help="count errors on the test split (default) or the validation split")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--scan", action="store_true",
                        help="instead: choose T, alpha and the weights on the validation split and print the scan")
    parser.add_argument("--out", type=Path, help="with --scan: also write the scan as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.out is not None and not args.scan:
        parser.error("--out goes with --scan")
    # Nets this small gain nothing from a second thread, and a single one makes reruns repeat exactly.
    torch.set_num_threads(1)
    if args.scan:
        result = scan(progress=not args.quiet)
        for record in result["methods"]:
            for c in record["configurations"]:
                print(f"{record['method']:<12} {c['values']}  validation errors {c['errors']}  sum of means "
                      f"{c['score']:.1f}{'  *' if c['values'] == record['chosen'] else ''}")
        print(f"chosen: {result['chosen']}")
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print(f"written to {args.out}")
        return 0
    overrides = {"seeds": tuple(range(args.seeds)), "regimes": tuple(args.regimes), "methods": tuple(args.methods)}
    if args.epochs is not None:
        overrides.update(full_epochs=args.epochs, few_epochs=args.epochs)
    results = run(dataclasses.replace(Settings(), **overrides), evaluate_on=args.evaluate_on,
                  progress=not args.quiet)
    print(json.dumps(results.to_json(), indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
