"""Checks for lesson 07, who teaches whom.

    from kdlearn.exercises import lesson07 as check
    check.mutual_loss(mutual_loss)
    check.ensemble_soft_targets(ensemble_soft_targets)

Both are checked against kdlearn.schemes: mutual_learning_loss (at T = 1), its value and its
gradient with respect to every student's logits (which is where a peer that is not detached
shows), and ensemble_logits, whose softmax at T is the mean of the teachers' distributions.
``reference(name)`` gives kdlearn's answer, for the cells after an exercise until the learner's passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlearn import schemes
from kdlearn.exercises import Exercise, Mismatch, as_tensor, close, expect_close, named_answer, show

# --- kdlearn's answers -------------------------------------------------------------------------


def _mutual_loss(stacked_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return schemes.mutual_learning_loss(stacked_logits, labels, T=1.0)


def _ensemble_soft_targets(teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    return torch.softmax(schemes.ensemble_logits(teacher_logits, T=T) / T, dim=-1)


_REFERENCES = {"mutual_loss": _mutual_loss, "ensemble_soft_targets": _ensemble_soft_targets}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` (mutual_loss or ensemble_soft_targets)."""
    return named_answer(_REFERENCES, name)


# --- Exercise 7.1: mutual learning's loss -------------------------------------------------------


def _mutual_cases():
    generator = torch.Generator().manual_seed(71)
    return [
        (torch.randn(2, 6, 5, generator=generator, dtype=torch.float64) * 2,
         torch.randint(0, 5, (6,), generator=generator), "a cohort of 2 students, 6 examples, 5 classes"),
        (torch.randn(3, 8, 10, generator=generator, dtype=torch.float64) * 3,
         torch.randint(0, 10, (8,), generator=generator), "a cohort of 3 students, 8 examples, 10 classes"),
    ]


def _kl(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) per row."""
    log_p, log_q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _variant(z, y, *, detach=True, reverse=False, peers="mean", ce=True, members="sum", rows="mean"):
    """mutual learning's loss with one thing changed: what a common mistake computes."""
    K = z.shape[0]
    total = 0.0
    for k in range(K):
        kls = [(_kl(z[k], z[l].detach() if detach else z[l]) if reverse else
                _kl(z[l].detach() if detach else z[l], z[k])) for l in range(K) if l != k]
        soft = sum(kls) / (K - 1 if peers == "mean" else 1)
        per_row = soft + (F.cross_entropy(z[k], y, reduction="none") if ce else 0.0)
        total = total + (per_row.mean() if rows == "mean" else per_row.sum())
    return total / K if members == "mean" else total


def _value_and_gradient(function, z, y):
    logits = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = function(logits, y.clone())
        value = as_tensor(value, "the cohort")
        if value.dim() != 0:
            raise Mismatch(f"Your function returned a tensor of shape {tuple(value.shape)}; the loss is one number.",
                           "Add up the students' losses, each averaged over the examples, into one scalar.")
        if not value.requires_grad:
            raise Mismatch("Your loss carries no gradient back to the logits, so train() could not learn from it.",
                           "Compute it from stacked_logits with torch operations (no .item(), no .detach() of "
                           "the student's own logits, no numpy).")
        value.backward()
    return value.detach(), logits.grad


