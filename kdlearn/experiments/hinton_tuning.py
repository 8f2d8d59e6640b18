"""How the digits settings of kdlearn.experiments.hinton were chosen: a scan on the validation split.

    python -m kdlearn.experiments.hinton_tuning                  the scan, printed (minutes on one core)
    python -m kdlearn.experiments.hinton_tuning --out kdlearn/experiments/hinton_tuning.json
                                                                 ... and written where it ships

    from kdlearn.experiments import hinton_tuning
    scan = hinton_tuning.load()                        # the shipped scan, a dict (the JSON)
    print(hinton_tuning.format_stage(scan, "scratch"))  # one stage as a table
    print(hinton_tuning.format_scan(scan))              # every stage

The settings chosen by measurement (learning rates, epochs, the teacher's dropout, T and alpha)
are chosen here, on the validation split only: no test image is looked at. The scan is
coordinate-wise: STAGES, in order, each scans a small grid of a few fields with every other
field at its current value, keeps its choice, and hands it to the next stage. It starts from
START, the settings the experiment had before this scan, and never reads Settings' defaults,
so that rerunning it gives the same scan whatever the defaults are now.

Each configuration is trained on seeds of its own (FIRST_SEED onwards, none of the seeds the
test figures are reported on), so that no setting is chosen for how well it suits the initial
weights that the test figures then use; its validation errors are kept per seed, with their
mean and sample std. A stage chooses by RULE: the lowest mean validation errors of the net it
measures; a tie goes to fewer epochs, then to the configuration listed first in the grid.

The teacher stages choose the teacher by its own validation errors (the best teacher, as in the
paper, not the one that happens to teach the current student best); they also record, for
information only, the validation errors of a student distilled from each teacher with START's
student settings. The student-from-scratch stage scans epochs up to the distilled student's
longest budget, so that the scan answers whether the student from scratch gains from training
as long as the distilled one.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kdlearn import data, training
from kdlearn.experiments import hinton, positive_int, seed_std

# The settings before this scan (chosen then by looking at test errors): its starting point.
START = hinton.Settings(teacher_lr=3e-3, teacher_dropout=0.5, teacher_epochs=60, scratch_lr=5e-2, scratch_epochs=50,
                        distilled_lr=3e-2, distilled_epochs=150, T=4.0, alpha=0.9)
FIRST_SEED = 100
DEFAULT_SEEDS = 6
RULE = ("lowest mean validation errors over the seeds; a tie goes to fewer epochs, then to the "
        "configuration listed first in the grid")
METHOD = ("coordinate-wise: the stages run in order, each scanning its grid with every other setting at "
          "its current value (START, then earlier stages' choices), once, without a second pass")
SHIPPED = Path(__file__).with_name("hinton_tuning.json")


@dataclass(frozen=True)
class Stage:
    """One step of the scan: every combination of `grid` (Settings field -> values), judged by the
    validation errors of the net `measures` ("teacher", "scratch" or "distilled")."""

    name: str
    measures: str
    grid: dict[str, tuple]
    question: str


STAGES = (
    Stage("teacher", "teacher", {"teacher_lr": (1e-3, 3e-3, 1e-2), "teacher_dropout": (0.2, 0.5)},
          "the teacher's learning rate and dropout"),
    Stage("teacher_epochs", "teacher", {"teacher_epochs": (30, 60, 120)}, "how long the teacher trains"),
    Stage("scratch", "scratch", {"scratch_lr": (1e-2, 3e-2, 5e-2, 1e-1), "scratch_epochs": (30, 50, 100, 150)},
          "the student from scratch: learning rate and epochs, up to the distilled student's longest budget"),
    Stage("distilled", "distilled",
          {"distilled_lr": (1e-2, 3e-2, 5e-2, 1e-1), "distilled_epochs": (30, 50, 100, 150)},
          "the distilled student: learning rate and epochs, at START's T and alpha"),
    Stage("temperature", "distilled", {"T": (1.0, 2.0, 4.0, 8.0), "alpha": (0.5, 0.9, 1.0)},
          "the distillation temperature T and the soft term's weight alpha"),
)


def scan(dataset: data.Dataset | None = None, seeds: tuple[int, ...] | None = None,
         stages: tuple[Stage, ...] = STAGES, start: hinton.Settings = START, progress: bool = True) -> dict:
    """Run the stages in order on dataset's validation split (default: the digits) and return the
    scan as a JSON-ready dict: per stage, every configuration's validation errors per seed, mean
    and std, and the choice; then the choices together ("chosen") and, as a check, hinton.run
    with them on the validation split ("chosen_on_validation")."""
    dataset = dataset or data.digits()
    seeds = tuple(range(FIRST_SEED, FIRST_SEED + DEFAULT_SEEDS)) if seeds is None else tuple(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    for stage in stages:
        if stage.measures not in hinton.MODELS:
            raise ValueError(f"stage {stage.name!r}: measures must be one of {hinton.MODELS}, got {stage.measures!r}")
        unknown = set(stage.grid) - {f.name for f in dataclasses.fields(hinton.Settings)}
        if unknown:
            raise ValueError(f"stage {stage.name!r}: grid names fields Settings does not have: {sorted(unknown)}")
    validation = hinton.evaluation_split(dataset, "validation")
    teachers: dict[tuple, torch.nn.Module] = {}  # later stages reuse the teachers already trained

    def teacher(settings: hinton.Settings, seed: int) -> torch.nn.Module:
        key = (settings.teacher_hidden, settings.teacher_dropout, settings.teacher_jitter, settings.teacher_epochs,
               settings.teacher_lr, settings.batch_size, seed)
        if key not in teachers:
            teachers[key] = hinton.train_teacher(dataset, settings, seed)
        return teachers[key]

    total = sum(len(seeds) * len(list(_combinations(stage.grid))) for stage in stages)
    bar = tqdm(total=total, desc="hinton_tuning", unit="run", disable=not progress, leave=False)
    current, records, started = start, [], time.perf_counter()
    for stage in stages:
        configurations = []
        for values in _combinations(stage.grid):
            bar.set_postfix_str(f"{stage.name}: {_describe(values)}")
            settings = dataclasses.replace(current, **values)
            errors, taught = [], []
            for seed in seeds:
                if stage.measures == "teacher":
                    net = teacher(settings, seed)
                    # For information: how well this teacher teaches a student with START's settings.
                    pupil = hinton.train_student(dataset, _student_part(settings, start), seed, teacher=net)
                    taught.append(training.test_errors(pupil, validation))
                elif stage.measures == "scratch":
                    net = hinton.train_student(dataset, settings, seed)
                else:
                    net = hinton.train_student(dataset, settings, seed, teacher=teacher(settings, seed))
                errors.append(training.test_errors(net, validation))
                bar.update()
            configuration = {"values": values, **_summary(errors)}
            if taught:
                configuration["distilled_from_it"] = _summary(taught)
            configurations.append(configuration)
        chosen = configurations[choose(configurations)]["values"]
        records.append({"name": stage.name, "question": stage.question, "measures": stage.measures,
                        "grid": {name: list(values) for name, values in stage.grid.items()},
                        "fixed": _json_settings(current, exclude=set(stage.grid)),
                        "configurations": configurations, "chosen": chosen})
        current = dataclasses.replace(current, **chosen)
    bar.close()
    check_run = hinton.run(dataclasses.replace(current, seeds=seeds), dataset=dataset, progress=False,
                           evaluate_on="validation").to_json()
    return {
        "about": "How kdlearn.experiments.hinton's digits settings were chosen: validation errors only.",
        "command": f"python -m kdlearn.experiments.hinton_tuning --seeds {len(seeds)} "
                   f"--out kdlearn/experiments/hinton_tuning.json",
        "data": dataset.name,
        "evaluated_on": "validation",
        "sizes": {"train": len(dataset.train), "validation": len(validation), "test (not used)": len(dataset.test)},
        "seeds": list(seeds),
        "method": METHOD,
        "rule": RULE,
        "start": _json_settings(start, exclude={"seeds"}),
        "stages": records,
        "chosen": {name: value for record in records for name, value in record["chosen"].items()},
        "chosen_on_validation": {key: check_run[key] for key in ("models", "gap_closed")},
        "seconds": round(time.perf_counter() - started),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads()},
    }


def choose(configurations: list[dict]) -> int:
    """The index of the configuration RULE picks: the lowest mean errors; ties to fewer epochs,
    then to the first listed."""
    if not configurations:
        raise ValueError("configurations must not be empty")

    def epochs(values: dict) -> int:
        return sum(value for name, value in values.items() if name.endswith("_epochs"))

    return min(range(len(configurations)),
               key=lambda i: (configurations[i]["mean"], epochs(configurations[i]["values"]), i))


def load(path: str | Path | None = None) -> dict:
    """The scan as written by scan() (default: the one shipped beside this module, the basis of
    hinton.Settings' defaults): "stages" (each with its "configurations", their "errors" per
    seed, "mean", "std", and the "chosen" values), "chosen" (every choice), "seeds", "rule",
    "method", "sizes" and "chosen_on_validation"."""
    path = SHIPPED if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no scan at {path}; write one with: python -m kdlearn.experiments.hinton_tuning "
                                f"--out {path}") from error
    return json.loads(text)


def format_stage(scan_result: dict, name: str) -> str:
    """One stage of a scan as a table: each configuration's validation errors per seed, their
    mean ± sample std, the chosen one marked; for the teacher stages also the errors of a student
    distilled from each teacher (information, not the rule)."""
    stages = {stage["name"]: stage for stage in scan_result["stages"]}
    if name not in stages:
        raise ValueError(f"name must be one of {', '.join(map(repr, stages))}; got {name!r}")
    stage = stages[name]
    fields = list(stage["grid"])
    taught = any("distilled_from_it" in c for c in stage["configurations"])
    header = [*fields, "validation errors per seed", "mean ± std"] + (["distilled from it"] if taught else [])
    rows = []
    for c in stage["configurations"]:
        row = [_number(c["values"][f]) for f in fields]
        row += [" ".join(map(str, c["errors"])), f"{c['mean']:.2f} ± {c['std']:.2f}"]
        if taught:
            row.append(f"{c['distilled_from_it']['mean']:.2f} ± {c['distilled_from_it']['std']:.2f}")
        rows.append((row, c["values"] == stage["chosen"]))
    widths = [max(len(header[i]), *(len(row[i]) for row, _ in rows)) for i in range(len(header))]
    size = scan_result["sizes"]["validation"]
    lines = [f"{stage['name']}: {stage['question']} (the {stage['measures']} net's errors of {size} validation images, "
             f"seeds {_seed_range(scan_result['seeds'])})",
             ("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths))).rstrip()]
    for row, chosen in rows:
        lines.append(("* " if chosen else "  ") + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines.append(f"  chosen (*): {_describe(stage['chosen'])}")
    return "\n".join(lines)


def format_scan(scan_result: dict) -> str:
    """Every stage's table, then the rule and the choices."""
    parts = [f"Choosing hinton's {scan_result['data']} settings on the validation split "
             f"({scan_result['sizes']['validation']} images), {scan_result['method']}.",
             f"Rule: {scan_result['rule']}.", ""]
    for stage in scan_result["stages"]:
        parts += [format_stage(scan_result, stage["name"]), ""]
    parts.append(f"chosen: {_describe(scan_result['chosen'])}")
    return "\n".join(parts)


