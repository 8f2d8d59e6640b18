"""Tests of kdlearn.tasks: the examples are deterministic and the splits disjoint, the answers and
rationales are the arithmetic they claim (checked with Python's integers, digit by digit), the
verifiers accept every right output and reject wrong ones, and accuracy counts what a greedy
loop written here writes."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from kdlearn import teachers
from kdlearn.tasks import Addition, AnyOrder, Example, Multiplication

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TASKS = [Addition(1), Addition(3), Addition(5, rationale=True), Addition(3, rationale=True), Multiplication(1),
         Multiplication(2), Multiplication(2, rationale=True), Multiplication(3, rationale=True), AnyOrder(3),
         AnyOrder(4), AnyOrder(6)]


def operands(prompt: str, sign: str) -> tuple[int, int]:
    a, b = prompt.removesuffix("=").split(sign)
    return int(a), int(b)


def same_task(task):
    """A second instance of task, made afresh."""
    return AnyOrder(task.size) if isinstance(task, AnyOrder) else type(task)(task.digits, rationale=task.rationale)


def digit(n: int, i: int) -> int:
    """The i-th decimal digit of n, least significant first."""
    return n // 10 ** i % 10


# === determinism and splits ======================================================================


def test_examples_are_the_same_on_every_machine():
    """Pinned values: the draws come from string-seeded random.Random and crc32, which depend
    neither on the platform nor on PYTHONHASHSEED."""
    assert Addition(3).examples("train", 2, seed=0) == [Example("248+263=", "1150", "11,11,5,0"),
                                                        Example("600+732=", "2331", "2,3,13,1")]
    assert [(e.prompt, e.answer) for e in AnyOrder(4).examples("train", 3, seed=0)] == [
        ("9802:", "8092"), ("7032:", "7032"), ("4297:", "7924")]
    assert Multiplication(2).examples("train", 1, seed=0) == [Example("10*96=", "0690", "0600+0090")]


@pytest.mark.parametrize("task", TASKS, ids=repr)
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_examples_are_deterministic_and_depend_on_the_seed(task, split):
    a = task.examples(split, 30, seed=1)
    assert a == task.examples(split, 30, seed=1) == same_task(task).examples(split, 30, seed=1)
    assert a != task.examples(split, 30, seed=2)


def test_a_rationale_changes_the_completions_not_the_examples():
    """Students with and without rationales are trained on the same prompts and tested on the same set."""
    assert Addition(3).examples("train", 20, seed=4) == Addition(3, rationale=True).examples("train", 20, seed=4)
    assert Multiplication(2).examples("test") == Multiplication(2, rationale=True).examples("test")


def keys_by_split(task, key, n=(3000, 400, 400)) -> dict[str, set]:
    return {split: {key(e.prompt) for e in task.examples(split, count, seed=0)}
            for split, count in zip(("train", "validation", "test"), n)}


@pytest.mark.parametrize("task,key", [
    (Addition(2), lambda p: operands(p, "+")),
    (Multiplication(2), lambda p: operands(p, "*")),
    (AnyOrder(4), lambda p: frozenset(p[:-1])),  # the digit set, in whatever order it is written
], ids=["addition", "multiplication", "any_order"])
def test_the_splits_never_share_an_instance(task, key):
    seen = keys_by_split(task, key)
    assert all(seen.values())
    assert not seen["train"] & seen["validation"]
    assert not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]


def test_any_order_never_shows_a_test_digit_set_in_training_in_any_order():
    test = {frozenset(e.prompt[:-1]) for e in AnyOrder(4).examples("test")}
    train = AnyOrder(4).examples("train", 5000, seed=3)
    assert not [e.prompt for e in train if frozenset(e.prompt[:-1]) in test]
    assert len({frozenset(e.prompt[:-1]) for e in train}) > 100  # of the 210 sets, most are trained on


@pytest.mark.parametrize("task", [Addition(3), Multiplication(2), AnyOrder(4)], ids=repr)
def test_the_fixed_evaluation_sets_are_fixed_distinct_and_held_out(task):
    train = {e.prompt for e in task.examples("train", 2000)}
    sets = {}
    for split in ("validation", "test"):
        examples = task.examples(split)
        prompts = [e.prompt for e in examples]
        assert len(prompts) == len(set(prompts)) == task.evaluation_size
        assert examples == same_task(task).examples(split)
        assert not train & set(prompts)
        sets[split] = set(prompts)
    assert not sets["validation"] & sets["test"]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_small_task_evaluates_on_every_prompt_of_its_split(split):
    """AnyOrder(3) has fewer test prompts than evaluation_size: the fixed set is all of them,
    counted here by enumerating the 720 orderings of 3 distinct digits."""
    task = AnyOrder(3)
    every = {"".join(p) + ":" for p in itertools.permutations("0123456789", 3)
             if task.split_of(tuple(p)) == split}
    assert 0 < len(every) < task.evaluation_size
    assert sorted(e.prompt for e in task.examples(split)) == sorted(every)


def test_any_order_training_answers_are_uniform_over_the_orderings():
    """Each training example's answer is one ordering of its prompt's digits, drawn uniformly:
    the permutation that takes the prompt to the answer is uniform over the 4! = 24."""
    examples = AnyOrder(4).examples("train", 12_000, seed=5)
    permutations = Counter(tuple(e.prompt.index(c) for c in e.answer) for e in examples)
    assert len(permutations) == 24
    assert chisquare(list(permutations.values())).pvalue > 1e-3


# === answers, rationales and verifiers ==========================================================


@pytest.mark.parametrize("digits", [1, 3, 5])
def test_addition_answers_are_the_sum_reversed_and_padded(digits):
    for e in Addition(digits).examples("train", 200, seed=digits):
        a, b = operands(e.prompt, "+")
        assert e.prompt == f"{a:0{digits}d}+{b:0{digits}d}=" and a < 10 ** digits and b < 10 ** digits
        assert len(e.answer) == digits + 1 and e.answer.isdigit()
        assert int(e.answer[::-1]) == a + b


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_multiplication_answers_are_the_product_reversed_and_padded(digits):
    for e in Multiplication(digits).examples("train", 200, seed=digits):
        a, b = operands(e.prompt, "*")
        assert e.prompt == f"{a:0{digits}d}*{b:0{digits}d}="
        assert len(e.answer) == 2 * digits and e.answer.isdigit()
        assert int(e.answer[::-1]) == a * b


@pytest.mark.parametrize("digits", [1, 3, 5])
def test_addition_rationale_is_the_column_sums_with_their_carries(digits):
    for e in Addition(digits, rationale=True).examples("train", 200, seed=digits):
        a, b = operands(e.prompt, "+")
        *columns, last = map(int, e.rationale.split(","))
        assert len(columns) == digits
        carry = 0
        for i, column in enumerate(columns):
            assert column == digit(a, i) + digit(b, i) + carry
            carry = column // 10
        assert last == carry
        assert e.answer == "".join(str(c % 10) for c in columns) + str(last)


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_multiplication_rationale_is_the_partial_products_that_sum_to_the_product(digits):
    for e in Multiplication(digits, rationale=True).examples("train", 200, seed=digits):
        a, b = operands(e.prompt, "*")
        partials = e.rationale.split("+")
        assert len(partials) == digits and all(len(p) == 2 * digits for p in partials)
        values = [int(p[::-1]) for p in partials]
        assert values == [a * digit(b, i) * 10 ** i for i in range(digits)]
        assert sum(values) == a * b


@pytest.mark.parametrize("task", TASKS, ids=repr)
def test_the_verifier_accepts_every_generated_completion(task):
    examples = task.examples("train", 200, seed=7)
    for e in examples:
        assert task.is_correct(e.prompt, task.completion(e))
        assert task.is_correct(e.prompt, e.answer)
    lengths = [len(task.completion(e)) for e in examples]
    assert max(lengths) == task.max_completion_length  # the bound is reached, not just respected
    tokenizer = task.tokenizer()
    for e in examples:  # every prompt and completion is in the task's alphabet
        tokenizer.encode(e.prompt + task.completion(e))


def wrong_answers(answer: str):
    """Every one-digit change of answer, and answers one character short or long."""
    for i, c in enumerate(answer):
        for d in "0123456789":
            if d != c:
                yield answer[:i] + d + answer[i + 1:]
    yield answer[:-1]
    yield answer + "0"
    yield ""


@pytest.mark.parametrize("task", [Addition(3), Addition(2, rationale=True), Multiplication(2),
                                  Multiplication(2, rationale=True)], ids=repr)
def test_arithmetic_verifiers_reject_wrong_answers(task):
    for e in task.examples("train", 30, seed=8):
        prefix = f"{e.rationale}|" if task.rationale else ""
        for wrong in wrong_answers(e.answer):
            assert not task.is_correct(e.prompt, prefix + wrong), (e.prompt, wrong)
        assert not task.is_correct(e.prompt, e.answer + "|")


def test_any_order_verifier_rejects_everything_but_an_ordering():
    task = AnyOrder(4)
    assert task.is_correct("3817:", "7138") and task.is_correct("3817:", "3817")
    for wrong in ["713", "71380", "7133", "7139", "71a8", "", "7 138", "1387:"]:
        assert not task.is_correct("3817:", wrong), wrong


@pytest.mark.parametrize("prompt", ["052+318", "52+318=", "0520+318=", "052-318=", "052+318+1=", "05a+318=",
                                    "+318=", "=", "", " 52+318=", "²²²+318=", "٠٥٢+318="])
def test_addition_rejects_malformed_prompts_without_raising(prompt):
    assert Addition(3).is_correct(prompt, "0730") is False
    assert Addition(3, rationale=True).is_correct(prompt, "10,7,3,0|0730") is False


@pytest.mark.parametrize("prompt", ["12*34", "12+34=", "123*34=", "1*34=", "1a*34=", "١٢*34="])
def test_multiplication_rejects_malformed_prompts_without_raising(prompt):
    assert Multiplication(2).is_correct(prompt, "8040") is False


@pytest.mark.parametrize("prompt", ["3817", "381:", "38177:", "3881:", "38a7:", "3817=", ":", "¹²³⁴:", "١٢٣٤:"])
def test_any_order_rejects_malformed_prompts(prompt):
    task = AnyOrder(4)
    assert task.is_correct(prompt, prompt[:-1]) is False
    with pytest.raises(ValueError, match="is not 4 distinct digits followed by ':'"):
        task.answers(prompt)


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_any_order_answers_are_every_ordering_of_the_digits(size):
    task = AnyOrder(size)
    for e in task.examples("train", 5, seed=size):
        digits = e.prompt[:-1]
        answers = task.answers(e.prompt)
        assert len(answers) == len(set(answers)) == math.factorial(size)
        assert answers == sorted(answers)
        assert all(Counter(a) == Counter(digits) for a in answers)
        assert all(task.is_correct(e.prompt, a) for a in answers)
        assert e.answer in answers


def test_completion_writes_the_rationale_then_the_separator_then_the_answer():
    e = Example("052+318=", "0730", "10,7,3,0")
    assert Addition(3, rationale=True).completion(e) == "10,7,3,0|0730"
    assert Addition(3).completion(e) == "0730"
    assert Addition.answer_of("10,7,3,0|0730") == "0730" and Addition.answer_of("0730") == "0730"
    assert Addition(3).tokenizer().alphabet == Addition(3, rationale=True).tokenizer().alphabet


@pytest.mark.parametrize("make,message", [
    (lambda: Addition(0), "digits must be an int from 1 to 9"),
    (lambda: Addition(10), "digits"),
    (lambda: Addition("3"), "digits"),
    (lambda: Addition(2.0), "digits"),
    (lambda: Multiplication(6), "digits must be an int from 1 to 5"),
    (lambda: Multiplication(0), "digits"),
    (lambda: AnyOrder(1), "size must be an int from 2 to 6"),
    (lambda: AnyOrder(7), "size"),
    (lambda: Addition(3).examples("dev", 3), "split must be one of"),
    (lambda: Addition(3).examples("train"), "the training split has no fixed set: pass n"),
    (lambda: Addition(3).examples("train", 0), "n must be a positive int"),
    (lambda: Addition(3).examples("test", -2), "n must be a positive int"),
    (lambda: Addition(3).examples("train", 2.0), "n must be a positive int"),
])
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# === accuracy ====================================================================================


def greedy_texts(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions by hand: full forward passes over a batch of equal-length prompts, each
    row's text cut at its first end token."""
    tokens = torch.tensor([tokenizer.encode_prompt(p) for p in prompts])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    texts = []
    for row in tokens[:, tokens.shape[1] - max_new_tokens:].tolist():
        row = row[:row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row
        texts.append("".join(tokenizer.alphabet[i - 3] if i >= 3 else "" for i in row))
    return texts


@pytest.fixture(scope="module")
def damaged_teacher():
    """The shipped addition teacher with noise on its weight matrices: right on some prompts,
    wrong on others, so that a count has something to count."""
    teacher = teachers.load("addition")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in teacher.model.parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=generator) * 0.4 * p.std())
    return teacher


