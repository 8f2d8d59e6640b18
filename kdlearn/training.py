"""The training loop every lesson uses, and the measurements taken afterwards.

    from kdlearn import data, models, training
    ds = data.digits()
    teacher = models.mlp(64, (256, 256), dropout=0.5, seed=0)
    training.train(teacher, ds.train, epochs=60, lr=3e-3, seed=0)
    student = models.mlp(64, (20, 20), seed=0)
    training.train(student, ds.transfer, teacher=teacher, loss="kd", T=4.0, alpha=0.9, epochs=150, lr=0.03)
    training.test_errors(student, ds.test)     # errors of the 540 test digits

A split is anything with .x, float images flattened to (N, H*W), and .y, int64 labels (N,),
such as kdlearn.data's Split. Everything here runs on the CPU in seconds for the digits.

Deterministic: the shuffling and the jitter draw from a torch.Generator seeded with `seed`, and
dropout from the global RNG, seeded with `seed` inside torch.random.fork_rng so that the caller's
RNG state is left as it was. The same model, split and arguments give the same weights on every
rerun on the same machine (with the same number of torch threads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdlearn.losses import kd_loss

LOSSES = ("ce", "kd")
LR_SCHEDULES = ("cosine", "constant")

# A loss of one's own: (student output, teacher output or None, labels) -> scalar. The outputs are
# the models' logits, or whatever structure of tensors they return (see train).
LossFunction = Callable[[object, object, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """What train() saw: the mean training loss of every epoch, in order."""

    loss: list[float] = field(default_factory=list)


def train(
    model: nn.Module,
    split,
    *,
    teacher: nn.Module | None = None,
    loss: str | LossFunction = "ce",
    T: float = 4.0,
    alpha: float = 0.9,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    jitter: int = 0,
    lr_schedule: str = "cosine",
    seed: int = 0,
    progress: bool = True,
) -> History:
    """Train `model` in place on `split` with Adam(W), leave it in eval mode, and return the mean
    loss of every epoch.

    loss="ce": cross-entropy against the hard labels split.y (no teacher).
    loss="kd": Hinton's distillation loss, kdlearn.kd_loss(student, teacher, labels, T=T,
        alpha=alpha): alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels).
        The teacher's logits are computed without gradient, in eval mode (no dropout), on exactly
        the images the student sees, jittered ones included.
    loss=callable: f(student_output, teacher_output or None, labels) -> scalar loss. With a callable
        the models may return any structure of tensors whose leading dimension is the batch (a
        tuple, list or dict of them, nested; e.g. (logits, {layer: features}) from
        kdlearn.features.WithFeatures), and f receives the structures as they are; "ce" and "kd"
        need models that return logits.
    jitter: shift every training image by a random whole number of pixels in [-jitter, jitter]
        along each axis, drawn afresh each epoch (the paper's input jitter; see `jitter_images`).
    weight_decay: decoupled weight decay (AdamW); 0 is plain Adam.
    lr_schedule: "cosine" lowers the learning rate from lr to 0 along half a cosine over all the
        steps, so that the last epochs settle the weights that get measured instead of moving
        them at the full rate; "constant" keeps lr throughout.
    progress: a progress bar over the epochs (tqdm.auto: a widget in Jupyter, text elsewhere).
    """
    if loss not in LOSSES and not callable(loss):
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    if loss == "kd" and teacher is None:
        raise ValueError("loss='kd' needs a teacher; pass teacher=, or loss='ce' to train on the labels")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if len(split.y) == 0:
        raise ValueError("split holds no examples")
    if epochs < 0 or batch_size < 1 or jitter < 0:
        raise ValueError(f"epochs and jitter must be >= 0 and batch_size >= 1, got epochs={epochs}, "
                         f"batch_size={batch_size}, jitter={jitter}")
    generator = torch.Generator().manual_seed(seed)  # shuffling and jitter
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * math.ceil(len(split.y) / batch_size))

    def lr_factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * step / steps)) if lr_schedule == "cosine" else 1.0

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    if teacher is not None:
        teacher.eval()
    # Without jitter the teacher sees the same images every epoch: its logits are computed once.
    fixed_teacher_output = logits(teacher, split.x) if teacher is not None and not jitter else None
    history = History()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout
        model.train()
        for _ in tqdm(range(epochs), desc="training", unit="epoch", disable=not progress, leave=False):
            order = torch.randperm(len(split.y), generator=generator)
            total, count = 0.0, 0
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                x, y = split.x[batch], split.y[batch]
                if jitter:
                    x = jitter_images(x, jitter, generator)
                teacher_output = None
                if fixed_teacher_output is not None:
                    teacher_output = select(fixed_teacher_output, batch)
                elif teacher is not None:
                    with torch.no_grad():
                        teacher_output = teacher(x)
                student_output = model(x)
                if loss == "ce":
                    batch_loss = F.cross_entropy(_logits_only(student_output, "model"), y)
                elif loss == "kd":
                    batch_loss = kd_loss(_logits_only(student_output, "model"), _logits_only(teacher_output, "teacher"),
                                         y, T=T, alpha=alpha)
                else:
                    batch_loss = loss(student_output, teacher_output, y)
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                schedule.step()
                total += batch_loss.item() * len(batch)
                count += len(batch)
            history.loss.append(total / count)
    model.eval()
    return history


def select(output, rows: torch.Tensor):
    """The rows ``rows`` of every tensor in ``output``: a tensor, or a tuple, list or dict of them
    (nested), each with the examples along its first dimension."""
    if isinstance(output, torch.Tensor):
        return output[rows]
    if isinstance(output, dict):
        return {key: select(value, rows) for key, value in output.items()}
    if isinstance(output, (tuple, list)):
        return type(output)(select(value, rows) for value in output)
    raise ValueError(f"a model's output must be a tensor, or a tuple, list or dict of tensors; got "
                     f"{type(output).__name__}")


def _logits_only(output, name: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"loss='ce' and loss='kd' need a {name} that returns logits, but it returned a "
                         f"{type(output).__name__}; pass a loss callable, which receives the outputs as they are")
    return output


def jitter_images(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each square image in x (N, side*side) by its own random (dy, dx), each a whole number
    of pixels drawn uniformly from [-max_shift, max_shift]; pixels shifted in from outside are 0.

    out[n, r, c] = image[n, r - dy, c - dx] where that lies inside the image, else 0: a positive
    dy moves the content down, a positive dx moves it right. The paper jitters 28x28 MNIST by up
    to 2 pixels; on 8x8 digits the smallest shift, 1 pixel, is already an eighth of the image, so
    kdlearn.experiments.hinton does not jitter the digits.
    """
    n, features = x.shape
    side = math.isqrt(features)
    if side * side != features:
        raise ValueError(f"x must hold square images flattened to (N, side*side), got {features} features")
    if max_shift == 0:
        return x
    shift = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator)
    padded = F.pad(x.view(n, side, side), (max_shift,) * 4)  # zeros all round
    # Row r of the output is row r - dy of the image, which is row r - dy + max_shift of padded.
    rows = torch.arange(side) - shift[0, :, None] + max_shift  # (n, side)
    cols = torch.arange(side) - shift[1, :, None] + max_shift
    out = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.reshape(n, features)


