"""Checks for lesson 03, dark knowledge: the missing class.

    from kdlearn.exercises import lesson03 as check
    check.shift_bias(shift_bias)
    check.choose_shift(choose_shift)

Exercise 3.1 returns a copy of a classifier with one output unit's bias raised; the check runs
the copy and the original on fixed images and recognises the usual slips (changing the original,
the weights instead of the bias, the wrong layer or class, the wrong sign). Exercise 3.2 chooses
that shift from unlabelled images (the lesson uses its validation split): the shift at which the
student predicts the class as often as the teacher does. ``reference(name)`` gives kdlearn's answer to an exercise, for the
cells after it until the learner's passes (``Exercise.passing_or``).
"""

from __future__ import annotations

import copy
from numbers import Real

import torch
from torch import nn

from kdlearn import models
from kdlearn.exercises import Exercise, Mismatch, close, expect_close, named_answer, show

# --- kdlearn's answers -------------------------------------------------------------------------


def _shift_bias(model: nn.Sequential, class_index: int, amount: float) -> nn.Sequential:
    """A deep copy of model whose output layer (its last module, an nn.Linear) has the bias of
    class_index raised by amount; the original is left as it was."""
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted[-1].bias[class_index] += amount
    return shifted


def _choose_shift(teacher_logits: torch.Tensor, student_logits: torch.Tensor, class_index: int) -> float:
    """The bias shift of class_index at which the student predicts it on as many rows as the teacher:
    the midpoint between the k-th and (k+1)-th smallest of the student's margins (see _margins), k the
    number of rows the teacher predicts class_index on (1 <= k < number of rows)."""
    k = int((teacher_logits.argmax(dim=-1) == class_index).sum())
    if not 0 < k < len(teacher_logits):
        raise ValueError(f"the teacher must predict class {class_index} on some rows but not all, got {k} "
                         f"of {len(teacher_logits)}")
    margins = _margins(student_logits, class_index).sort().values.double()
    return float((margins[k - 1] + margins[k]) / 2)