def _check_mutual_loss(answer) -> None:
    for z, y, what in _mutual_cases():
        expected, expected_grad = _value_and_gradient(_mutual_loss, z, y)
        got, got_grad = _value_and_gradient(answer, z, y)
        mistakes = [
            (dict(detach=False), "Detach each peer's distribution: it is a target for student k, not something "
                                 "student k's loss should move. Without it, each student is also pulled to be "
                                 "easier to imitate."),
            (dict(reverse=True), "The KL points the wrong way: each student is pulled towards its peers' "
                                 "distribution, KL(peer || student), the peer's expectation, as in kd_loss."),
            (dict(ce=False), "Each student also learns from the labels: add its cross-entropy."),
            (dict(peers="sum"), "Average the KL over the K - 1 peers rather than adding them up, so that a "
                                "larger cohort does not outweigh the labels."),
            (dict(members="mean"), "Add the students' losses instead of averaging them: each student's gradient "
                                   "should be that of its own loss, not 1/K of it."),
            (dict(rows="sum"), "Average over the examples (the batch mean), as cross-entropy does, rather than "
                               "summing them."),
        ]
        # Some mistakes keep the value (no detach; for two students, the reversed KL) and change only the
        # gradient, which is what trains the students: both are compared.
        wrong = [(*_value_and_gradient(lambda s, t, c=change: _variant(s, t, **c), z, y), hint)
                 for change, hint in mistakes]
        if not close(got, expected):
            hint = next((h for value, _, h in wrong if close(got, value)), None)
            raise Mismatch(f"For {what} the loss should be {show(expected)}, but your function returned {show(got)}.",
                           hint)
        if not close(got_grad, expected_grad):
            hint = next((h for value, gradient, h in wrong if close(got, value) and close(got_grad, gradient)), None)
            raise Mismatch(f"For {what} the value is right, but the gradient is not: it should be "
                           f"{show(expected_grad)}, and your loss gives {show(got_grad)}.", hint)


mutual_loss = Exercise(
    "7.1", "mutual learning's loss",
    hint="Each student has a loss of its own: its cross-entropy against the labels, plus how far its distribution "
         "is from each of the others', averaged over those others. The others are fixed targets for it. The "
         "cohort's loss adds the students' losses up.",
    run_checks=_check_mutual_loss,
)


# --- Exercise 7.2: the ensemble's soft targets -------------------------------------------------


def _ensemble_cases():
    generator = torch.Generator().manual_seed(72)
    z = torch.randn(3, 5, 10, generator=generator) * 4
    return [(z, 1.0, "3 teachers, 5 examples, 10 classes, T = 1"), (z, 4.0, "the same logits at T = 4"),
            (torch.randn(2, 4, 6, generator=generator, dtype=torch.float64) * 2, 2.0,
             "2 float64 teachers, 4 examples, 6 classes, T = 2")]


def _check_ensemble_soft_targets(answer) -> None:
    for z, T, what in _ensemble_cases():
        expected = _ensemble_soft_targets(z, T)
        got = as_tensor(answer(z.clone(), T), what)
        mistakes = [
            (torch.softmax(z.mean(0) / T, dim=-1),
             "You averaged the teachers' logits (or their log-probabilities) and took one softmax: that is a "
             "different ensemble, sharper, and not the mean of the teachers' distributions. Average the "
             "probabilities."),
            (torch.softmax(z, dim=-1).mean(0), "Divide the logits by T before each softmax: the soft targets are "
                                               "the teachers' distributions at temperature T."),
            (torch.softmax(z / T, dim=-1).sum(0), "Take the mean over the teachers, not the sum: the soft targets "
                                                  "must sum to 1 over the classes."),
            (torch.softmax(z / T, dim=0).mean(0), "The softmax runs over the classes, the last dimension, not "
                                                  "over the teachers."),
            (torch.softmax(z / T, dim=-1).mean(1), "Average over the teachers, the first dimension, not over the "
                                                   "examples."),
        ]
        if got.shape != expected.shape:
            hint = next((h for wrong, h in mistakes if wrong.shape == got.shape and close(got, wrong)), None)
            raise Mismatch(f"For {what} the soft targets should have shape {tuple(expected.shape)} (one "
                           f"distribution per example), but your function returned shape {tuple(got.shape)}.", hint)
        expect_close(got, expected, what, mistakes)


ensemble_soft_targets = Exercise(
    "7.2", "the ensemble's soft targets",
    hint="Each teacher gives every example a distribution at temperature T; the ensemble's distribution for an "
         "example is the plain average of its teachers' distributions.",
    run_checks=_check_ensemble_soft_targets,
)
