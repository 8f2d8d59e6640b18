"""Synthetic text tasks with exact answers, for distilling the tiny GPT of kdlearn.lm.

    from kdlearn import tasks
    task = tasks.Addition(digits=3)
    task.examples("train", 4, seed=0)    # [Example(prompt='248+263=', answer='1150', rationale='11,11,5,0'), ...]
    task.is_correct("052+318=", "0730")  # True: 52 + 318 = 370, written backwards and padded
    tokenizer = task.tokenizer()

Each task has a deterministic generator, fixed train / validation / test splits and a verifier:

* ``examples(split, n, seed)`` draws n examples of a split; ``examples("test")`` (no n) is the
  split's fixed evaluation set, the same on every machine. Which split an instance belongs to
  is decided by a hash of its *key* (for AnyOrder, the set of digits, so that a test set of
  digits is never seen in training, in any order), so the splits never overlap.
* ``is_correct(prompt, output)`` is the verifier: whether an output answers the prompt. It is
  what a teacher-written transfer set is filtered with (lesson 09), and what scores a model
  (``accuracy(model, tokenizer)``: the share of the test prompts it completes correctly).
* ``completion(example)``: the text a model is trained to write after the prompt; with
  ``rationale=True`` the task writes its worked steps first, then ``|``, then the answer
  (``answer_of`` takes the answer back out of an output).

The tasks:

* Addition(digits): "052+318=" -> "0730", the sum written least significant digit first and
  padded to digits + 1 characters: writing the carry's way round makes each output digit depend
  on the operands and the previous carry only. Rationale: each column's sum, e.g. "10,7,3,0|0730".
* Multiplication(digits): "12*34=" -> "8040" (408 reversed, padded to 2 * digits). Rationale:
  the partial products by each digit of the second operand, shifted, e.g. "84+063|8040" (48 and
  360, reversed). Multiplication without the steps is hard for a small model; with them it is
  learnable (Lee et al. 2024), which is what chain-of-thought distillation builds on.
* AnyOrder(size): "3817:" -> any ordering of those digits, e.g. "7138": size! correct answers
  per prompt, the training data drawing one of them uniformly. A teacher trained on it spreads
  its probability over every ordering, so a student can cover all of them (forward KL) or pick
  a few (reverse KL), and a teacher's greedy output is simpler data than the original (Kim and
  Rush's sequence-level distillation). ``answers(prompt)`` lists every correct answer.
"""

from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import dataclass

from kdlearn.lm import GPT, CharTokenizer, complete

SPLITS = ("train", "validation", "test")
RATIONALE_END = "|"
EXHAUSTED_AFTER = 50_000


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    rationale: str = ""


