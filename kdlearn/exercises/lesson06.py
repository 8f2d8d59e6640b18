"""Checks for lesson 06, beyond logits.

    from kdlearn.exercises import lesson06 as check
    check.hint_term(hint_term)
    check.attention_map(attention_map)

Exercise 6.1, FitNets' hint term through its projection, is checked against
kdlearn.features.hint_loss on (N, C, H, W) maps with a 1x1 convolution and on (N, D) vectors with
a linear map, in value and in the gradient it sends into the projection's weights (the projection
learns only through it). Exercise 6.2, attention transfer's map, is checked against
kdlearn.features.attention_map, an all-zero map included. ``reference(name)`` gives kdlearn's
answer to an exercise, for the cells after it until the learner's passes (``Exercise.passing_or``).
"""

from __future__ import annotations

import torch
from torch import nn

from kdlearn import features
from kdlearn.exercises import Exercise, Mismatch, as_tensor, close, expect_close, named_answer, show

# --- kdlearn's answers -------------------------------------------------------------------------


def _hint_term(student_features: torch.Tensor, teacher_features: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    return features.hint_loss(student_features, teacher_features, projection)


def _attention_map(feature_map: torch.Tensor) -> torch.Tensor:
    return features.attention_map(feature_map, p=2)


_REFERENCES = {"hint_term": _hint_term, "attention_map": _attention_map}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` ("hint_term" or "attention_map"), a plain function with
    the exercise's arguments."""
    return named_answer(_REFERENCES, name)


# --- Exercise 6.1: the hint term, through the projection ----------------------------------------


class _Counting(nn.Module):
    """The projection, counting how often it is called and on what widths."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.inner(x)


def _hint_cases():
    generator = torch.Generator().manual_seed(61)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(61)
        conv, linear = nn.Conv2d(4, 12, 1), nn.Linear(6, 10)
    return [
        (torch.relu(torch.randn(5, 4, 3, 3, generator=generator)), torch.relu(torch.randn(5, 12, 3, 3,
                                                                                          generator=generator)),
         conv, "5 student maps of 4 channels (3x3), 5 teacher maps of 12, and a 1x1 convolution from 4 channels to 12"),
        (torch.randn(7, 6, generator=generator), torch.randn(7, 10, generator=generator) * 2, linear,
         "7 student vectors of width 6, 7 teacher vectors of width 10, and a linear map from 6 to 10"),
    ]


def _check_hint_term(answer) -> None:
    for student, teacher, projection, what in _hint_cases():
        counting = _Counting(projection)
        raised = ""
        try:
            with torch.enable_grad():
                got = answer(student.clone(), teacher.clone(), counting)
        except NotImplementedError:
            raise  # the stub: "not attempted yet"
        except Exception as error:
            # Comparing features of two widths fails with a shape error: say why, if that is the cause.
            if counting.calls and counting.calls[0][1] == student.shape[1]:
                raise
            raised = f" (it raised {type(error).__name__}: {error})"
        if not counting.calls:
            raise Mismatch(f"For {what} your function never called projection{raised}.",
                           "The student's features are narrower than the teacher's: they go through the "
                           "projection before they can be compared.")
        if counting.calls[0][1] != student.shape[1]:
            raise Mismatch(f"For {what} your function called projection on features of width "
                           f"{counting.calls[0][1]}{raised}.",
                           "The projection maps the student's width to the teacher's: it applies to the "
                           "student's features, and the teacher's are the target as they are.")
        got = as_tensor(got, what)
        if got.dim() != 0:
            raise Mismatch(f"For {what} your function returned shape {tuple(got.shape)}; one number, the loss, "
                           f"was expected.", "Reduce the squared errors to a single number.")
        with torch.no_grad():
            error = projection(student) - teacher
        n = student.shape[0]
        mistakes = [
            (error.square().sum(), "That is the sum of the squared errors; average them over every element "
                                   "instead, so that the term's size does not grow with the batch or the width."),
            (error.square().sum() / n, "You averaged over the examples only: average over every element, "
                                       "the feature dimensions too."),
            (error.square().sum() / (2 * n), "That is the paper's 1/2 ||r(u_s) - u_t||² per example; here the "
                                             "term is the mean over every element (the scale F.mse_loss has)."),
            (error.abs().mean(), "The errors are squared, not taken in absolute value."),
            (error.square().mean().sqrt(), "That is the root of the mean squared error: leave out the square root."),
            (error.square().sum().sqrt(), "That is a norm of the error: the hint term squares the errors and "
                                          "averages them, with no square root."),
        ]
        expected = _hint_term(student, teacher, projection)
        expect_close(got.detach(), expected.detach(), what, mistakes)
        if not got.requires_grad:
            raise Mismatch(f"For {what} your loss has no gradient.",
                           "The projection learns with the student, through this term alone: keep the "
                           "projection's output in the autograd graph (no .detach(), no torch.no_grad()).")
        weight = projection.weight
        got_grad, = torch.autograd.grad(got, weight, allow_unused=True)
        expected_grad, = torch.autograd.grad(expected, weight)
        if got_grad is None or not close(got_grad, expected_grad):
            raise Mismatch(f"For {what} the gradient your loss sends into the projection's weight should be "
                           f"{show(expected_grad)}, but it is {show(got_grad) if got_grad is not None else 'none'}.",
                           "The loss's value is right but its gradient is not: compute it from the projection's "
                           "output, with nothing detached on the way.")


hint_term = Exercise(
    "6.1", "the hint term, through its projection",
    hint="FitNets compares a student layer with a teacher layer of another width: map the student's features "
         "to the teacher's width with the learned projection first, then take the squared error element by "
         "element and average it over all the elements.",
    run_checks=_check_hint_term,
)


# --- Exercise 6.2: attention transfer's map -----------------------------------------------------


def _attention_cases():
    generator = torch.Generator().manual_seed(62)
    signed = torch.randn(4, 6, 5, 5, generator=generator)
    zero = torch.relu(torch.randn(3, 4, 3, 3, generator=generator))
    zero[1] = 0.0
    return [
        (torch.relu(torch.randn(2, 3, 4, 4, generator=generator)), "2 maps of 3 channels, 4x4 (ReLU outputs)"),
        (signed, "4 maps of 6 channels, 5x5, with negative values"),
        (zero, "3 maps of 4 channels, 3x3, the second all zero"),
    ]


def _check_attention_map(answer) -> None:
    for feature_map, what in _attention_cases():
        n, c, h, w = feature_map.shape
        got = as_tensor(answer(feature_map.clone()), what)
        expected = _attention_map(feature_map)
        if tuple(got.shape) == (n, h, w):
            raise Mismatch(f"For {what} your function returned shape {tuple(got.shape)}, the maps unflattened.",
                           "Each example's map is compared as one vector of its H*W positions: flatten it, "
                           "and normalise that vector.")
        if tuple(got.shape) == (n, c):
            raise Mismatch(f"For {what} your function returned shape {tuple(got.shape)}, one value per channel.",
                           "The map says where the network looks: sum over the channels, keeping the positions.")
        q = feature_map.pow(2).sum(dim=1).flatten(1)
        a = feature_map.abs().sum(dim=1).flatten(1)
        mistakes = [
            (q, "The map has unit length per example: divide each flattened map by its own L2 norm."),
            (q / q.sum(dim=1, keepdim=True).clamp_min(1e-30), "Normalise by the L2 norm of the flattened map, not "
                                                               "by the sum of its entries."),
            (q / q.norm(), "Each example is normalised by its own norm, not by one norm of the whole batch."),
            (a / a.norm(dim=1, keepdim=True).clamp_min(1e-30),
             "The activations are raised to the power p = 2 before the sum over the channels."),
            (feature_map.sum(dim=1).flatten(1) / feature_map.sum(dim=1).flatten(1).norm(dim=1, keepdim=True),
             "Raise each activation to the power p = 2 before the sum: a plain sum lets positive and negative "
             "activations cancel."),
        ]
        if not torch.isfinite(got).all() and torch.isfinite(expected).all():
            raise Mismatch(f"For {what} your function returned NaN or inf, at {show(got)}.",
                           "An all-zero map has norm 0, and 0 / 0 is NaN: the zero map should stay the zero "
                           "map (F.normalize handles that, or guard the division).")
        expect_close(got, expected, what, mistakes)


attention_map = Exercise(
    "6.2", "attention transfer's spatial map",
    hint="An attention map says how strongly the layer responds at each position, whatever the channel: "
         "combine the channels' activations at each position (the paper raises their magnitudes to the power "
         "p = 2), flatten the positions into one vector per example, and give it unit length.",
    run_checks=_check_attention_map,
)
