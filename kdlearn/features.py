"""Distilling intermediate representations: feature and relation losses, and a way to read a
model's intermediate outputs without editing its forward (``capture``, and ``WithFeatures``, a
model that returns them beside its logits, for kdlearn.training.train's loss callables).

Feature losses ask the student's hidden layers to match the teacher's (FitNets hints, attention
transfer, the cosine between hidden states); relation losses ask only that the student arrange a
batch the way the teacher does (RKD distances and angles), so widths never need to match.

Conventions, shared with kdlearn.losses:

* fp16 and bf16 inputs are computed in fp32 and the loss is returned in fp32 (float64 stays float64).
* ``reduction`` is "none", "sum" or "mean"; each function says what a row is and what the mean
  is over. Rows left out by ``mask == False`` add 0 and get a zero gradient; "mean" over no row is 0.
* Gradients flow into both arguments: pass the teacher's tensors detached (or computed under
  torch.no_grad()) unless the teacher trains too.
* Degenerate inputs (all-zero feature maps, zero hidden vectors, duplicate embeddings) give finite
  values and finite gradients: a zero vector has no direction, and its cosine counts as 0.
* The scale-free quantities (attention maps, cosines, RKD's relations) are computed on inputs
  divided by their largest magnitude, which they do not depend on: any finite input stays within
  fp32's range, however large or small.
* Bad input raises a ValueError that names the argument.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterable, Iterator
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from kdlearn import _validation as check
from kdlearn.losses import _at_least_fp32, reduce_rows


def hint_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """FitNets' hint loss (Romero et al. 2015, https://arxiv.org/abs/1412.6550): the squared error
    between the projected student features and the teacher's, elementwise.

        e = (r(u_s) - u_t)²       elementwise, r = projection (the identity when None)

    reduction="none" returns e (the teacher's shape), "sum" its sum, "mean" its mean over every
    element, batch and feature dimensions alike: the same as F.mse_loss(r(u_s), u_t) (but 0, not
    NaN, for an empty batch). The paper
    writes 1/2 ||r(u_s) - u_t||² per example, which is half of "sum" per example.

    projection is any callable, typically an nn.Linear or a 1x1 nn.Conv2d mapping the student's
    width to the teacher's, trained with the student (give its parameters to the optimizer).
    """
    _check_features("student_features", student_features)
    _check_features("teacher_features", teacher_features)
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    if projection is not None and not callable(projection):
        raise ValueError(f"projection must be a callable (an nn.Module such as nn.Linear) or None, "
                         f"got {type(projection).__name__}")
    projected = student_features if projection is None else projection(student_features)
    if not isinstance(projected, torch.Tensor):
        raise ValueError(f"projection must return a tensor, got {type(projected).__name__}")
    what = "student_features" if projection is None else "projection(student_features)"
    if projected.shape != teacher_features.shape:
        raise ValueError(
            f"{what} has shape {tuple(projected.shape)} but teacher_features has shape "
            f"{tuple(teacher_features.shape)}; they must match: pass a projection that maps the student's "
            f"width to the teacher's (nn.Linear for (N, D) features, a 1x1 nn.Conv2d for (N, C, H, W))"
        )
    _check_same_device("student_features", projected, "teacher_features", teacher_features)
    _check_finite(what, projected)
    _check_finite("teacher_features", teacher_features)
    error = (_at_least_fp32(projected) - _at_least_fp32(teacher_features)).square()
    if reduction == "none":
        return error
    return error.sum() if reduction == "sum" else error.sum() / max(error.numel(), 1)


def attention_map(features: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention map (2017, https://arxiv.org/abs/1612.03928).

        Q = sum_c |A_c|^p        over the C channels of A (N, C, H, W): one (H, W) map per example
        attention_map(A) = vec(Q) / ||vec(Q)||_2        flattened to (N, H*W), unit length per example

    p > 1 weights the positions where some channel fires strongly more (the paper uses p = 2).
    The map is unchanged by scaling the features by a constant, so the student matches where the
    teacher looks, not how large its activations are. An all-zero feature map gives the zero map
    (no NaN, and a finite gradient). Computed in at least fp32 (|A|^p overflows fp16 quickly).
    """
    _check_feature_map("features", features)
    _check_finite("features", features)
    p = _check_power(p)
    q = _rescaled(_at_least_fp32(features), dim=(1, 2, 3)).abs().pow(p).sum(dim=1).flatten(1)
    return q / _safe_norm(q)


def attention_transfer_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    p: float = 2,
    reduction: str = "mean",
) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017): the squared L2 distance between the
    student's and the teacher's normalised attention maps, per example.

        loss_n = || attention_map(S)_n - attention_map(T)_n ||_2²        in [0, 4]

    S is (N, C_s, H, W) and T (N, C_t, H, W): the channel counts may differ, the spatial sizes must
    match (pool or interpolate the larger map first). reduction="none" returns the N values, "sum"
    their sum, "mean" their mean over the batch.

    Squared, as in the authors' code, rather than the plain distance of the paper's formula (2):
    the squared distance has a gradient that vanishes as the maps meet and is defined where they
    are equal, whereas the plain distance's gradient keeps unit length and is 0/0 at equality. The
    authors' code also averages over the H*W positions, so its value is this one divided by H*W
    (the weight they train with, beta / 2 with beta = 1000, is sized for that scale); they sum the
    losses of several layers.
    """
    _check_feature_map("student_features", student_features)
    _check_feature_map("teacher_features", teacher_features)
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    s, t = tuple(student_features.shape), tuple(teacher_features.shape)
    if s[0] != t[0] or s[2:] != t[2:]:
        raise ValueError(
            f"student_features {s} and teacher_features {t} must have the same batch size N and spatial "
            f"size (H, W) (the channel counts may differ); resize the larger map first, e.g. with "
            f"F.adaptive_avg_pool2d(features, {tuple(min(a, b) for a, b in zip(s[2:], t[2:]))})"
        )
    _check_same_device("student_features", student_features, "teacher_features", teacher_features)
    _check_finite("student_features", student_features)
    _check_finite("teacher_features", teacher_features)
    per_example = (attention_map(student_features, p) - attention_map(teacher_features, p)).square().sum(dim=1)
    return reduce_rows(per_example, torch.ones_like(per_example, dtype=torch.bool), reduction)


def cosine_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """DistilBERT's cosine embedding loss (Sanh et al. 2019, https://arxiv.org/abs/1910.01108):
    aligns the directions of the student's and the teacher's hidden states.

        loss_i = 1 - cos(h_s_i, h_t_i) = 1 - <h_s_i, h_t_i> / (||h_s_i|| ||h_t_i||)        in [0, 2]

    per position i of hidden states of shape (..., D), the same for both. mask (a bool tensor of
    the leading shape, True = the position counts) leaves positions out, e.g. padding tokens.
    reduction="none" returns loss_i (the leading shape, 0 where left out), "sum" the sum over the
    positions that count, "mean" their mean (0 when none counts): DistilBERT's term. A zero
    vector has no direction: its cosine counts as 0 (a loss of 1) with a finite gradient.
    """
    _check_features("student_hidden", student_hidden)
    _check_features("teacher_hidden", teacher_hidden)
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    if student_hidden.dim() == 0 or student_hidden.shape[-1] == 0:
        raise ValueError(f"student_hidden must have shape (..., D) with D >= 1, got {tuple(student_hidden.shape)}")
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden {tuple(teacher_hidden.shape)} "
            f"must have the same shape (..., D); if the widths differ, project the student's hidden states "
            f"to the teacher's width first (an nn.Linear trained with the student)"
        )
    _check_same_device("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    valid = _check_mask(mask, student_hidden)
    keep = valid.unsqueeze(-1)
    # Left-out positions may hold anything (padding): zeroed, they can put no NaN into the gradient.
    s = _at_least_fp32(torch.where(keep, student_hidden, 0.0))
    t = _at_least_fp32(torch.where(keep, teacher_hidden, 0.0))
    _check_finite("student_hidden", s)
    _check_finite("teacher_hidden", t)
    s, t = _rescaled(s, dim=-1), _rescaled(t, dim=-1)
    cosine = (s * t).sum(-1) / (_safe_norm(s) * _safe_norm(t)).squeeze(-1)
    return reduce_rows(1.0 - cosine, valid, reduction)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's distance loss (Park et al. 2019, https://arxiv.org/abs/1904.05068): the student
    keeps the teacher's pairwise distances between the examples of a batch, up to scale.

        psi(x_i, x_j) = ||x_i - x_j||_2 / mu,     mu = the mean of ||x_i - x_j||_2 over the pairs i < j
        loss = mean over the N(N-1)/2 pairs i < j of huber(psi_s(i, j) - psi_t(i, j))
        huber(d) = d²/2 if |d| < 1 else |d| - 1/2        (smooth L1, delta 1)

    student (N, D_s) and teacher (N, D_t) embeddings of the same N >= 2 examples; the widths may
    differ. Dividing by mu makes the loss blind to the embeddings' overall scale, and distances
    are blind to rotations and translations. Duplicate examples (distance 0) give finite
    gradients (0 at that pair), and a batch of identical points has psi = 0. The authors' code
    excludes zero distances from mu and averages over all N² ordered pairs, the diagonal's zeros
    included, so its value is this one times (N - 1) / N when no two points coincide.
    """
    student, teacher = _check_embeddings(student, teacher, at_least=2, needs="a pair")
    return F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher), beta=1.0)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's angle loss (Park et al. 2019): the student keeps the angles that the teacher's
    embeddings form in every triplet of examples.

        cos_j(i, k) = <e_ji, e_jk>,   e_ji = (x_i - x_j) / ||x_i - x_j||: the angle at the middle point x_j
        loss = mean over the N(N-1)(N-2) triplets of distinct i, j, k of huber(cos_s - cos_t)

    with huber as in rkd_distance_loss. student (N, D_s) and teacher (N, D_t), N >= 3; widths may
    differ. Angles are blind to scale, rotation and translation. A duplicate point gives a zero
    difference, whose direction counts as 0 (cosines of 0 where it enters), with finite gradients.
    The authors' code averages over all N³ index triplets, the degenerate ones (i = j, j = k or
    i = k) included, which add 0; so its value is this one times (N - 1)(N - 2) / N².
    """
    student, teacher = _check_embeddings(student, teacher, at_least=3, needs="a triplet")
    n = student.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=student.device)
    distinct = ~(eye.unsqueeze(0) | eye.unsqueeze(1) | eye.unsqueeze(2))  # [j, i, k]: i, j, k pairwise distinct
    return F.smooth_l1_loss(_middle_cosines(student)[distinct], _middle_cosines(teacher)[distinct], beta=1.0)


@contextlib.contextmanager
def capture(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, object]]:
    """Read intermediate outputs by module name, without editing the model's forward.

        with capture(model, ["layer2", "layer3.1.conv2"]) as outputs:
            logits = model(x)
            hint = hint_loss(projection(outputs["layer2"]), teacher_features)

    names are those of model.named_modules() ("" is the model itself). Inside the block each
    forward of a named module stores its output in the dict under its name, replacing the
    previous one (a module called twice per forward keeps the second call's output). The outputs
    keep their autograd graph, so a loss on them trains the model. The forward hooks are removed
    when the block ends, also when it raises; the dict keeps the last outputs.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ValueError(f"names must be a list of module names, got {names!r}; for one module pass [name]")
    names = list(names)
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"names must be a list of module names (strings), got {names!r}")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            # the closest spellings first, then the model's first modules
            known = list(dict.fromkeys(difflib.get_close_matches(name, modules, n=3) + [m for m in modules if m]))
            raise ValueError(f"names: {type(model).__name__} has no submodule named {name!r}; valid names "
                             f"(from model.named_modules()) include {', '.join(map(repr, known[:8]))}")
    outputs: dict[str, object] = {}

    def store(name):
        def hook(module, inputs, output):
            outputs[name] = output
        return hook

    handles = [modules[name].register_forward_hook(store(name)) for name in dict.fromkeys(names)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


# --- the pieces the losses share -------------------------------------------------------------


class WithFeatures(nn.Module):
    """A model that also returns some of its intermediate outputs: forward(x) is (logits, features),
    features[name] the output of model's submodule ``name`` passed through adapters[name], if given.

        student = WithFeatures(models.cnn(channels=(4, 8)), ["block2"],
                               adapters={"block2": nn.Conv2d(8, 32, 1)})   # a hint's projection
        teacher = WithFeatures(teacher_cnn, ["block2"])
        training.train(student, split, teacher=teacher, loss=lambda s, t, y: ... hint_loss(s[1]["block2"], t[1]["block2"]))

    The adapters are submodules, so they train with the model (a FitNets projection, or an
    auxiliary classifier on a shallow block). The model's own forward is untouched: ``.model`` is
    the plain network, to evaluate or to save. The hooks live only during each forward (capture)."""

    def __init__(self, model: nn.Module, names: Iterable[str], adapters: dict[str, nn.Module] | None = None):
        super().__init__()
        if isinstance(names, str):
            raise ValueError(f"names must be a list of module names, got {names!r}; for one module pass [name]")
        self.model, self.names = model, tuple(names)
        adapters = dict(adapters or {})
        unknown = sorted(set(adapters) - set(self.names))
        if unknown:
            raise ValueError(f"adapters has entries for {unknown}, which are not in names {list(self.names)}")
        with capture(model, self.names):   # checks the names now rather than at the first forward
            pass
        # ModuleDict keys may not contain ".", and module names do: keep the adapters in names' order
        self.adapters = nn.ModuleList(adapters.get(name, nn.Identity()) for name in self.names)

    def forward(self, x):
        with capture(self.model, self.names) as outputs:
            logits = self.model(x)
        return logits, {name: adapter(outputs[name]) for name, adapter in zip(self.names, self.adapters)}


def _rescaled(x: torch.Tensor, dim) -> torch.Tensor:
    """x divided by its largest magnitude over dim (left as it is where that is 0), the divisor a
    constant for autograd. Only for quantities that this scale cannot change: there it keeps |x|^p
    and squared norms inside fp32's range (features of 1e-30 and of 1e30 alike), and the gradient
    stays exact, since a function f with f(x / c) = f(x) has d/dx f(x / c) = f'(x) for fixed c."""
    scale = x.detach().abs().amax(dim=dim, keepdim=True)
    return x / torch.where(scale > 0, scale, 1.0)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """||x||_2 over the last dimension (kept), 1 where x is zero: dividing by it sends a zero
    vector to itself, and no 0/0 reaches the gradient (the norm's own is 0/0 at zero)."""
    squared = x.square().sum(dim=-1, keepdim=True)
    return torch.where(squared > 0, squared, 1.0).sqrt()


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j|| / mu over the pairs i < j, mu their mean (psi = 0 when every point coincides).

    Distances come from differences, not from the Gram matrix, whose rounding would give
    duplicates a small nonzero (or negative squared) distance."""
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    squared = (x[i] - x[j]).square().sum(dim=-1)
    distances = torch.where(squared > 0, torch.where(squared > 0, squared, 1.0).sqrt(), 0.0)
    mu = distances.mean()
    return distances / torch.where(mu > 0, mu, 1.0)


def _middle_cosines(x: torch.Tensor) -> torch.Tensor:
    """[j, i, k] = <e_ji, e_jk>, the cosine of the angle at x_j, for all index triplets."""
    differences = x.unsqueeze(0) - x.unsqueeze(1)  # [j, i] = x_i - x_j
    directions = differences / _safe_norm(differences)
    return directions @ directions.transpose(1, 2)


def _check_features(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; "
                         f"convert it with {name}.float()")


def _check_feature_map(name: str, x) -> None:
    _check_features(name, x)
    if x.dim() != 4 or 0 in x.shape[1:]:
        raise ValueError(f"{name} must be a feature map of shape (N, C, H, W) with C, H, W >= 1, "
                         f"got {tuple(x.shape)}")


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")


def _check_power(p) -> float:
    # p < 1 would give an infinite gradient at every zero activation (ReLU outputs often are).
    if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    return float(p)


def _check_mask(mask, hidden: torch.Tensor) -> torch.Tensor:
    """The boolean tensor of positions that count (all, when mask is None)."""
    rows = tuple(hidden.shape[:-1])
    if mask is None:
        return torch.ones(rows, dtype=torch.bool, device=hidden.device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor (True = position counts), got "
                         f"{f'dtype {mask.dtype}' if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if tuple(mask.shape) != rows:
        raise ValueError(f"mask must have the hidden states' leading shape {rows}, got {tuple(mask.shape)} "
                         f"(hidden states {tuple(hidden.shape)})")
    if mask.device != hidden.device:
        raise ValueError(f"mask must be on the hidden states' device {hidden.device}, got {mask.device}")
    return mask


def _check_embeddings(student, teacher, at_least: int, needs: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (N, D) float tensors of the same N >= at_least, on one device; returned in at least
    fp32, each divided by its largest magnitude (RKD's relations do not depend on it)."""
    for name, x in (("student", student), ("teacher", teacher)):
        _check_features(name, x)
        if x.dim() != 2 or x.shape[1] == 0:
            raise ValueError(f"{name} must be embeddings of shape (N, D) with D >= 1, got {tuple(x.shape)}; "
                             f"flatten feature maps first (x.flatten(1))")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student and teacher must embed the same N examples, got N = {student.shape[0]} "
                         f"and {teacher.shape[0]} (shapes {tuple(student.shape)} and {tuple(teacher.shape)})")
    if student.shape[0] < at_least:
        raise ValueError(f"student and teacher must hold at least {at_least} examples (N >= {at_least}) "
                         f"to form {needs}, got N = {student.shape[0]}")
    _check_same_device("student", student, "teacher", teacher)
    for name, x in (("student", student), ("teacher", teacher)):
        _check_finite(name, x)
    return _rescaled(_at_least_fp32(student), dim=(0, 1)), _rescaled(_at_least_fp32(teacher), dim=(0, 1))