class Task:
    """What every task shares: splits by hash, sampling, completions with or without rationale."""

    name = "task"
    alphabet = ""
    # Shares of the instance space in validation and test (the rest is training).
    validation_share, test_share = 0.05, 0.05
    evaluation_size = 500  # examples in the fixed validation and test sets

    def __init__(self, rationale: bool = False):
        self.rationale = bool(rationale)

    # --- what a task defines ------------------------------------------------------------------
    def _draw(self, rng: random.Random):
        """One random instance."""
        raise NotImplementedError

    def _key(self, instance) -> str:
        """What decides the instance's split (instances with one key share a split)."""
        raise NotImplementedError

    def _example(self, instance, rng: random.Random) -> Example:
        raise NotImplementedError

    def is_correct(self, prompt: str, output: str) -> bool:
        raise NotImplementedError

    @property
    def max_completion_length(self) -> int:
        """The most characters a correct completion has (end token not counted)."""
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------------
    def split_of(self, instance) -> str:
        bucket = zlib.crc32(self._key(instance).encode()) % 10_000 / 10_000
        if bucket < self.test_share:
            return "test"
        if bucket < self.test_share + self.validation_share:
            return "validation"
        return "train"

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """n examples drawn from ``split`` with ``seed``; with n None, the split's fixed
        evaluation set for validation and test: evaluation_size examples with distinct prompts, or
        every prompt of the split where it has fewer (a small task, e.g. AnyOrder(3))."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n is None:
            if split == "train":
                raise ValueError("the training split has no fixed set: pass n, the number of examples to draw")
            n, seed, distinct = self.evaluation_size, SPLITS.index(split), True
        else:
            distinct = False
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"n must be a positive int, got {n!r}")
        # Seeded without the rationale flag: a task with and without rationales draws the same
        # examples, so that students with and without them are trained and tested on the same prompts.
        rng = random.Random(f"{self.describe().replace(', rationale', '')}/{split}/{seed}")
        found, seen, since_new = [], set(), 0
        for _ in range(1000 * n):
            instance = self._draw(rng)
            since_new += 1
            if distinct and since_new == EXHAUSTED_AFTER and found:
                # A split with fewer distinct prompts than asked for is used whole: after this many
                # draws in a row without a new prompt, the chance that one is left unfound is negligible.
                return found
            if self.split_of(instance) != split:
                continue
            example = self._example(instance, rng)
            if distinct and example.prompt in seen:
                continue
            since_new = 0
            seen.add(example.prompt)
            found.append(example)
            if len(found) == n:
                return found
        raise ValueError(f"{self.describe()} has {'no' if not found else 'too few'} {split} examples for {n}: "
                         "its instance space is too small for the split shares; use a larger task")

    def pairs(self, split: str, n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
        """(prompt, completion) texts of ``examples(split, n, seed)``: what a model is trained on."""
        return [(e.prompt, self.completion(e)) for e in self.examples(split, n, seed=seed)]

    def completion(self, example: Example) -> str:
        """What a model learns to write after the prompt: the answer, after the rationale if the task has one."""
        return f"{example.rationale}{RATIONALE_END}{example.answer}" if self.rationale else example.answer

    @staticmethod
    def answer_of(output: str) -> str:
        """The answer in an output: what follows the last rationale separator, if any."""
        return output.rsplit(RATIONALE_END, 1)[-1]

    def accuracy(self, model: GPT, tokenizer: CharTokenizer, examples: list[Example] | None = None,
                 **generate_options) -> float:
        """The share of ``examples`` (by default the test set) whose prompt the model completes
        correctly, by the verifier. Greedy unless generate_options (of kdlearn.lm.generate) say otherwise."""
        examples = self.examples("test") if examples is None else examples
        if not examples:
            raise ValueError("examples is empty: pass at least one example to score")
        options = {"temperature": 0.0, "max_new_tokens": self.max_completion_length + 1, **generate_options}
        outputs = complete(model, tokenizer, [e.prompt for e in examples], **options)
        return sum(self.is_correct(e.prompt, o) for e, o in zip(examples, outputs)) / len(examples)

    def tokenizer(self) -> CharTokenizer:
        """The task's tokenizer: the same with and without rationales, so one model can learn both."""
        return CharTokenizer(self.alphabet)

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return self.describe()


def _digits_of(prompt: str, sep: str, width: int) -> tuple[int, int] | None:
    """(a, b) from a prompt "aaa<sep>bbb=", or None when it is not one."""
    body = prompt[:-1] if prompt.endswith("=") else None
    if body is None or body.count(sep) != 1:
        return None
    a, b = body.split(sep)
    # isascii: str.isdigit accepts other scripts' digits too ("²", "٣"), which int() rejects or reads.
    if len(a) != width or len(b) != width or not (a.isascii() and a.isdigit() and b.isascii() and b.isdigit()):
        return None
    return int(a), int(b)


class Addition(Task):
    """digits-digit addition, the sum written backwards: "052+318=" -> "0730"."""

    name = "addition"
    alphabet = "0123456789+=,|"

    def __init__(self, digits: int = 3, rationale: bool = False):
        super().__init__(rationale)
        if not isinstance(digits, int) or not 1 <= digits <= 9:
            raise ValueError(f"digits must be an int from 1 to 9, got {digits!r}")
        self.digits = digits

    def describe(self) -> str:
        return f"addition({self.digits}{', rationale' if self.rationale else ''})"

    def _draw(self, rng):
        return rng.randrange(10 ** self.digits), rng.randrange(10 ** self.digits)

    def _key(self, instance) -> str:
        return f"{instance[0]}+{instance[1]}"

    def _answer(self, a: int, b: int) -> str:
        return str(a + b).zfill(self.digits + 1)[::-1]

    def _example(self, instance, rng) -> Example:
        a, b = instance
        columns, carry = [], 0
        for x, y in zip(str(a).zfill(self.digits)[::-1], str(b).zfill(self.digits)[::-1]):
            total = int(x) + int(y) + carry
            columns.append(str(total))
            carry = total // 10
        columns.append(str(carry))
        prompt = f"{str(a).zfill(self.digits)}+{str(b).zfill(self.digits)}="
        return Example(prompt, self._answer(a, b), ",".join(columns))

    def is_correct(self, prompt: str, output: str) -> bool:
        operands = _digits_of(prompt, "+", self.digits)
        return operands is not None and self.answer_of(output) == self._answer(*operands)

    @property
    def max_completion_length(self) -> int:
        steps = 3 * self.digits + 1 + 1 if self.rationale else 0  # "dd," per column, the carry, "|"
        return steps + self.digits + 1


