"""Who teaches whom (lesson 07): one student, one budget, seven ways of teaching it, on the digits.

    python -m kdlearn.experiments.schemes                 the table, seeds 0-2 (about a minute on one core)
    python -m kdlearn.experiments.schemes --seeds 6       more seeds
    python -m kdlearn.experiments.schemes --json          per method {"test_errors": mean, "std": s, "seeds": n}
    python -m kdlearn.experiments.schemes --scan --out kdlearn/experiments/schemes_scan.json
                                                          redo the validation scan behind Settings' defaults

    from kdlearn.experiments import schemes
    results = schemes.run()
    print(schemes.format_table(results))

The student is always the same MLP, 64-20-20-10 (lesson 02's small net), trained for the same
number of epochs at the same learning rate, and it starts from the same initial weights in every
method of a seed. What changes is who teaches it (kdlearn.schemes has the pieces):

  scratch        the labels alone (cross-entropy)
  response_kd    Hinton's kd_loss from a trained 64-256-256-10 teacher (dropout 0.5)
  born_again     generations of the student's own size, each distilled from the one before, the
                 first from the student trained from scratch (Furlanello et al. 2018); the row is
                 the last generation, born_again_gen<k> each one
  byot           "be your own teacher" (Zhang et al. 2019): an auxiliary classifier on the first
                 hidden layer learns from the labels and the net's own last layer, as it trains
  mutual         two students trained together, each from the labels and the other (Zhang et al.
                 2018); the row is the mean of the two
  multi_teacher  kd from an ensemble of ``ensemble_size`` nets of the student's size trained from
                 scratch (their probabilities averaged, uniform weights): Hinton et al.'s speech
                 experiment, where an ensemble of 10 distilled into one net of the same size
  ta_chain       teacher -> assistant 64-64-64-10 -> student (Mirzadeh et al. 2020), against
                 response_kd, which is the direct teacher -> student at the same large size gap

Reference rows, not methods: "teacher", "assistant" (the chain's middle net) and "ensemble" (the
averaged prediction of the multi_teacher's teachers).

Fixed by design: the widths, lesson 02's (models.WIDTHS["digits"]); the learning rate 5e-2 that
hinton_tuning chose on validation for this student, from scratch and distilled alike; one budget,
``epochs`` for every student net (mutual's two students each get it; a born-again generation is
a new student with the same budget); the teacher's recipe, hinton's. Chosen on the validation
split by scan() (shipped as schemes_scan.json; Settings' defaults are its choices, a test holds
them together): T and alpha for the kd schemes, mutual learning's T, and byot's learning rate and
alpha (its extra head makes the net less stable at the others' rate).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from kdlearn import _validation as check
from kdlearn import data, models, schemes, training
from kdlearn.experiments import positive_int, read_scan, seed_std
from kdlearn.experiments.hinton import EVALUATION_SPLITS, evaluation_split

METHODS = ("scratch", "response_kd", "born_again", "byot", "mutual", "multi_teacher", "ta_chain")
REFERENCES = ("teacher", "assistant", "ensemble")
# Hinton, Vinyals and Dean 2015, table 1 (speech, frame accuracy): a single model, an ensemble of
# 10 such models, and one model of the same size distilled from the ensemble.
PAPER_SPEECH = {"single model": 58.9, "ensemble of 10": 61.1, "distilled single model": 60.8}
# The students start from weights drawn from seed + STUDENT_SEED_OFFSET (+ k for the k-th net of a
# generation chain, an ensemble or a cohort), as in kdlearn.experiments.hinton.
STUDENT_SEED_OFFSET = 1000
SHIPPED_SCAN = Path(__file__).with_name("schemes_scan.json")
SCAN_COMMAND = "python -m kdlearn.experiments.schemes --scan"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the outcome; the defaults of T, alpha, mutual_T, byot_lr and
    byot_alpha are the validation scan's choices (schemes_scan.json), the rest fixed by design."""

    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    teacher_hidden: tuple[int, ...] = models.WIDTHS["digits"]["teacher"]
    teacher_dropout: float = 0.5
    teacher_epochs: int = 120
    teacher_lr: float = 3e-3
    student_hidden: tuple[int, ...] = models.WIDTHS["digits"]["small_student"]
    assistant_hidden: tuple[int, ...] = (64, 64)
    epochs: int = 100
    lr: float = 5e-2
    T: float = 4.0
    alpha: float = 0.9
    generations: int = 2
    ensemble_size: int = 4
    mutual_T: float = 1.0
    byot_heads: tuple[str, ...] = ("1",)  # the first hidden layer's ReLU in models.mlp's Sequential
    byot_lr: float = 1e-2
    byot_alpha: float = 0.9


