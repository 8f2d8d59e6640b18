"""Tests of the shipped teachers (kdlearn/teachers/) and of the script that trains them: every
teacher loads without unpickling anything, scores what its metadata says on its task's test set
(recomputed here with a greedy loop and a verifier of this file's own), and has the parameters it
states; the script writes loadable teachers and refuses unknown names."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest
import torch

from kdlearn import lm, teachers, tasks
from kdlearn.experiments import train_teachers

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NAMES = teachers.names()


def test_there_are_at_least_two_shipped_teachers():
    assert len(NAMES) >= 2
    assert {"any_order", "addition"} <= set(NAMES)


def refuse_to_unpickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a teacher was unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)


@pytest.fixture(scope="module", params=NAMES)
def shipped(request):
    with pytest.MonkeyPatch.context() as monkeypatch:
        refuse_to_unpickle(monkeypatch)
        return teachers.load(request.param)


def greedy_answers(teacher: teachers.Teacher, prompts: list[str]) -> list[str]:
    """Greedy completions, by full forward passes over batches of equal-length prompts, cut at
    the first end token and decoded by hand."""
    tokenizer, longest = teacher.tokenizer, teacher.task.max_completion_length + 1
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    out = [""] * len(prompts)
    with torch.no_grad():
        for indices in by_length.values():
            tokens = torch.tensor([[tokenizer.bos_id, *(3 + tokenizer.alphabet.index(c) for c in prompts[i])]
                                   for i in indices])
            start = tokens.shape[1]
            for _ in range(longest):
                tokens = torch.cat([tokens, teacher.model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
            for i, row in zip(indices, tokens[:, start:].tolist()):
                row = row[:row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row
                out[i] = "".join(tokenizer.alphabet[t - 3] if t >= 3 else "\0" for t in row)
    return out


def right(task: tasks.Task, prompt: str, output: str) -> bool:
    """This file's own verifier for the shipped tasks' prompts."""
    if isinstance(task, tasks.AnyOrder):
        return Counter(output) == Counter(prompt[:-1])
    if isinstance(task, tasks.Addition):
        a, b = map(int, prompt[:-1].split("+"))
        return output.isdigit() and len(output) == task.digits + 1 and int(output[::-1]) == a + b
    raise NotImplementedError(f"no verifier here for {task}: add one")


def test_each_teacher_scores_its_stated_test_accuracy(shipped):
    test = shipped.task.examples("test")
    outputs = greedy_answers(shipped, [e.prompt for e in test])
    accuracy = sum(right(shipped.task, e.prompt, o) for e, o in zip(test, outputs)) / len(test)
    assert accuracy == pytest.approx(shipped.metadata["test_accuracy"], abs=0.01)
    assert accuracy >= 0.95


def test_each_teacher_has_the_parameters_and_configuration_it_states(shipped):
    c = shipped.model.config
    W, per_block = c.width, 2 * 2 * c.width + 3 * c.width * (c.width + 1) + c.width * (c.width + 1) \
        + 4 * c.width * (c.width + 1) + c.width * (4 * c.width + 1)
    count = 2 * c.vocab_size * W + c.context * W + c.depth * per_block + 2 * W
    assert shipped.metadata["parameters"] == count == shipped.model.num_parameters()
    assert c.vocab_size == shipped.tokenizer.vocab_size == len(shipped.task.alphabet) + 3
    settings = shipped.metadata["settings"]
    assert (c.width, c.depth, c.heads, c.context) == (settings["width"], settings["depth"], settings["heads"],
                                                      settings["context"])
    assert shipped.metadata["task"] == settings["task"] == shipped.task.name
    assert not shipped.model.training


def test_each_teacher_fits_its_task_in_its_context(shipped):
    """The longest prompt and completion of its task fit the teacher's context."""
    prompt = max(len(e.prompt) for e in shipped.task.examples("test")) + 1
    assert prompt + shipped.task.max_completion_length + 1 <= shipped.model.config.context


def test_a_teacher_file_is_plain_safetensors(shipped):
    """An 8-byte header length, a JSON header naming each tensor, the float32 data: no pickle."""
    weights = (teachers.DIRECTORY / f"{shipped.name}.safetensors").read_bytes()
    length = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + length])
    header.pop("__metadata__", None)
    assert {n: (h["dtype"], h["shape"]) for n, h in header.items()} == \
        {n: ("F32", list(t.shape)) for n, t in shipped.model.state_dict().items()}
    assert len(weights) == 8 + length + 4 * shipped.metadata["parameters"]


def test_loading_an_unknown_teacher_lists_the_names():
    with pytest.raises(FileNotFoundError, match=r"no shipped teacher 'nope'; there are addition, any_order"):
        teachers.load("nope")


# === the training script =========================================================================


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers")
    assert train_teachers.main(["--out", str(out), "--steps", "5", "--width", "16", "--examples", "200"]) == 0
    return out


def test_the_script_writes_a_loadable_teacher_of_each_kind_with_its_figures(trained):
    assert sorted(p.name for p in trained.iterdir()) == sorted(
        f"{n}{s}" for n in train_teachers.TEACHERS for s in (".json", ".safetensors"))
    for name, settings in train_teachers.TEACHERS.items():
        teacher = teachers.load(name, trained)
        m = teacher.metadata
        assert m["settings"] == {**vars(settings), "steps": 5, "width": 16, "examples": 200}
        assert teacher.model.config.width == 16 and m["parameters"] == teacher.model.num_parameters()
        # recorded to a tenth of a second, so 5 tiny steps may well round to 0.0
        assert isinstance(m["training_seconds"], float) and m["training_seconds"] >= 0
        # the figures are those of the weights written
        assert m["test_accuracy"] == round(teacher.task.accuracy(teacher.model, teacher.tokenizer), 4)
        if isinstance(teacher.task, tasks.AnyOrder):
            assert 0 <= m["sampled_valid"] <= 1 and 0 <= m["distinct_correct_of_8"] <= 8


def test_the_script_refuses_an_unknown_teacher_naming_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        train_teachers.main(["any_order", "nope", "--out", str(tmp_path)])
    assert exit.value.code == 2
    assert "no teacher named nope; there are addition, any_order" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_loading_from_another_folder_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        teachers.load("nope", tmp_path)


def test_a_checkpoint_whose_task_is_unknown_is_refused(tmp_path):
    tokenizer = lm.CharTokenizer("0123456789:")
    model = lm.GPT(lm.GPTConfig(vocab_size=tokenizer.vocab_size, context=8, width=8, depth=1, heads=2))
    lm.save(model, tokenizer, tmp_path / "odd", task="division")
    with pytest.raises(ValueError, match="odd.json names no task kdlearn knows"):
        teachers.load("odd", tmp_path)
    lm.save(model, tokenizer, tmp_path / "wrong", task="addition", task_options={"digits": 3})
    with pytest.raises(ValueError, match="wrong.json: the checkpoint's alphabet '0123456789:' is not its task's"):
        teachers.load("wrong", tmp_path)
