"""The teachers shipped with kdlearn: small GPTs trained on kdlearn.tasks, loaded without pickle.

    from kdlearn import teachers
    teacher = teachers.load("any_order")
    teacher.model, teacher.tokenizer, teacher.task     # an lm.GPT in eval mode, its tokenizer, its task
    teacher.metadata["test_accuracy"]                  # what it scored when it was trained

Each is a pair of files in this folder, NAME.safetensors (the weights) and NAME.json (the model's
configuration, its alphabet, its task, the settings it was trained with and the figures it
scored), written by ``python -m kdlearn.experiments.train_teachers`` and installed with the
package. NAMES lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdlearn import lm, tasks

DIRECTORY = Path(__file__).parent


@dataclass
class Teacher:
    name: str
    model: lm.GPT
    tokenizer: lm.CharTokenizer
    task: tasks.Task
    metadata: dict


def names() -> list[str]:
    """The teachers there are: every NAME.json in this folder."""
    return sorted(p.stem for p in DIRECTORY.glob("*.json"))


def load(name: str, directory: Path | str = DIRECTORY) -> Teacher:
    """The teacher ``name`` (one of names()), from ``directory`` (default: the shipped ones)."""
    directory = Path(directory)
    if not (directory / f"{name}.json").is_file() and directory == DIRECTORY:
        raise FileNotFoundError(f"no shipped teacher {name!r}; there are {', '.join(names()) or 'none'}. "
                                "Train it with: python -m kdlearn.experiments.train_teachers")
    model, tokenizer, metadata = lm.load(directory / name)
    try:
        task = tasks.TASKS[metadata["task"]](**metadata.get("task_options", {}))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{directory / name}.json names no task kdlearn knows ({error})") from None
    if task.tokenizer().alphabet != tokenizer.alphabet:
        raise ValueError(f"{directory / name}.json: the checkpoint's alphabet {tokenizer.alphabet!r} is not its "
                         f"task's {task.tokenizer().alphabet!r}")
    return Teacher(name, model, tokenizer, task, metadata)