@dataclass
class Results:
    """Errors per seed of every method and reference net (``errors[name]``, in settings.seeds'
    order) on the split evaluated_on, of ``test_size`` images."""

    settings: Settings
    test_size: int
    evaluated_on: str = "test"
    errors: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, name: str) -> float:
        return statistics.fmean(self.errors[name])

    def std(self, name: str) -> float:
        """The sample standard deviation over seeds (0 for one seed)."""
        return seed_std(self.errors[name])

    def names(self) -> list[str]:
        """Methods first, then the generations, then the reference nets."""
        generations = [f"born_again_gen{k}" for k in range(1, self.settings.generations + 1)]
        return [*METHODS, *generations, *REFERENCES]

    def to_json(self) -> dict:
        return {name: {"test_errors": self.mean(name), "std": self.std(name), "seeds": len(self.errors[name])}
                for name in self.names()}


def _mlp(dataset: data.Dataset, hidden, seed: int, dropout: float = 0.0) -> nn.Module:
    return models.mlp(dataset.train.x.shape[1], hidden, dataset.num_classes, dropout=dropout, seed=seed)


def run(settings: Settings | None = None, *, dataset: data.Dataset | None = None, progress: bool = True,
        evaluate_on: str = "test", methods: tuple[str, ...] = METHODS) -> Results:
    """Train every method of ``methods`` (and the nets they need) for each seed and count errors on
    the test split (evaluate_on="validation" counts them on the validation split, for the scan)."""
    settings = settings or Settings()
    _check_settings(settings)
    check.check_choice("evaluate_on", evaluate_on, EVALUATION_SPLITS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty selection of {METHODS}, got {methods!r}")
    dataset = dataset or data.digits()
    counted = evaluation_split(dataset, evaluate_on)
    results = Results(settings, test_size=len(counted.y), evaluated_on=evaluate_on)
    bar = tqdm(total=len(settings.seeds) * len(methods), desc="schemes", unit="method", disable=not progress,
               leave=False)
    for seed in settings.seeds:
        for name, errors in _one_seed(dataset, settings, seed, counted, methods, bar).items():
            results.errors.setdefault(name, []).append(errors)
    bar.close()
    return results


def _one_seed(dataset, settings: Settings, seed: int, counted, methods, bar) -> dict[str, float]:
    s, errors = settings, {}
    first = seed + STUDENT_SEED_OFFSET
    common = dict(epochs=s.epochs, batch_size=s.batch_size, seed=seed, progress=False)
    kd = dict(common, lr=s.lr, T=s.T, alpha=s.alpha)

    def student(k: int = 0) -> nn.Module:
        return _mlp(dataset, s.student_hidden, first + k)

    def scratch(k: int = 0) -> nn.Module:
        net = student(k)
        training.train(net, dataset.train, lr=s.lr, **common)
        return net

    def step(name: str) -> None:
        bar.set_postfix_str(f"seed {seed}: {name}")
        bar.update()

    teacher = None
    if {"response_kd", "ta_chain"} & set(methods):
        teacher = _mlp(dataset, s.teacher_hidden, seed, dropout=s.teacher_dropout)
        training.train(teacher, dataset.train, epochs=s.teacher_epochs, lr=s.teacher_lr, batch_size=s.batch_size,
                       seed=seed, progress=False)
        errors["teacher"] = training.test_errors(teacher, counted)
    from_scratch = scratch() if {"scratch", "born_again", "multi_teacher"} & set(methods) else None
    for method in methods:
        if method == "scratch":
            errors["scratch"] = training.test_errors(from_scratch, counted)
        elif method == "response_kd":
            net = student()
            training.train(net, dataset.transfer, teacher=teacher, loss="kd", **kd)
            errors["response_kd"] = training.test_errors(net, counted)
        elif method == "born_again":
            generations = [student(k) for k in range(1, s.generations + 1)]
            schemes.distillation_chain(from_scratch, generations, dataset.transfer, **kd)
            for k, net in enumerate(generations, start=1):
                errors[f"born_again_gen{k}"] = training.test_errors(net, counted)
            errors["born_again"] = errors[f"born_again_gen{s.generations}"]
        elif method == "byot":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(first)  # the heads' initial weights
                net = schemes.with_auxiliary_heads(student(), s.byot_heads, dataset.train.x[:1])
            training.train(net, dataset.train, lr=s.byot_lr, loss=lambda out, _, y: schemes.self_distillation_loss(
                out, y, T=s.T, alpha=s.byot_alpha), **common)
            errors["byot"] = training.test_errors(net.model, counted)
        elif method == "mutual":
            cohort = schemes.Cohort([student(0), student(1)])
            training.train(cohort, dataset.train, lr=s.lr, loss=lambda out, _, y: schemes.mutual_learning_loss(
                out, y, T=s.mutual_T), **common)
            errors["mutual"] = statistics.fmean(training.test_errors(m, counted) for m in cohort.members)
        elif method == "multi_teacher":
            members = [from_scratch] + [scratch(k) for k in range(1, s.ensemble_size)]
            ensemble = schemes.Ensemble(members, T=s.T)
            errors["ensemble"] = training.test_errors(ensemble, counted)
            net = student()
            training.train(net, dataset.transfer, teacher=ensemble, loss="kd", **kd)
            errors["multi_teacher"] = training.test_errors(net, counted)
        elif method == "ta_chain":
            assistant, net = _mlp(dataset, s.assistant_hidden, first), student()
            schemes.distillation_chain(teacher, [assistant, net], dataset.transfer, **kd)
            errors["assistant"] = training.test_errors(assistant, counted)
            errors["ta_chain"] = training.test_errors(net, counted)
        step(method)
    return errors


def _check_settings(s: Settings) -> None:
    check.check_temperature(s.T)
    check.check_unit_interval("alpha", s.alpha)
    check.check_unit_interval("byot_alpha", s.byot_alpha)
    if s.mutual_T <= 0:
        raise ValueError(f"mutual_T must be > 0, got {s.mutual_T}")
    for name in ("generations", "ensemble_size", "epochs", "teacher_epochs"):
        check.check_positive_int(name, getattr(s, name))
    if not s.seeds:
        raise ValueError("seeds must hold at least one seed")


# --- the claims ------------------------------------------------------------------------------------


def born_again_wins(results: Results, generation: int = 1) -> list[bool]:
    """Per seed, whether born-again generation ``generation`` makes fewer errors than its teacher,
    the same-size net it was distilled from (generation 0 is the student from scratch)."""
    teacher = results.errors["scratch"] if generation == 1 else results.errors[f"born_again_gen{generation - 1}"]
    return [g < t for g, t in zip(results.errors[f"born_again_gen{generation}"], teacher)]


def share_of_ensemble_gain(single: float, ensemble: float, distilled: float) -> float:
    """(distilled - single) / (ensemble - single): how much of an ensemble's gain over a single net
    a distilled single net keeps, in any measure where both differences have the same sign
    (accuracies, or errors)."""
    return (distilled - single) / (ensemble - single) if ensemble != single else float("nan")


def paper_share_of_ensemble_gain() -> float:
    p = PAPER_SPEECH
    return share_of_ensemble_gain(p["single model"], p["ensemble of 10"], p["distilled single model"])


# --- the report ------------------------------------------------------------------------------------


DESCRIPTIONS = {
    "scratch": "labels only",
    "response_kd": "kd from the teacher (direct)",
    "born_again": "born-again, last generation",
    "byot": "be your own teacher",
    "mutual": "mutual learning, 2 students",
    "multi_teacher": "kd from the ensemble",
    "ta_chain": "teacher -> assistant -> student",
    "teacher": "reference: the teacher",
    "assistant": "reference: the assistant",
    "ensemble": "reference: the ensemble",
}


def format_table(results: Results) -> str:
    """Every method's errors per seed and mean ± sample std, then the two claims and the ensemble
    beside Hinton et al.'s speech figures."""
    s = results.settings
    rows = []
    for name in results.names():
        description = DESCRIPTIONS.get(name, f"born-again generation {name.rsplit('gen', 1)[-1]}")
        per_seed = " ".join(f"{e:g}" for e in results.errors[name])
        rows.append((name, description, per_seed, f"{results.mean(name):6.1f} ± {results.std(name):4.1f}",
                     f"{100 * results.mean(name) / results.test_size:5.2f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    header = ("method", "", "errors per seed", "mean ± std", "error")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    lines = [f"Who teaches whom on the digits: {results.evaluated_on} errors of {results.test_size} images, student "
             f"64-{'-'.join(map(str, s.student_hidden))}-10, {s.epochs} epochs, seeds "
             f"{', '.join(map(str, s.seeds))} (mean ± sample std over seeds)", "",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    wins = born_again_wins(results)
    kept = share_of_ensemble_gain(results.mean("scratch"), results.mean("ensemble"), results.mean("multi_teacher"))
    lines += [
        "",
        f"born-again generation 1 beats its same-size teacher (the net from scratch) on {sum(wins)} of {len(wins)} "
        f"seeds; mean errors {results.mean('born_again_gen1'):.1f} against {results.mean('scratch'):.1f}",
        f"teacher-assistant chain {results.mean('ta_chain'):.1f} against direct kd {results.mean('response_kd'):.1f} "
        f"mean errors",
        f"ensemble of {s.ensemble_size}: single net {results.mean('scratch'):.1f}, ensemble "
        f"{results.mean('ensemble'):.1f}, distilled {results.mean('multi_teacher'):.1f} errors: it keeps "
        f"{kept:.0%} of the ensemble's gain (Hinton et al., speech: 58.9% -> 61.1% -> 60.8% frame accuracy, "
        f"{paper_share_of_ensemble_gain():.0%})",
        f"settings: {_describe(dataclasses.asdict(s), skip={'seeds'})}",
    ]
    return "\n".join(lines)


def _describe(values: dict, skip=frozenset()) -> str:
    return ", ".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"
                     for k, v in values.items() if k not in skip)


# --- the validation scan ---------------------------------------------------------------------------


SCAN_SEEDS = (100, 101, 102)
# Stage by stage, each at the choices of the stages before it: (name, method it measures, grid).
SCAN_STAGES = (
    ("kd", "response_kd", {"T": (2.0, 4.0, 8.0), "alpha": (0.5, 0.9)}),
    ("mutual", "mutual", {"mutual_T": (1.0, 2.0, 4.0)}),
    ("byot", "byot", {"byot_lr": (1e-2, 2e-2, 5e-2), "byot_alpha": (0.5, 0.9)}),
)
SCAN_RULE = "lowest mean validation errors over the scan's seeds; a tie goes to the configuration listed first"


def scan(dataset: data.Dataset | None = None, seeds: tuple[int, ...] = SCAN_SEEDS, base: Settings | None = None,
         progress: bool = True) -> dict:
    """Choose T and alpha (on response_kd), mutual_T (on mutual) and byot_lr and byot_alpha (on
    byot), in that order, on the validation split with seeds of the scan's own; the JSON-ready
    result holds every configuration's validation errors per seed, and the choices ("chosen").
    The stages read none of the fields they choose from ``base``, so a rerun gives the same scan
    whatever the defaults are."""
    dataset = dataset or data.digits()
    current = dataclasses.replace(base or Settings(), seeds=tuple(seeds))
    started, stages = time.perf_counter(), []
    for name, method, grid in SCAN_STAGES:
        configurations = []
        for values in itertools.product(*grid.values()):
            chosen = dict(zip(grid, values))
            result = run(dataclasses.replace(current, **chosen), dataset=dataset, progress=progress,
                         evaluate_on="validation", methods=(method,))
            errors = result.errors[method]
            configurations.append({"values": chosen, "errors": errors, "mean": statistics.fmean(errors),
                                   "std": seed_std(errors)})
        best = min(range(len(configurations)), key=lambda i: (configurations[i]["mean"], i))
        stages.append({"name": name, "measures": method, "grid": {k: list(v) for k, v in grid.items()},
                       "configurations": configurations, "chosen": configurations[best]["values"]})
        current = dataclasses.replace(current, **configurations[best]["values"])
    return {
        "about": "How kdlearn.experiments.schemes' settings were chosen: validation errors only.",
        "command": f"{SCAN_COMMAND} --out kdlearn/experiments/schemes_scan.json",
        "evaluated_on": "validation",
        "sizes": {"train": len(dataset.train), "validation": len(dataset.validation)},
        "seeds": list(seeds),
        "rule": SCAN_RULE,
        "stages": stages,
        "chosen": {k: v for stage in stages for k, v in stage["chosen"].items()},
        "seconds": round(time.perf_counter() - started),
    }


def load_scan(path: str | Path | None = None) -> dict:
    """The validation scan: the shipped one (schemes_scan.json), or the JSON at ``path``."""
    return read_scan(SHIPPED_SCAN if path is None else path, SCAN_COMMAND)


def format_scan(scan_result: dict) -> str:
    lines = [f"Validation scan ({scan_result['sizes']['validation']} images, seeds "
             f"{', '.join(map(str, scan_result['seeds']))}); rule: {scan_result['rule']}."]
    for stage in scan_result["stages"]:
        lines += ["", f"{stage['name']} (measures {stage['measures']}):"]
        for c in stage["configurations"]:
            mark = "*" if c["values"] == stage["chosen"] else " "
            lines.append(f" {mark} {_describe(c['values'])}: {' '.join(f'{e:g}' for e in c['errors'])}  "
                         f"mean {c['mean']:.2f} ± {c['std']:.2f}")
    lines += ["", f"chosen: {_describe(scan_result['chosen'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.experiments.schemes") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Who teaches whom: scratch, kd from a teacher, born-again generations, be your own "
                               "teacher, mutual learning, an ensemble of teachers and a teacher-assistant chain, "
                               "on the same student and budget (the digits).")
    parser.add_argument("--seeds", type=positive_int, default=3, help="how many seeds, 0 .. N-1 (default 3)")
    parser.add_argument("--epochs", type=positive_int,
                        help="epochs for every net, teacher included (default: the settings'; for quick trials)")
    parser.add_argument("--evaluate-on", choices=EVALUATION_SPLITS, default="test",
                        help="count errors on the test split (default) or the validation split")
    parser.add_argument("--json", action="store_true",
                        help='print per method {"test_errors": mean, "std": s, "seeds": n} as JSON')
    parser.add_argument("--scan", action="store_true", help="redo the validation scan behind the defaults instead")
    parser.add_argument("--out", type=Path, help="with --scan: write the scan's JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.out is not None and not args.scan:
        parser.error("--out writes the scan: pass it with --scan")
    # Nets this small gain nothing from a second thread; one thread also makes reruns repeat exactly.
    torch.set_num_threads(1)
    settings = Settings(seeds=tuple(range(args.seeds)))
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs, teacher_epochs=args.epochs)
    if args.scan:
        result = scan(base=settings, progress=not args.quiet)
        print(format_scan(result))
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print(f"\nwritten to {args.out}")
        return 0
    results = run(settings, progress=not args.quiet, evaluate_on=args.evaluate_on)
    print(json.dumps(results.to_json(), indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