# --- measurements, all in eval mode without gradient -------------------------------------------


@contextmanager
def _evaluating(*models: nn.Module):
    """Eval mode and no gradient for the block; each model's own mode is restored afterwards."""
    modes = [model.training for model in models]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits (or whatever it returns) for images x, in eval mode (no dropout) and without gradient."""
    with _evaluating(model):
        return model(x)


def predictions(model: nn.Module, split) -> torch.Tensor:
    """The predicted class (argmax of the logits) of every example in split, (N,) int64."""
    return logits(model, split.x).argmax(dim=-1)


def test_errors(model: nn.Module, split) -> int:
    """How many examples of split the model gets wrong: the paper's measure (errors of 10,000)."""
    return int((predictions(model, split) != split.y).sum())


def accuracy(model: nn.Module, split) -> float:
    """The fraction of examples of split the model gets right."""
    return 1.0 - test_errors(model, split) / len(split.y)


def agreement(student: nn.Module, teacher: nn.Module, split) -> float:
    """The fraction of examples of split on which student and teacher predict the same class,
    right or wrong: how faithfully the student copies the teacher."""
    return float((predictions(student, split) == predictions(teacher, split)).float().mean())


def expected_calibration_error(model: nn.Module, split, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017), with equal-width confidence bins.

        ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|

    Confidence is the largest softmax probability (at T = 1) of an example. The interval [0, 1]
    is cut into `bins` equal bins, (k/bins, (k+1)/bins], the first one closed at 0 as well; for
    the n_b examples whose confidence falls in bin b, accuracy_b is the fraction predicted right
    and confidence_b their mean confidence. Empty bins add nothing. 0 is perfectly calibrated;
    an overconfident net has confidence above accuracy.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    probabilities = torch.softmax(logits(model, split.x).double(), dim=-1)
    confidence, predicted = probabilities.max(dim=-1)
    correct = (predicted == split.y).double()
    # Bin k holds confidences in (k/bins, (k+1)/bins]; ceil(c * bins) - 1 is that k (0 goes to bin 0).
    bin_of = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    gap = torch.bincount(bin_of, weights=correct, minlength=bins) - torch.bincount(bin_of, weights=confidence,
                                                                                   minlength=bins)
    return float(gap.abs().sum() / len(correct)) if len(correct) else 0.0