def _combinations(grid: dict[str, tuple]):
    for values in itertools.product(*grid.values()):
        yield dict(zip(grid, values))


def _student_part(settings: hinton.Settings, start: hinton.Settings) -> hinton.Settings:
    """settings with the distilled student's fields (lr, epochs, T, alpha) taken from start."""
    return dataclasses.replace(settings, distilled_lr=start.distilled_lr, distilled_epochs=start.distilled_epochs,
                               T=start.T, alpha=start.alpha, transfer_jitter=start.transfer_jitter)


def _summary(errors: list[int]) -> dict:
    return {"errors": errors, "mean": statistics.fmean(errors),
            "std": seed_std(errors)}


def _json_settings(settings: hinton.Settings, exclude: set[str]) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(settings).items() if name not in exclude}


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe(values: dict) -> str:
    return ", ".join(f"{name}={_number(value)}" for name, value in values.items())


def _seed_range(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.experiments.hinton_tuning") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Choose the Hinton experiment's digits settings on the validation split, stage by stage "
                    "(coordinate-wise), and print every configuration's validation errors. "
                    "No test image is used.")
    parser.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS,
                        help=f"seeds per configuration, {FIRST_SEED} .. {FIRST_SEED} + N - 1 (default {DEFAULT_SEEDS})")
    parser.add_argument("--out", type=Path,
                        help="also write the scan as JSON to this file (the shipped one: "
                             "kdlearn/experiments/hinton_tuning.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    # Nets this small gain nothing from a second thread, and lose much when the cores are busy; one
    # thread also makes the scan repeat exactly.
    torch.set_num_threads(1)
    result = scan(seeds=tuple(range(FIRST_SEED, FIRST_SEED + args.seeds)), stages=STAGES, start=START,
                  progress=not args.quiet)
    print(format_scan(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