_REFERENCES = {"shift_bias": _shift_bias, "choose_shift": _choose_shift}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` ("shift_bias" or "choose_shift"), a plain function
    with the exercise's arguments."""
    return named_answer(_REFERENCES, name)


# --- Exercise 3.1: shift one class's bias, on a copy ---------------------------------------------


def _parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mode = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(mode)


def _check_shift_bias(answer) -> None:
    x = torch.rand(6, 8, generator=torch.Generator().manual_seed(3))
    for hidden, class_index, amount in [((5,), 1, 2.5), ((6, 4), 3, -1.75), ((6, 4), 0, 0.5)]:
        model = models.mlp(8, hidden, 4, seed=7)
        before = _parameters(model)
        original = _logits(model, x)
        what = f"an MLP 8-{'-'.join(map(str, hidden))}-4, class_index={class_index}, amount={amount:g}"
        try:
            got = answer(model, class_index, amount)
        except RuntimeError as error:
            if "requires grad" not in str(error):
                raise
            raise Mismatch(f"Your function raised RuntimeError: {error}",
                           "Autograd refuses an in-place change to a parameter that requires gradients: make the "
                           "change inside `with torch.no_grad():`, which tells it not to record it.") from None
        if got is None:
            raise Mismatch(f"Your function returned None for {what}.",
                           "Return the shifted copy: `return shifted` at the end.")
        if got is model:
            raise Mismatch(f"For {what} your function returned the model it was given, not a copy.",
                           "Shift a copy (copy.deepcopy makes one that shares no tensor with the original), so "
                           "that the student you compare with stays as it was.")
        if not isinstance(got, nn.Module):
            raise Mismatch(f"For {what} your function returned a {type(got).__name__}; a model (an nn.Module, "
                           "such as the copy of the model) was expected.")
        if any(not torch.equal(a, b) for a, b in zip(before, _parameters(model))):
            raise Mismatch(f"For {what} your function changed the original model's parameters.",
                           "Change only the copy, made with copy.deepcopy(model): copy.copy is a shallow copy, "
                           "whose parameters are the original's.")
        got_parameters = list(got.parameters())
        if len(got_parameters) != len(before):
            raise Mismatch(f"For {what} the model you returned has {len(got_parameters)} parameter tensors; "
                           f"the original has {len(before)}.", "Return a copy of the whole model.")
        changed = [i for i, (a, b) in enumerate(zip(before, _parameters(got))) if not torch.equal(a, b)]
        output_weight, output_bias = len(before) - 2, len(before) - 1
        expected = original.clone()
        expected[:, class_index] += amount
        got_logits = _logits(got, x)
        if close(got_logits, expected):
            continue
        if output_weight in changed:
            raise Mismatch(f"For {what} your copy's output weights differ from the original's.",
                           "Shift the bias (model[-1].bias), not the weights: a change of the weights "
                           "moves the logit by an amount that depends on the image.")
        if changed and output_bias not in changed:
            raise Mismatch(f"For {what} your copy changes a hidden layer, not the output layer.",
                           "The bias to shift is the output layer's: the last module, model[-1].bias.")
        wrong_sign = original.clone()
        wrong_sign[:, class_index] -= amount
        if close(got_logits, wrong_sign):
            raise Mismatch(f"For {what} the logit of class {class_index} moved by {-amount:g}, not {amount:g}.",
                           "Raise the bias by amount: add it, don't subtract it.")
        if close(got_logits, original + amount):
            raise Mismatch(f"For {what} every logit moved by {amount:g}.",
                           "Shift only the bias of class_index: model[-1].bias[class_index]; a shift of every "
                           "logit by the same amount changes no prediction.")
        moved = (got_logits - original).mean(dim=0)
        raise Mismatch(f"For {what} the logits should move by {show(expected[0] - original[0])}, but your copy "
                       f"moves them by {show(moved)}.")


shift_bias = Exercise(
    "3.1", "shift one class's bias",
    hint="Work on a copy that shares no tensor with the original, and change one number in it: the entry for "
         "class_index in the bias of the output layer (the last module). PyTorch refuses to change a parameter "
         "that requires gradients in place unless autograd is told not to record the change.",
    run_checks=_check_shift_bias,
)


# --- Exercise 3.2: choose the shift from unlabelled images --------------------------------------------


def _margins(student_logits: torch.Tensor, class_index: int) -> torch.Tensor:
    """Per row, how far class_index's logit is below the best other class's: the smallest shift of its
    bias at which the student would predict it (negative where it already does)."""
    others = student_logits.clone()
    others[:, class_index] = float("-inf")
    return others.max(dim=-1).values - student_logits[:, class_index]


def _choose_shift_cases():
    generator = torch.Generator().manual_seed(4)
    teacher = torch.randn(16, 5, generator=generator) * 3
    teacher[:4, 2] += 8.0     # the teacher predicts class 2 on at least 4 rows
    student = teacher + torch.randn(16, 5, generator=generator)
    student[:, 2] -= 3.0      # the student's class 2 sits too low, as after distilling without it
    return [(teacher, student, 2), (teacher, student, 0), (teacher[:9], student[:9], 2)]


def _as_number(got, what: str) -> float:
    if got is None:
        raise Mismatch(f"Your function returned None for {what}.", "Did you forget the `return` statement?")
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise Mismatch(f"For {what} your function returned a tensor of shape {tuple(got.shape)}; one number "
                           "was expected.", "Return the one shift, e.g. float(...).")
        return float(got)
    if isinstance(got, Real) and not isinstance(got, bool):
        return float(got)
    raise Mismatch(f"For {what} your function returned a {type(got).__name__}; one number was expected.")


def _check_choose_shift(answer) -> None:
    for teacher, student, c in _choose_shift_cases():
        k = int((teacher.argmax(dim=-1) == c).sum())
        what = f"{len(teacher)} rows of 5 logits, class_index={c} (the teacher predicts it on {k} rows)"
        expected = torch.tensor(_choose_shift(teacher, student, c), dtype=torch.float64)
        sorted_margins = _margins(student, c).sort().values.double()
        all_classes = student.max(dim=-1).values - student[:, c]   # the max taken over c too
        k_student = int((student.argmax(dim=-1) == c).sum())
        mistakes = [
            (-expected, "Wrong sign: the margin is the best other logit minus the logit of class_index, "
                        "the amount the bias must rise by."),
            (sorted_margins[k - 1], "That is the k-th smallest margin itself: at that shift the student ties on the "
                                    "k-th row. Take the midpoint between the k-th and the (k+1)-th."),
            ((sorted_margins[k] + sorted_margins[k + 1]) / 2,
             "Off by one: with 0-based indexing the k-th and (k+1)-th smallest are sorted[k - 1] and sorted[k]."),
            (all_classes.sort().values.double()[k - 1: k + 1].mean(),
             "Leave class_index out when taking the best other logit (set its column to -inf first)."),
            (_margins(teacher, c).sort().values.double()[k - 1: k + 1].mean(),
             "The margins are the student's: it is the student's bias that moves."),
        ]
        if k_student != k and 0 < k_student < len(teacher) - 1:
            mistakes.append((sorted_margins[k_student - 1: k_student + 1].mean(),
                             "k is how many rows the *teacher* predicts class_index on, not the student."))
        got = torch.tensor(_as_number(answer(teacher.clone(), student.clone(), c), what), dtype=torch.float64)
        expect_close(got, expected, what, mistakes)


choose_shift = Exercise(
    "3.2", "choose the shift from unlabelled images",
    hint="Count the rows on which the teacher predicts the class. For each row, work out how far the student's "
         "logit for the class would have to rise to beat the student's best other logit. Ordered from the "
         "smallest, those amounts say which rows a given shift wins: pick the shift that wins exactly as many "
         "as the teacher's count, halfway between two neighbours.",
    run_checks=_check_choose_shift,
)
