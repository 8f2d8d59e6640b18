"""Checks for lesson 08, distilling a language model.

    from kdlearn.exercises import lesson08 as check
    check.completion_kl(completion_kl)
    check.jsd_in_log_space(jsd_in_log_space)

Exercise 8.1 (the masked token-level loss) is checked against kdlearn.distill.token_loss with
Objective("forward"), on batches whose rows have prompts and completions of different lengths,
padding, a row with no completion and a batch with none at all. Exercise 8.2 (JSD(beta) per row)
is checked against kdlearn.generalized_jsd(..., reduction="none"), on rows with -inf logits too,
where a version that mixes probabilities and takes logs of zeros gives NaN. The mistakes people
make in both (the ones trainers have shipped, see REFERENCES.md) are recognised and named.
``reference(name)`` gives kdlearn's answer to an exercise, for the cells after it until the
learner's passes (``Exercise.passing_or``).
"""

from __future__ import annotations

import math

import torch

import kdlearn
from kdlearn import distill
from kdlearn.exercises import Exercise, Mismatch, as_tensor, expect_close, named_answer

IGNORE_INDEX = -100

# --- kdlearn's answers -------------------------------------------------------------------------


def _completion_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean over completion tokens of KL(teacher || student), by kdlearn.distill.token_loss."""
    return distill.token_loss(student_logits, teacher_logits, labels, distill.Objective("forward"))


def _jsd_in_log_space(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD(beta) of each row, by kdlearn.generalized_jsd."""
    return kdlearn.generalized_jsd(student_logits, teacher_logits, beta=beta, reduction="none")


