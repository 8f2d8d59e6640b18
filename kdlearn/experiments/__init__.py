"""Experiments that reproduce a paper's result end to end, each runnable from the command line.

    python -m kdlearn.experiments.hinton         Hinton, Vinyals and Dean 2015: teacher, small net
                                                 from scratch, small net distilled (lessons 02, 03)
    python -m kdlearn.experiments.hinton_tuning  how hinton's digits settings were chosen: a scan on
                                                 the validation split, shipped as hinton_tuning.json
    python -m kdlearn.experiments.families       response, feature (hints, attention, cosine) and relation (RKD)
                                                 distillation of one CNN student, all labels and 3 a class (lesson 06)
    python -m kdlearn.experiments.schemes        who teaches whom: born-again, be your own teacher, mutual learning,
                                                 an ensemble of teachers, a teacher-assistant chain (lesson 07)
    python -m kdlearn.experiments.train_teachers the language-model teachers of kdlearn.teachers
    python -m kdlearn.experiments.divergences    forward KL, reverse KL and JSD(beta), token by token: precision
                                                 and recall of students of the any_order teacher (lesson 08)
    python -m kdlearn.experiments.sequence_kd    teacher-written data: hard labels, word-level KD, sequence-level
                                                 KD and a verifier-filtered sampled set (lesson 09)
    python -m kdlearn.experiments.on_policy      GKD's lambda: off-policy against on-policy distillation
                                                 at equal updates and equal wall time (lesson 10)
"""

import argparse
import json
import statistics
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (seeds, epochs, steps)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seed_std(values) -> float:
    """The sample standard deviation of a figure over seeds; 0 for a single seed, which has no spread."""
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def read_scan(path: str | Path, command: str) -> dict:
    """A validation scan's JSON at ``path``. ``command`` is the one that writes it (to ``--out``),
    named in the errors: a missing file is a FileNotFoundError, a file that is not JSON a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scan at {path}; write it with: {command} --out {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not the JSON of a scan ({error}); write it again with: {command} --out "
                         f"{path}") from None
