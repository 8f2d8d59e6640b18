"""The networks of the course: the plain ReLU MLPs of Hinton, Vinyals and Dean (2015), and a
small CNN whose intermediate feature maps feature distillation can match (lessons 06 and 07).

    from kdlearn import models
    teacher = models.mlp(64, models.widths("digits", "teacher"), dropout=0.2, seed=0)
    student = models.cnn(channels=(8, 16), embedding=32, seed=0)   # blocks "block1", "block2", "embed"

On MNIST (784 pixels, 60,000 training images) the paper's teacher is 784-1200-1200-10 with
dropout and inputs jittered by up to 2 pixels (67 test errors); the student is 784-800-800-10
(146 errors from scratch, 74 distilled) and, in the temperature study, 784-30-30-10.

The embedded digits (64 pixels, 987 training images) need less: WIDTHS["digits"] scales the
nets down, keeping what matters, a teacher with room to spare and a student short of capacity.
See WIDTHS for the figures and why. The input jitter is kdlearn.training.jitter_images.
"""

from __future__ import annotations

from collections import OrderedDict

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


def cnn(
    channels: tuple[int, int] = (16, 32),
    embedding: int = 64,
    num_classes: int = 10,
    *,
    image_shape: tuple[int, int] = (8, 8),
    dropout: float = 0.0,
    seed: int | None = None,
) -> nn.Sequential:
    """A two-block CNN for small greyscale images given flattened, (N, H*W), as kdlearn.data's splits are.

    Its children, by name, are what feature and relation distillation pull out (kdlearn.features):
      image       (N, H*W) -> (N, 1, H, W)
      block1      3x3 convolution to channels[0], ReLU: (N, channels[0], H, W)
      block2      3x3 convolution to channels[1], ReLU, 2x2 max-pool: (N, channels[1], H/2, W/2)
      embed       flatten, linear to ``embedding``, ReLU (then dropout, if any): (N, embedding)
      classifier  linear to num_classes logits
    Two CNNs of any widths have feature maps of the same spatial size at each block, so attention
    maps compare directly; a hint between different channel counts needs a projection. seed, when
    given, draws the initial weights without touching the global RNG, as mlp's does.
    """
    height, width = image_shape
    if len(channels) != 2 or any(c < 1 for c in channels) or embedding < 1 or num_classes < 1:
        raise ValueError(f"channels must be two positive ints and embedding and num_classes positive, got "
                         f"channels={channels}, embedding={embedding}, num_classes={num_classes}")
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ValueError(f"image_shape must be even sides of at least 2 (block2 halves them), got {image_shape}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        embed = [nn.Flatten(), nn.Linear(channels[1] * (height // 2) * (width // 2), embedding), nn.ReLU()]
        if dropout > 0.0:
            embed.append(nn.Dropout(dropout))
        return nn.Sequential(OrderedDict(
            image=nn.Unflatten(1, (1, height, width)),
            block1=nn.Sequential(nn.Conv2d(1, channels[0], 3, padding=1), nn.ReLU()),
            block2=nn.Sequential(nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            embed=nn.Sequential(*embed),
            classifier=nn.Linear(embedding, num_classes),
        ))