def test_accuracy_is_the_share_of_prompts_answered_right_counted_by_hand(damaged_teacher):
    model, tokenizer, task = damaged_teacher.model, damaged_teacher.tokenizer, damaged_teacher.task
    examples = task.examples("validation")[:150]
    outputs = greedy_texts(model, tokenizer, [e.prompt for e in examples], max_new_tokens=task.digits + 2)
    right = sum(o.isdigit() and len(o) == task.digits + 1 and int(o[::-1]) == sum(operands(e.prompt, "+"))
                for e, o in zip(examples, outputs))
    accuracy = task.accuracy(model, tokenizer, examples)
    assert accuracy == right / len(examples)
    assert 0.2 < accuracy < 0.9  # the count is of a mixture, not of all right or all wrong


def test_accuracy_passes_generate_options_and_stays_in_the_unit_interval(damaged_teacher):
    model, tokenizer, task = damaged_teacher.model, damaged_teacher.tokenizer, damaged_teacher.task
    examples = task.examples("validation")[:40]
    assert task.accuracy(model, tokenizer, examples, max_new_tokens=task.digits) == 0.0  # too short to answer
    sampled = task.accuracy(model, tokenizer, examples, temperature=1.0, seed=3)
    assert 0.0 <= sampled <= 1.0
    assert sampled == task.accuracy(model, tokenizer, examples, temperature=1.0, seed=3)
    with pytest.raises(ValueError, match="examples is empty"):
        task.accuracy(model, tokenizer, [])


@pytest.mark.parametrize("task", [AnyOrder(4), Addition(3, rationale=True)], ids=["any_order", "addition"])
def test_pairs_are_the_examples_prompts_and_completions(task):
    examples = task.examples("train", 20, seed=3)
    assert task.pairs("train", 20, seed=3) == [(e.prompt, task.completion(e)) for e in examples]
    assert task.pairs("validation") == [(e.prompt, task.completion(e)) for e in task.examples("validation")]
