"""Checks for lesson 00, the tour: one small exercise to show how every check works.

    from kdlearn.exercises import lesson00 as check
    check.cross_entropy(cross_entropy)
"""

from __future__ import annotations

import torch

from kdlearn.exercises import Exercise, expect_close


def _check_cross_entropy(answer) -> None:
    cases = [
        (torch.tensor([2.0, 1.0, 0.1]), 0),
        (torch.tensor([0.5, -1.0, 3.0, 0.0]), 3),
        (torch.tensor([10.0, 0.0]), 1),
    ]
    for logits, label in cases:
        log_probs = torch.log_softmax(logits, dim=-1)
        expected = -log_probs[label]
        mistakes = [
            (log_probs[label], "Cross-entropy is the *negative* log-probability: it is never below 0."),
            (log_probs.exp()[label], "That is the label's probability itself: the loss is its log, negated."),
            (-logits[label], "That uses the raw logit as if it were a log-probability: a logit becomes one only "
                             "after the softmax has normalised it against the other classes."),
        ]
        what = f"logits {[round(v, 2) for v in logits.tolist()]} and label {label}"
        expect_close(answer(logits.clone(), label), expected, what, mistakes)


cross_entropy = Exercise(
    "0.1", "cross-entropy of a hard label",
    hint="The loss is the surprise at the true label: how improbable the model found it, measured on a log scale. "
         "Turn the logits into (log-)probabilities first.",
    run_checks=_check_cross_entropy,
)
