"""Who teaches whom: the distillation schemes of lesson 07, as pieces for kdlearn.training.train.

Each scheme is one train() call (or a few), never a loop of its own:

* online mutual learning (Zhang et al. 2018, https://arxiv.org/abs/1706.00384): the students
  train together as one ``Cohort``, whose forward stacks their logits, with
  ``mutual_learning_loss``:
      train(Cohort([a, b]), split, loss=lambda s, t, y: mutual_learning_loss(s, y))
* several teachers: ``Ensemble(teachers)`` is one teacher whose softened distribution is the
  weighted mean of theirs (``ensemble_logits``), for train(..., teacher=Ensemble(...), loss="kd").
* born-again networks (Furlanello et al. 2018, https://arxiv.org/abs/1805.04770) and the
  teacher-assistant chain (Mirzadeh et al. 2020, https://arxiv.org/abs/1902.03393): each net is
  distilled from the one before, ``distillation_chain`` (same-size nets for born-again; shrinking
  ones for the assistant chain).
* "Be your own teacher" (Zhang et al. 2019, https://arxiv.org/abs/1905.08094): auxiliary
  classifiers on a network's shallow blocks (``with_auxiliary_heads``, a kdlearn.features.WithFeatures)
  learn from its deepest classifier as it trains (``self_distillation_loss``).

Conventions, those of kdlearn.losses: logits (..., C), labels class indices; fp16 and bf16 are
computed in fp32 and the loss returned in fp32; reduction "none", "sum" or "mean" over the rows;
the soft terms carry T², as kd_loss's does; bad input raises a ValueError naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlearn import _validation as check
from kdlearn import training
from kdlearn.features import WithFeatures, capture
from kdlearn.losses import _at_least_fp32, kd_loss, kl_divergence, reduce_rows


class Cohort(nn.Module):
    """Several networks trained together: forward(x) is their logits stacked, (K, N, C).

    One optimizer over the cohort's parameters updates every member; with mutual_learning_loss,
    whose peers' targets are detached, each member gets exactly the gradient of its own loss."""

    def __init__(self, members: Iterable[nn.Module]):
        super().__init__()
        members = _networks(members)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            raise ValueError("members must be a non-empty list of torch.nn.Module networks")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members])