_REFERENCES = {"completion_kl": _completion_kl, "jsd_in_log_space": _jsd_in_log_space}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` ("completion_kl" or "jsd_in_log_space"), a plain function
    with the exercise's arguments."""
    return named_answer(_REFERENCES, name)


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_v a_v (log a_v - log b_v) per row, 0 where a_v is 0: for the wrong answers below."""
    a = log_a.exp()
    return (a * torch.where(a > 0, log_a - log_b, 0.0)).sum(-1)


# --- Exercise 8.1: the masked token-level loss ----------------------------------------------------


def _labels(prompt_lengths: list[int], completion_lengths: list[int], length: int, generator,
            vocab: int) -> torch.Tensor:
    """Labels (B, length) as kdlearn.lm.pack makes them: -100 on the prompt and the padding."""
    labels = torch.full((len(prompt_lengths), length), IGNORE_INDEX)
    for row, (prompt, completion) in enumerate(zip(prompt_lengths, completion_lengths)):
        labels[row, prompt:prompt + completion] = torch.randint(3, vocab, (completion,), generator=generator)
    return labels


def _completion_cases():
    generator = torch.Generator().manual_seed(81)

    def logits(B, L, V, scale):
        return torch.randn(B, L, V, generator=generator) * scale

    small = (logits(2, 7, 5, 2.0), logits(2, 7, 5, 3.0), _labels([3, 2], [3, 5], 7, generator, 5))
    uneven = (logits(4, 10, 9, 2.0), logits(4, 10, 9, 4.0), _labels([2, 5, 3, 4], [8, 2, 6, 1], 10, generator, 9))
    empty_row = (logits(3, 8, 6, 2.0), logits(3, 8, 6, 3.0), _labels([3, 8, 2], [4, 0, 5], 8, generator, 6))
    nothing = (logits(2, 5, 4, 2.0), logits(2, 5, 4, 3.0), torch.full((2, 5), IGNORE_INDEX))
    return [
        (*small, "2 sequences of 7 positions, prompts of 3 and 2 tokens, completions of 3 and 5 (one padded)"),
        (*uneven, "4 sequences of 10 positions whose completions have 8, 2, 6 and 1 tokens"),
        (*empty_row, "3 sequences, the second a prompt with no completion at all"),
        (*nothing, "a batch of 2 sequences with no completion token at all (every label -100)"),
    ]


def _completion_mistakes(student, teacher, labels):
    """(the value a common mistake returns, the hint that names it)."""
    log_q, log_p = torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1)
    forward = _kl_rows(log_p, log_q)                       # (B, L): KL at every position
    counted = (labels[:, 1:] != IGNORE_INDEX).float()      # position t counts when label t + 1 does
    shifted = forward[:, :-1] * counted
    unshifted = labels != IGNORE_INDEX
    per_row = counted.sum(-1)
    mistakes = [
        ((forward * unshifted).sum() / unshifted.sum().clamp(min=1),
         "You compared logits[:, t] with the mask of labels[:, t]. The logits at position t predict the token at "
         "t + 1, so position t counts when labels[:, t + 1] is a completion token: shift the labels (or the mask) "
         "one place left, and drop the last position."),
        (shifted.sum() / (labels.shape[0] * (labels.shape[1] - 1)),
         "You divided by every position (B x (L - 1)), prompt and padding included: divide by the number of "
         "positions that count, the completion tokens."),
        (shifted.sum() / labels.numel(),
         "You divided by every position (B x L), prompt and padding included: divide by the number of positions "
         "that count, the completion tokens."),
        (forward.mean(), "You averaged over every position, prompt and padding included: only the positions whose "
                         "next label is a completion token count."),
        (shifted.sum() / labels.shape[0],
         "You divided by the number of sequences, B (what torch's reduction='batchmean' does): the loss then "
         "grows with the length of the completions, and its scale changes from batch to batch. Divide by the "
         "number of completion tokens in the whole batch."),
        ((shifted.sum(-1)[per_row > 0] / per_row[per_row > 0]).mean() if (per_row > 0).any() else torch.tensor(0.0),
         "You took each sequence's mean and then the mean over sequences: a token of a short completion then "
         "weighs more than one of a long completion. Take one mean over every completion token of the batch."),
        (((_kl_rows(log_q, log_p)[:, :-1] * counted).sum() / counted.sum().clamp(min=1)),
         "That is the reverse KL, KL(student || teacher): the forward KL averages log(p / q) under the "
         "teacher's probabilities p."),
    ]
    if (per_row == 0).any() and (per_row > 0).any():
        mistakes.append(((shifted.sum(-1)[per_row > 0] / per_row[per_row > 0]).sum() / labels.shape[0],
                         "You took each sequence's mean and then divided by every sequence, the one without a "
                         "completion included: take one mean over every completion token of the batch."))
    return mistakes


def _check_completion_kl(answer) -> None:
    for student, teacher, labels, what in _completion_cases():
        expected = _completion_kl(student, teacher, labels)
        got = as_tensor(answer(student.clone(), teacher.clone(), labels.clone()), what)
        if got.dim() > 0:
            raise Mismatch(f"For {what} your function returned a tensor of shape {tuple(got.shape)}; the loss is one "
                           f"number (a 0-d tensor).",
                           "Average the per-token divergences into one number: a loss that training can call "
                           ".backward() on.")
        if torch.isnan(got) and (labels[:, 1:] == IGNORE_INDEX).all():
            raise Mismatch(f"For {what} your function returned NaN; the answer is 0.",
                           "With no token that counts you divided 0 by 0: a batch with nothing to learn from should "
                           "give a loss of 0 (clamp the count at 1), or one such batch ruins a whole run.")
        counts = (labels[:, 1:] != IGNORE_INDEX).sum(-1)
        if torch.isnan(got) and (counts == 0).any():
            raise Mismatch(f"For {what} your function returned NaN; the answer is {expected.item():.4g}.",
                           "A sequence with no completion token gave 0 / 0: you took each sequence's own mean. Take "
                           "one mean over every completion token of the batch, so that such a row simply adds "
                           "nothing.")
        expect_close(got, expected, what, _completion_mistakes(student, teacher, labels))


completion_kl = Exercise(
    "8.1", "the masked token-level loss",
    hint="Three steps, each a place where trainers have gone wrong: the per-token forward KL from log-probabilities "
         "over the vocabulary; which positions count (the logits at a position predict the next token, so look "
         "at the next label); and one mean over the tokens that count in the whole batch.",
    run_checks=_check_completion_kl,
)


# --- Exercise 8.2: JSD(beta) in log space -----------------------------------------------------------


def _jsd_cases():
    generator = torch.Generator().manual_seed(82)
    student = torch.randn(6, 10, generator=generator) * 2
    teacher = torch.randn(6, 10, generator=generator) * 3
    masked_student, masked_teacher = student.clone(), teacher.clone()
    masked_teacher[0, [1, 4]] = -math.inf                 # the teacher rules out tokens the student allows
    masked_student[1, 7] = -math.inf                      # and the other way round
    masked_student[2:, 9] = masked_teacher[2:, 9] = -math.inf   # a token neither allows (a masked vocabulary)
    return [
        (torch.tensor([2.0, 1.0, 0.1, -1.0]), torch.tensor([0.5, 3.0, -1.0, 0.0]), 0.5,
         "the row of logits [2, 1, 0.1, -1] (student) and [0.5, 3, -1, 0] (teacher) at beta = 0.5"),
        (student, teacher, 0.1, "6 rows of 10 logits at beta = 0.1"),
        (student, teacher, 0.9, "6 rows of 10 logits at beta = 0.9"),
        (masked_student, masked_teacher, 0.3, "6 rows of 10 logits with -inf entries (masked tokens) at beta = 0.3"),
    ]


def _jsd_mistakes(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1)

    def jsd(log_m, weight_p):
        return weight_p * _kl_rows(log_p, log_m) + (1 - weight_p) * _kl_rows(log_q, log_m)

    def mixture(weight_p):
        return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))

    return [
        (jsd(mixture(1 - beta), beta),
         "The mixture's weights are on the wrong distributions: m = beta p + (1 - beta) q, with p the teacher, so "
         "that beta = 1 makes m the teacher (and JSD tends to the reverse KL). TRL and ms-swift both shipped this "
         "swap once."),
        (jsd(mixture(beta), 1 - beta),
         "The weights of the two KL terms are swapped: beta goes with KL(p || m), the teacher's term, and "
         "1 - beta with KL(q || m)."),
        (jsd(beta * log_p + (1 - beta) * log_q, beta),
         "You mixed the log-probabilities, which mixes the distributions geometrically (and m does not even add "
         "up to 1). The mixture is of the probabilities: log m is the log of a sum, which logaddexp or logsumexp "
         "computes from the two log-probabilities."),
        (jsd(mixture(0.5), 0.5),
         "That is the symmetric JSD, beta = 0.5, whatever beta was asked for: beta weighs both the mixture and "
         "the two KL terms."),
        (jsd(mixture(beta), 0.5),
         "The two KL terms are weighted by beta and 1 - beta, not equally."),
    ]


def _check_jsd_in_log_space(answer) -> None:
    for student, teacher, beta, what in _jsd_cases():
        expected = _jsd_in_log_space(student, teacher, beta)
        got = as_tensor(answer(student.clone(), teacher.clone(), beta), what)
        if got.dim() == 0 and expected.dim() > 0:
            raise Mismatch(f"For {what} your function returned one number, {got.item():.4g}; the answer has one value "
                           f"per row, shape {tuple(expected.shape)}.",
                           "Return each row's divergence (sum over the vocabulary, the last dimension), not their "
                           "mean: the losses reduce the rows afterwards.")
        if got.shape == expected.shape and torch.isnan(got).any() and torch.isfinite(expected).all():
            rows = torch.isnan(got).nonzero().flatten().tolist()
            raise Mismatch(f"For {what} your function returned NaN in rows {rows}, where the answer is finite.",
                           "Where a probability is 0 (a -inf logit), a term p log(p / m) must count as 0, but in "
                           "probability space it is 0 times log 0 = 0 x -inf = NaN, and where p and m are both 0, "
                           "log(0 / 0) is NaN too. Work with log-probabilities (log_softmax), form log m from them "
                           "without leaving log space, and leave out the entries whose probability is 0.")
        expect_close(got, expected, what, _jsd_mistakes(student, teacher, beta))


jsd_in_log_space = Exercise(
    "8.2", "JSD(beta) in log space",
    hint="Take log-probabilities of both rows first. The mixture's logarithm is the log of a weighted sum of two "
         "exponentials, which has a stable function of its own; each KL then sums probability times a difference "
         "of logs, skipping the entries whose probability is 0.",
    run_checks=_check_jsd_in_log_space,
)
