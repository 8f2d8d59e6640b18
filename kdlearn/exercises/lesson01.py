"""Checks for lesson 01, soft targets and temperature.

    from kdlearn.exercises import lesson01 as check
    check.softmax_with_temperature(softmax_with_temperature)
    check.distillation_loss(distillation_loss)
"""

from __future__ import annotations

import torch

import kdlearn
from kdlearn.exercises import Exercise, expect_close


def _softmax_cases():
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.tensor([2.0, 1.0, 0.1]), 1.0, "logits [2, 1, 0.1] at T=1"),
        (torch.tensor([2.0, 1.0, 0.1]), 4.0, "logits [2, 1, 0.1] at T=4"),
        (torch.randn(3, 5, generator=generator) * 3, 0.5, "a batch of 3 rows of 5 logits at T=0.5"),
        (torch.tensor([1000.0, 999.0, 0.0]), 2.0, "the large logits [1000, 999, 0] at T=2"),
    ]


def _check_softmax(answer) -> None:
    for logits, T, what in _softmax_cases():
        expected = kdlearn.soft_targets(logits, T)
        mistakes = [
            (torch.softmax(logits, dim=-1), "The temperature seems unused: divide the logits by T first."),
            (torch.softmax(logits * T, dim=-1), "Divide the logits by T; multiplying sharpens instead of softening."),
        ]
        if logits.dim() > 1:
            mistakes.append((torch.softmax(logits / T, dim=0),
                             "Normalise over the last dimension (each row is one distribution): dim=-1."))
        expect_close(answer(logits.clone(), T), expected, what, mistakes)


softmax_with_temperature = Exercise(
    "1.1", "softmax with temperature",
    hint="p_i = exp(z_i / T) / sum_j exp(z_j / T) over the last dimension; subtracting each row's maximum "
         "before exp changes nothing mathematically and keeps exp from overflowing.",
    run_checks=_check_softmax,
)


def _loss_cases():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(6, 10, generator=generator) * 2
    teacher = torch.randn(6, 10, generator=generator) * 4
    labels = torch.randint(0, 10, (6,), generator=generator)
    return [(student, teacher, labels, T, alpha) for T, alpha in [(1.0, 0.5), (4.0, 0.9), (10.0, 0.7)]]


def _check_loss(answer) -> None:
    for student, teacher, labels, T, alpha in _loss_cases():
        what = f"6 rows of 10 classes at T={T:g}, alpha={alpha:g}"

        def hinton(**changes):
            options = dict(T=T, alpha=alpha) | changes
            return kdlearn.kd_loss(student, teacher, labels, **options)

        soft = kdlearn.kl_divergence(student, teacher, T=T)
        reverse = kdlearn.kl_divergence(student, teacher, T=T, direction="reverse")
        hard = torch.nn.functional.cross_entropy(student, labels)
        hard_at_T = torch.nn.functional.cross_entropy(student / T, labels)
        mistakes = [
            (hinton(t_squared=False), "The soft term needs the factor T² (T * T): its gradients shrink as 1/T²."),
            (alpha * T * T * reverse + (1 - alpha) * hard,
             "That is KL(student || teacher). Hinton's loss takes the teacher's expectation: KL(teacher || student)."),
            ((1 - alpha) * T * T * soft + alpha * hard, "The weights are swapped: alpha goes with the soft term."),
            (alpha * T * T * soft + (1 - alpha) * hard_at_T, "The hard-label term uses the student at T = 1."),
            (hinton() * student.shape[0], "Average over the rows of the batch, don't sum."),
        ]
        got = answer(student.clone(), teacher.clone(), labels.clone(), T, alpha)
        expect_close(got, hinton(), what, mistakes)


distillation_loss = Exercise(
    "1.2", "Hinton's distillation loss",
    hint="alpha * T² * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * cross_entropy(student, labels), "
         "each averaged over the rows. torch.log_softmax and torch.nn.functional.kl_div(..., log_target=True, "
         "reduction='batchmean') help.",
    run_checks=_check_loss,
)
