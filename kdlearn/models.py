"""The networks of Hinton, Vinyals and Dean (2015): plain ReLU MLPs of configurable widths.

    from kdlearn import models
    teacher = models.mlp(64, models.widths("digits", "teacher"), dropout=0.2, seed=0)

On MNIST (784 pixels, 60,000 training images) the paper's teacher is 784-1200-1200-10 with
dropout and inputs jittered by up to 2 pixels (67 test errors); the student is 784-800-800-10
(146 errors from scratch, 74 distilled) and, in the temperature study, 784-30-30-10.

The embedded digits (64 pixels, 987 training images) need less: WIDTHS["digits"] scales the
nets down, keeping what matters, a teacher with room to spare and a student short of capacity.
See WIDTHS for the figures and why. The input jitter is kdlearn.training.jitter_images.
"""

from __future__ import annotations

import torch
from torch import nn

# Hidden-layer widths per dataset and role.
#
# MNIST: the paper's own. Digits (64 pixels, 987 training images): the teacher is cut to
# 256-256, room enough that dropout, not width, limits it, at a few milliseconds a batch. The big
# student keeps 800-800's place between teacher and small student. The small student is cut from
# 30-30 to 20-20, a design choice rather than a tuned one: narrow enough to stay clearly behind
# the teacher when trained from scratch, so that distillation's gain can stand out from the
# seeds' noise (a 30-30 net comes too close), yet wide enough to follow the teacher's soft
# targets (a 10-10 net cannot: distilled, it stays far behind the teacher).
WIDTHS: dict[str, dict[str, tuple[int, ...]]] = {
    "mnist": {"teacher": (1200, 1200), "big_student": (800, 800), "small_student": (30, 30)},
    "digits": {"teacher": (256, 256), "big_student": (128, 128), "small_student": (20, 20)},
}


def widths(data: str, role: str) -> tuple[int, ...]:
    """The hidden widths of the paper's net `role` ("teacher", "big_student", "small_student"),
    scaled to `data` ("digits" or "mnist"); see WIDTHS."""
    if data not in WIDTHS:
        raise ValueError(f"data must be one of {sorted(WIDTHS)}, got {data!r}")
    if role not in WIDTHS[data]:
        raise ValueError(f"role must be one of {sorted(WIDTHS[data])}, got {role!r}")
    return WIDTHS[data][role]


def mlp(
    in_features: int,
    hidden: tuple[int, ...] = (1200, 1200),
    num_classes: int = 10,
    *,
    dropout: float = 0.0,
    seed: int | None = None,
) -> nn.Sequential:
    """A ReLU MLP: in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes logits.

    dropout > 0 puts a Dropout of that rate after every hidden ReLU (active in train mode only).
    seed, when given, draws the initial weights from that seed without touching the global RNG,
    so the same seed gives the same net whatever ran before; None uses the global RNG.
    """
    if in_features < 1 or num_classes < 1 or any(width < 1 for width in hidden):
        raise ValueError(f"in_features, hidden and num_classes must be positive, got "
                         f"in_features={in_features}, hidden={hidden}, num_classes={num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width_in = in_features
        for width in hidden:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            if dropout > 0.0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        return nn.Sequential(*layers)
