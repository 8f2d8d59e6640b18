"""Checks for lesson 01, soft targets and temperature.

    from kdlearn.exercises import lesson01 as check
    check.softmax_with_temperature(softmax_with_temperature)
    check.distillation_loss(distillation_loss)
"""

from __future__ import annotations

import torch

import kdlearn
from kdlearn.exercises import Exercise, Mismatch, as_tensor, expect_close


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
    hint="Soft targets are an ordinary softmax, taken after the temperature has rescaled the logits; "
         "and a softmax does not change when the same number is subtracted from every logit of a row, "
         "which is how to keep exp from overflowing.",
    run_checks=_check_softmax,
)


def _loss_cases():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(6, 10, generator=generator) * 2
    teacher = torch.randn(6, 10, generator=generator) * 4
    labels = torch.randint(0, 10, (6,), generator=generator)
    return [(student, teacher, labels, T, alpha) for T, alpha in [(1.0, 0.5), (4.0, 0.9), (10.0, 0.7)]]


# Hints for the mistakes torch.nn.functional.kl_div invites: its reduction and its log_target flag.
KL_DIV_MEAN_HINT = ("Your soft term is 1/V of the answer: kl_div's default reduction, 'mean', divides by every "
                    "element (B·V, here 6·10), not by the number of examples B.")
KL_DIV_SUM_HINT = "Your soft term is summed over the examples of the batch: Hinton's loss averages it over them."
KL_DIV_PROBABILITY_TARGET_HINT = ("kl_div was told its target is in log space (log_target=True) but was given "
                                  "probabilities: give both sides in the same form.")
NON_FINITE_LOSS_HINT = ("Your loss is NaN or inf on finite logits. The usual cause is kl_div's target given as "
                        "log-probabilities without saying so: unless log_target=True, kl_div takes its target "
                        "as probabilities and takes their log, and the log of a negative number is NaN.")


def _check_loss(answer) -> None:
    for student, teacher, labels, T, alpha in _loss_cases():
        what = f"6 rows of 10 classes at T={T:g}, alpha={alpha:g}"
        B, V = student.shape

        def hinton(**changes):
            options = dict(T=T, alpha=alpha) | changes
            return kdlearn.kd_loss(student, teacher, labels, **options)

        soft = kdlearn.kl_divergence(student, teacher, T=T)
        reverse = kdlearn.kl_divergence(student, teacher, T=T, direction="reverse")
        hard = torch.nn.functional.cross_entropy(student, labels)
        hard_at_T = torch.nn.functional.cross_entropy(student / T, labels)
        log_q = torch.log_softmax(student / T, dim=-1)
        teacher_probabilities = torch.softmax(teacher / T, dim=-1)
        probability_target = torch.nn.functional.kl_div(log_q, teacher_probabilities, log_target=True,
                                                        reduction="batchmean")

        def with_soft_term(soft_term):
            return alpha * T * T * soft_term + (1 - alpha) * hard

        mistakes = [
            (hinton(t_squared=False), "The soft term needs the factor T² (T * T): its gradients shrink as 1/T²."),
            (alpha * T * T * reverse + (1 - alpha) * hard,
             "That is KL(student || teacher). Hinton's loss takes the teacher's expectation: KL(teacher || student)."),
            ((1 - alpha) * T * T * soft + alpha * hard, "The weights are swapped: alpha goes with the soft term."),
            (alpha * T * T * soft + (1 - alpha) * hard_at_T, "The hard-label term uses the student at T = 1."),
            (with_soft_term(soft / V), KL_DIV_MEAN_HINT),
            (with_soft_term(soft * B), KL_DIV_SUM_HINT),
            (hinton() * B, "Average over the rows of the batch, don't sum."),
            (with_soft_term(probability_target), KL_DIV_PROBABILITY_TARGET_HINT),
        ]
        got = as_tensor(answer(student.clone(), teacher.clone(), labels.clone(), T, alpha), what)
        if got.numel() == 1 and not torch.isfinite(got.detach()).all():
            raise Mismatch(f"For {what} the answer should be {hinton().item():.4g}, but your function returned "
                           f"{got.detach().flatten()[0].item()}.", NON_FINITE_LOSS_HINT)
        expect_close(got, hinton(), what, mistakes)


distillation_loss = Exercise(
    "1.2", "Hinton's distillation loss",
    hint="Build it from its two terms and check each on its own: the soft term compares the teacher's and the "
         "student's distributions at temperature T (mind whose expectation the KL takes, and the factor that "
         "undoes the temperature), the hard term is the ordinary cross-entropy at T = 1, and each is an average "
         "over the examples of the batch.",
    run_checks=_check_loss,
)