def mutual_learning_loss(
    stacked_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    T: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Deep mutual learning's loss for a cohort of K students, summed over the students.

        loss_k = CE(q_k, y) + T² / (K - 1) * sum_{l != k} KL(stopgrad(p_l) || p_k)
        loss   = sum_k loss_k

    p_k = softmax(z_k / T) is student k at temperature T, q_k = softmax(z_k) at T = 1. The paper
    (T = 1) alternates the students' updates; here they are updated at once, and each peer's
    distribution is detached, so that loss_k's gradient reaches student k only: the sum's
    gradient with respect to z_k is then loss_k's. The factor T² keeps the soft term's gradient
    independent of T, as in kd_loss. A cohort of one (K = 1) is plain cross-entropy.

    stacked_logits: (K, N, C), e.g. Cohort's output. labels: (N,) class indices.
    reduction: over the rows of each student, then summed over the students; "none" returns
    (K, N), each student's loss per row.
    """
    check.check_logits("stacked_logits", stacked_logits)
    if stacked_logits.dim() != 3:
        raise ValueError(f"stacked_logits must have shape (K, N, C), one row of logits per student and example, "
                         f"got {tuple(stacked_logits.shape)}")
    K, N, C = stacked_logits.shape
    _check_labels(labels, N, C)
    T = check.check_temperature(T)
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    logits = _at_least_fp32(stacked_logits)
    per_row = torch.stack([
        F.cross_entropy(logits[k], labels, reduction="none")
        + sum(T * T / (K - 1) * kl_divergence(logits[k], logits[peer].detach(), T=T, reduction="none", backend="torch")
              for peer in range(K) if peer != k)
        for k in range(K)])
    if reduction == "none":
        return per_row
    valid = torch.ones(N, dtype=torch.bool, device=logits.device)
    return sum(reduce_rows(per_row[k], valid, reduction) for k in range(K))


def ensemble_logits(logits: torch.Tensor | Sequence[torch.Tensor], weights=None, *, T: float = 1.0) -> torch.Tensor:
    """The logits of an ensemble whose distribution at temperature T is the weighted mean of its
    members' distributions at T:

        out = T * log sum_k w_k softmax(z_k / T)      so that softmax(out / T) = sum_k w_k softmax(z_k / T)

    logits: the members' logits, a list of (..., C) tensors or one (K, ..., C) tensor. weights:
    K non-negative numbers, normalised here to sum to 1; None weighs every member 1/K (the
    uniform average of Hinton et al.'s ensembles). The mean is of probabilities, not of logits:
    averaging logits is a different, sharper ensemble. Computed in log space (logsumexp).
    """
    stacked = torch.stack(list(logits)) if not isinstance(logits, torch.Tensor) else logits
    check.check_logits("logits", stacked)
    if stacked.dim() < 2:
        raise ValueError(f"logits must hold K members' logits, shape (K, ..., C), got {tuple(stacked.shape)}")
    T = check.check_temperature(T)
    K = stacked.shape[0]
    log_w = _log_weights(weights, K, stacked.device)
    log_p = torch.log_softmax(_at_least_fp32(stacked) / T, dim=-1)
    return T * torch.logsumexp(log_p + log_w.view(K, *[1] * (stacked.dim() - 1)), dim=0)


class Ensemble(nn.Module):
    """Several teachers as one: forward(x) is ensemble_logits of their logits, at temperature T.

    Pass the T of the distillation loss: train(student, split, teacher=Ensemble(teachers, T=4.0),
    loss="kd", T=4.0) distils the weighted mean of the teachers' distributions at T = 4."""

    def __init__(self, teachers: Iterable[nn.Module], weights=None, *, T: float = 1.0):
        super().__init__()
        teachers = _networks(teachers)
        if not teachers or not all(isinstance(t, nn.Module) for t in teachers):
            raise ValueError("teachers must be a non-empty list of torch.nn.Module networks")
        self.teachers = nn.ModuleList(teachers)
        self.T = check.check_temperature(T)
        self.register_buffer("log_weights", _log_weights(weights, len(teachers), torch.device("cpu")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_logits([teacher(x) for teacher in self.teachers], self.log_weights.exp(), T=self.T)


def distillation_chain(teacher: nn.Module, students: Sequence[nn.Module], split, **train_arguments) -> list:
    """Distil each of ``students`` in turn from the one before it, the first from ``teacher``:
    one kd train() call per net (train_arguments are train's: T, alpha, epochs, lr, seed...).

    Same-size students are born-again generations (Furlanello et al.); shrinking ones are a
    teacher-assistant chain (Mirzadeh et al.: teacher -> assistant -> student). Returns the
    History of each student's training; the students are trained in place."""
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if not students or not all(isinstance(s, nn.Module) for s in students):
        raise ValueError("students must be a non-empty list of torch.nn.Module networks")
    for name in ("teacher", "loss"):
        if name in train_arguments:
            raise ValueError(f"{name} is set by distillation_chain (kd from the previous net); do not pass it")
    histories, previous = [], teacher
    for student in students:
        histories.append(training.train(student, split, teacher=previous, loss="kd", **train_arguments))
        previous = student
    return histories


def with_auxiliary_heads(model: nn.Module, names: Sequence[str], example: torch.Tensor,
                         num_classes: int | None = None) -> WithFeatures:
    """``model`` with a linear classifier on the output of each of its submodules ``names``
    (flattened), for "Be your own teacher": forward(x) is (logits, {name: that head's logits}).

    ``example`` (a batch of inputs) tells the widths of those outputs and, by default, the
    number of classes; the heads are drawn from the global RNG (seed it for repeatable heads)."""
    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty list of module names, got {names!r}")
    if not isinstance(example, torch.Tensor) or example.dim() < 1 or example.shape[0] < 1:
        raise ValueError("example must be a tensor holding a batch of at least one input")
    with torch.no_grad(), capture(model, names) as outputs:
        logits = model(example)
    num_classes = logits.shape[-1] if num_classes is None else num_classes
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    heads = {name: nn.Sequential(nn.Flatten(), nn.Linear(math.prod(outputs[name].shape[1:]), num_classes))
             for name in names}
    return WithFeatures(model, names, adapters=heads)


def self_distillation_loss(
    output,
    labels: torch.Tensor,
    *,
    T: float,
    alpha: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """"Be your own teacher": the deepest classifier learns from the labels, each auxiliary
    classifier on a shallower block from the labels and from the deepest one.

        loss = CE(z, y) + sum_heads [ alpha * T² * KL(stopgrad(p_T) || q_T,head) + (1 - alpha) * CE(q_head, y) ]

    z: the deepest logits, p_T = softmax(z / T); each head's term is kd_loss with the detached
    deepest logits as its teacher, so the heads learn from the network without pulling its
    deepest classifier towards them. output is (logits, {name: head logits}), as
    with_auxiliary_heads returns. The paper's third term, a hint between each block's features
    and the deepest features, is left out.
    """
    if not (isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[1], dict)):
        raise ValueError(f"output must be (logits, {{name: head logits}}), as with_auxiliary_heads' model returns; "
                         f"got {type(output).__name__}")
    logits, heads = output
    check.check_logits("output[0]", logits)
    if not heads:
        raise ValueError("output[1] holds no auxiliary head: self-distillation needs at least one")
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    _check_labels(labels, logits.shape[0], logits.shape[-1])
    deepest = _at_least_fp32(logits)
    per_row = F.cross_entropy(deepest, labels, reduction="none")
    for name, head in heads.items():
        if not isinstance(head, torch.Tensor) or head.shape != logits.shape:
            raise ValueError(f"output[1][{name!r}] must be logits of the deepest classifier's shape "
                             f"{tuple(logits.shape)}, got {getattr(head, 'shape', type(head).__name__)}")
        per_row = per_row + kd_loss(head, deepest.detach(), labels, T=T, alpha=alpha, reduction="none",
                                    backend="torch")
    return reduce_rows(per_row, torch.ones_like(labels, dtype=torch.bool), reduction)


def _networks(networks) -> list:
    """networks as a list, empty for a single module (a cohort or an ensemble needs a list of them)."""
    if isinstance(networks, nn.Module) and not isinstance(networks, nn.ModuleList):
        return []
    return list(networks)


def _check_labels(labels, rows: int, classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32) or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-d int64 tensor of class indices, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} of shape {getattr(labels, 'shape', '?')}")
    if len(labels) != rows:
        raise ValueError(f"labels has {len(labels)} entries, one per row is needed ({rows})")
    if rows and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be class indices in [0, {classes}), got values from {labels.min().item()} "
                         f"to {labels.max().item()}")


def _log_weights(weights, K: int, device) -> torch.Tensor:
    """log of the K weights normalised to sum to 1 (uniform when None)."""
    if weights is None:
        return torch.full((K,), -math.log(K), device=device)
    w = torch.as_tensor(weights, dtype=torch.float64).detach()
    if w.shape != (K,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {K} finite non-negative numbers, not all 0 (one per member), "
                         f"got {w.tolist() if w.dim() <= 1 else tuple(w.shape)}")
    return (w / w.sum()).log().to(device=device, dtype=torch.float32)