class Multiplication(Task):
    """digits x digits multiplication, the product written backwards: "12*34=" -> "8040"."""

    name = "multiplication"
    alphabet = "0123456789*=+|"
    evaluation_size = 300  # of about 500 distinct test prompts at 2 digits

    def __init__(self, digits: int = 2, rationale: bool = False):
        super().__init__(rationale)
        if not isinstance(digits, int) or not 1 <= digits <= 5:
            raise ValueError(f"digits must be an int from 1 to 5, got {digits!r}")
        self.digits = digits

    def describe(self) -> str:
        return f"multiplication({self.digits}{', rationale' if self.rationale else ''})"

    def _draw(self, rng):
        return rng.randrange(10 ** self.digits), rng.randrange(10 ** self.digits)

    def _key(self, instance) -> str:
        return f"{instance[0]}*{instance[1]}"

    def _answer(self, a: int, b: int) -> str:
        return str(a * b).zfill(2 * self.digits)[::-1]

    def _example(self, instance, rng) -> Example:
        a, b = instance
        width = 2 * self.digits
        partials = [str(a * int(d) * 10 ** i).zfill(width)[::-1] for i, d in enumerate(str(b).zfill(self.digits)[::-1])]
        prompt = f"{str(a).zfill(self.digits)}*{str(b).zfill(self.digits)}="
        return Example(prompt, self._answer(a, b), "+".join(partials))

    def is_correct(self, prompt: str, output: str) -> bool:
        operands = _digits_of(prompt, "*", self.digits)
        return operands is not None and self.answer_of(output) == self._answer(*operands)

    @property
    def max_completion_length(self) -> int:
        steps = self.digits * (2 * self.digits + 1) if self.rationale else 0  # partials, "+" between, "|"
        return steps + 2 * self.digits


class AnyOrder(Task):
    """size distinct digits in, the same digits in any order out: size! correct answers per prompt."""

    name = "any_order"
    alphabet = "0123456789:"
    validation_share, test_share = 0.15, 0.15  # shares of the 210 (size 4) digit sets
    evaluation_size = 200

    def __init__(self, size: int = 4):
        super().__init__(rationale=False)
        if not isinstance(size, int) or not 2 <= size <= 6:
            raise ValueError(f"size must be an int from 2 to 6, got {size!r}")
        self.size = size

    def describe(self) -> str:
        return f"any_order({self.size})"

    def _draw(self, rng):
        return tuple(rng.sample("0123456789", self.size))

    def _key(self, instance) -> str:
        return "".join(sorted(instance))

    def _example(self, instance, rng) -> Example:
        answer = list(instance)
        rng.shuffle(answer)
        return Example("".join(instance) + ":", "".join(answer))

    def _digits(self, prompt: str) -> str | None:
        body = prompt[:-1] if prompt.endswith(":") else ""
        ascii_digits = body.isascii() and body.isdigit()  # not "¹²³⁴", which str.isdigit accepts
        return body if len(body) == self.size and len(set(body)) == self.size and ascii_digits else None

    def is_correct(self, prompt: str, output: str) -> bool:
        digits = self._digits(prompt)
        return digits is not None and sorted(output) == sorted(digits)

    def answers(self, prompt: str) -> list[str]:
        """Every correct answer to ``prompt``, in lexicographic order."""
        digits = self._digits(prompt)
        if digits is None:
            raise ValueError(f"prompt {prompt!r} is not {self.size} distinct digits followed by ':'")
        return sorted("".join(p) for p in itertools.permutations(digits))

    @property
    def max_completion_length(self) -> int:
        return self.size


TASKS = {"addition": Addition, "multiplication": Multiplication, "any_order": AnyOrder}
