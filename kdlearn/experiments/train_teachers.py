"""Train the teachers that ship with kdlearn (kdlearn/teachers/), deterministically, on one CPU thread.

    python -m kdlearn.experiments.train_teachers                 every teacher, into kdlearn/teachers/
    python -m kdlearn.experiments.train_teachers any_order       one of them
    python -m kdlearn.experiments.train_teachers --out /tmp/t --steps 20 --width 16   a quick try

Each teacher is a kdlearn.lm.GPT fine-tuned on its task's training split with plain
cross-entropy (kdlearn.distill.train, Objective("ce")), then scored on the task's fixed test
set: its greedy accuracy, and for tasks with several answers the share of temperature-1 samples
that are correct and how many distinct correct answers 8 samples per prompt find. The figures
go into the checkpoint's JSON beside the settings, and tests/test_teachers.py checks them
against the shipped weights.

The settings (TEACHERS below) were chosen to make teachers that are right almost always, small
enough to ship (about 1 MB each) and quick to retrain: on this course's 2-core machine,
about 3 minutes per teacher on one thread (the JSON records the measured time). The
students of lessons 08-10 are 30-60 times smaller.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from kdlearn import distill, lm, tasks
from kdlearn.teachers import DIRECTORY


@dataclass(frozen=True)
class TeacherSettings:
    task: str
    task_options: dict
    width: int
    depth: int
    heads: int
    context: int = 16
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-3
    examples: int = 50_000   # training examples drawn from the task's training split
    seed: int = 0

    def make_task(self) -> tasks.Task:
        return tasks.TASKS[self.task](**self.task_options)


TEACHERS = {
    "addition": TeacherSettings("addition", {"digits": 3}, width=96, depth=2, heads=4),
    "any_order": TeacherSettings("any_order", {"size": 4}, width=96, depth=2, heads=4),
}


def evaluate(model: lm.GPT, tokenizer: lm.CharTokenizer, task: tasks.Task) -> dict:
    """The figures a shipped teacher states about itself, on its task's fixed test set."""
    figures = {"test_accuracy": task.accuracy(model, tokenizer)}
    if isinstance(task, tasks.AnyOrder):
        test = task.examples("test")
        samples = 8
        prompts = [e.prompt for e in test for _ in range(samples)]
        outputs = lm.complete(model, tokenizer, prompts, max_new_tokens=task.max_completion_length + 1,
                              temperature=1.0, seed=0)
        correct = [task.is_correct(p, o) for p, o in zip(prompts, outputs)]
        figures["sampled_valid"] = sum(correct) / len(correct)
        distinct = [len({o for o, ok in zip(outputs[i:i + samples], correct[i:i + samples]) if ok})
                    for i in range(0, len(outputs), samples)]
        figures["distinct_correct_of_8"] = sum(distinct) / len(distinct)
    return figures


def train_teacher(settings: TeacherSettings, progress: bool = True) -> tuple[lm.GPT, lm.CharTokenizer, dict]:
    task = settings.make_task()
    tokenizer = task.tokenizer()
    config = lm.GPTConfig(vocab_size=tokenizer.vocab_size, context=settings.context, width=settings.width,
                          depth=settings.depth, heads=settings.heads)
    model = lm.GPT(config, seed=settings.seed)
    data = task.pairs("train", settings.examples, seed=settings.seed)
    started = time.perf_counter()
    distill.train(model, tokenizer, data, steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                  seed=settings.seed, progress=progress)
    seconds = time.perf_counter() - started
    metadata = {"task": settings.task, "task_options": settings.task_options, "settings": asdict(settings),
                "parameters": model.num_parameters(), "training_seconds": round(seconds, 1),
                **{k: round(v, 4) for k, v in evaluate(model, tokenizer, task).items()}}
    return model, tokenizer, metadata


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"the teachers to train (default: all of {', '.join(TEACHERS)})")
    parser.add_argument("--out", type=Path, default=DIRECTORY, help="where to write them (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="override the number of training steps (for a quick try)")
    parser.add_argument("--width", type=int, help="override the width (for a quick try)")
    parser.add_argument("--examples", type=int, help="override the number of training examples")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(TEACHERS))
    if unknown:
        parser.error(f"no teacher named {', '.join(unknown)}; there are {', '.join(TEACHERS)}")
    overrides = {k: v for k, v in (("steps", args.steps), ("width", args.width), ("examples", args.examples))
                 if v is not None}
    torch.set_num_threads(1)  # deterministic, and what the stated time was measured with
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or TEACHERS:
        model, tokenizer, metadata = train_teacher(replace(TEACHERS[name], **overrides))
        weights, _ = lm.save(model, tokenizer, args.out / name, **metadata)
        print(f"{name}: {metadata['parameters']:,} parameters, {metadata['training_seconds']} s, "
              f"test accuracy {metadata['test_accuracy']:.3f} -> {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
