"""Tests of kdlearn.topk_kl (the PyTorch specification) against an independent numpy computation
of the (k + 1)-bucket KL, the identities it must satisfy, its gradient, masking, reductions, fuzzed
extremes and every argument check. Its docstring in kdlearn/losses.py is the specification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, rel_entr, softmax

import kdlearn
from kdlearn.losses import _log_rest
from tests.test_losses import np_reduce
from tests.test_losses_fuzz import logit_pairs

pytestmark = pytest.mark.usefixtures("single_torch_thread")

INF = math.inf
REDUCTIONS = ["none", "sum", "mean"]


# --- the numpy reference, written from the docstring's formula --------------------------------


def np_topk_kl(student: np.ndarray, log_p_topk: np.ndarray, indices: np.ndarray, T: float) -> np.ndarray:
    """Per-row KL over the k cached tokens and the tail. The student's tail is summed directly
    over the tokens outside the cache (not as 1 - sum of the cached ones), the teacher's is
    1 - sum_j p_j, as the cache holds nothing else."""
    q = softmax(student / T, axis=-1)
    q_topk = np.take_along_axis(q, indices, axis=-1)
    cached = np.zeros(q.shape, dtype=bool)
    np.put_along_axis(cached, indices, True, axis=-1)
    q_tail = np.where(cached, 0.0, q).sum(axis=-1)
    p_topk = np.exp(log_p_topk)
    p_tail = np.maximum(1.0 - p_topk.sum(axis=-1), 0.0)
    return rel_entr(p_topk, q_topk).sum(axis=-1) + rel_entr(p_tail, q_tail)


# --- inputs -----------------------------------------------------------------------------------


def topk_cache(teacher: np.ndarray, T: float, k: int, seed: int = 0):
    """The cache a teacher would leave: its k largest log-probabilities at temperature T and their
    indices, in shuffled order (the order of the cached entries must not matter)."""
    log_p = log_softmax(teacher / T, axis=-1)
    indices = np.argsort(-log_p, axis=-1, kind="stable")[..., :k]
    rng = np.random.default_rng(seed)
    indices = rng.permuted(indices, axis=-1)
    return np.take_along_axis(log_p, indices, axis=-1), indices


def make_case(shape, k, T, seed=0):
    """float64 student logits, a top-k cache of a random teacher, and labels with every third row
    ignored (-100), with the boolean array of the rows that count."""
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(scale=2.0, size=shape), rng.normal(scale=2.0, size=shape)
    log_p_topk, indices = topk_cache(teacher, T, k, seed)
    valid = np.ones(shape[:-1], dtype=bool)
    valid.flat[::3] = False
    labels = np.where(valid, rng.integers(0, shape[-1], size=shape[:-1]), -100)
    return dict(student=student, teacher=teacher, log_p_topk=log_p_topk, indices=indices, labels=labels,
                valid=valid)


def tt(x, dtype=torch.float64, grad=False) -> torch.Tensor:
    out = torch.as_tensor(np.asarray(x)).to(dtype)
    return out.requires_grad_() if grad else out


def call(c, dtype=torch.float64, grad=False, **kwargs):
    """topk_kl on a case's tensors (student and cache in dtype, labels as given)."""
    student = tt(c["student"], dtype, grad)
    loss = kdlearn.topk_kl(student, tt(c["log_p_topk"], dtype), tt(c["indices"], torch.long),
                           labels=tt(c["labels"], torch.long), **kwargs)
    return loss, student


def assert_matches(got: torch.Tensor, expected, rtol=1e-10, atol=1e-12):
    expected = np.asarray(expected, dtype=np.float64)
    assert tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=rtol, atol=atol)


# === values against numpy ====================================================================


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, k", [((5, 7), 3), ((2, 3, 6), 2), ((4, 50), 10), ((3, 9), 1)], ids=str)
@pytest.mark.parametrize("T", [0.5, 1.0, 2.5])
def test_matches_numpy(T, shape, k, reduction):
    """sum_j p_j log(p_j / q_j) + p_tail log(p_tail / q_tail) per row, reduced over counted rows."""
    c = make_case(shape, k, T)
    rows = np_topk_kl(c["student"], c["log_p_topk"], c["indices"], T)
    got, _ = call(c, T=T, reduction=reduction)
    assert_matches(got, np_reduce(rows, c["valid"], reduction))
    if reduction == "none":  # left-out rows are exactly 0
        assert torch.equal(got[tt(~c["valid"], torch.bool)], torch.zeros(int((~c["valid"]).sum()),
                                                                          dtype=got.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_lower_precision_inputs_give_an_fp32_loss(dtype):
    """Student logits and cache in fp32/bf16/fp16: computed in fp32, equal to the float64 value of
    the same rounded inputs up to fp32 rounding; the student gradient comes back in its dtype."""
    c = make_case((6, 40), 8, 1.5, seed=3)
    c["student"] = tt(c["student"], dtype).double().numpy()      # round once, so that numpy and
    c["log_p_topk"] = tt(c["log_p_topk"], dtype).double().numpy()  # the loss see the same values
    loss, student = call(c, dtype, grad=True, T=1.5, reduction="none")
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss.sum(), student)
    assert grad.dtype == dtype
    rows = np_topk_kl(c["student"], c["log_p_topk"], c["indices"], 1.5)
    assert_matches(loss, np_reduce(rows, c["valid"], "none"), rtol=1e-5, atol=1e-6)


# === identities ==============================================================================


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("T", [0.7, 2.0])
def test_whole_vocabulary_cached_is_the_forward_kl(T, dtype):
    """k = V: the tail is empty on both sides and topk_kl is kl_divergence(direction="forward"),
    masked (-inf) teacher entries included."""
    c = make_case((4, 3, 11), 11, T, seed=4)
    c["teacher"][0, :, 3] = c["student"][0, :, 3] = -INF
    c["log_p_topk"], c["indices"] = topk_cache(c["teacher"], T, 11, seed=4)
    got, _ = call(c, dtype, T=T, reduction="none")
    full = kdlearn.kl_divergence(tt(c["student"], dtype), tt(c["teacher"], dtype), T=T,
                                 labels=tt(c["labels"], torch.long), reduction="none")
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(got, full, rtol=tol, atol=tol)


def test_grows_with_k_up_to_the_full_kl():
    """Merging buckets can only lose information (data processing inequality): with the top-k
    nested in the top-(k+1), the divergence is non-decreasing in k and at most the full KL."""
    c = make_case((6, 30), 1, 1.0, seed=5)
    c["labels"] = np.zeros(6, dtype=np.int64)
    full = kdlearn.kl_divergence(tt(c["student"]), tt(c["teacher"]), reduction="none")
    previous = torch.zeros(6, dtype=torch.float64)
    for k in range(1, 31):
        c["log_p_topk"], c["indices"] = topk_cache(c["teacher"], 1.0, k, seed=k)
        got, _ = call(c, reduction="none")
        assert (got >= previous - 1e-14).all() and (got <= full + 1e-14).all()
        previous = got
        if k == 1:
            assert (got < full - 1e-3).all()  # the top token alone tells less than the whole row
    torch.testing.assert_close(previous, full, rtol=1e-12, atol=1e-14)


def test_only_the_bucket_masses_matter():
    """Moving the student's mass around inside the tail changes nothing; the student that matches
    the teacher's k + 1 bucket masses gets 0, however it spreads its tail."""
    c = make_case((3, 12), 4, 1.0, seed=6)
    c["labels"] = np.zeros(3, dtype=np.int64)
    before, _ = call(c, reduction="none")
    rng = np.random.default_rng(0)
    for row in range(3):  # permute the uncached logits of each row
        rest = np.setdiff1d(np.arange(12), c["indices"][row])
        c["student"][row, rest] = c["student"][row, rng.permutation(rest)]
    after, _ = call(c, reduction="none")
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-15)
    # a student with the teacher's cached probabilities and its tail spread unevenly
    p = np.exp(c["log_p_topk"])
    student = np.full((3, 12), -INF)
    for row in range(3):
        rest = np.setdiff1d(np.arange(12), c["indices"][row])
        shares = rng.dirichlet(np.ones(rest.size))
        student[row, c["indices"][row]] = np.log(p[row])
        student[row, rest] = np.log((1.0 - p[row].sum()) * shares)
    c["student"] = student
    matched, _ = call(c, reduction="none")
    torch.testing.assert_close(matched, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-14)


# === gradients ===============================================================================


@pytest.mark.parametrize("T", [0.6, 1.0, 3.0])
def test_gradient_is_the_documented_formula(T):
    """d loss / d z_v = (q_v - p_v) / T for a cached token, (q_v - p_tail q_v / q_tail) / T else."""
    c = make_case((4, 9), 3, T, seed=7)
    c["labels"] = np.zeros(4, dtype=np.int64)
    loss, student = call(c, grad=True, T=T, reduction="sum")
    (grad,) = torch.autograd.grad(loss, student)
    q = softmax(c["student"] / T, axis=-1)
    p = np.zeros_like(q)
    np.put_along_axis(p, c["indices"], np.exp(c["log_p_topk"]), axis=-1)
    cached = p > 0
    p_tail = 1.0 - p.sum(-1, keepdims=True)
    q_tail = np.where(cached, 0.0, q).sum(-1, keepdims=True)
    expected = np.where(cached, q - p, q - p_tail * q / q_tail) / T
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_in_float64(reduction):
    """Student logits and cached log-probabilities against finite differences, with masked
    (-inf) entries on both sides and left-out rows."""
    c = make_case((5, 8), 3, 1.3, seed=8)
    c["log_p_topk"][1, 2] = -INF  # a masked cache entry
    uncached = np.setdiff1d(np.arange(8), c["indices"][2])
    c["student"][2, uncached[:2]] = -INF  # masked student tokens outside the cache
    student = tt(c["student"], grad=True)
    log_p_topk = tt(c["log_p_topk"], grad=True)
    indices, labels = tt(c["indices"], torch.long), tt(c["labels"], torch.long)

    def fn(s, a):
        return kdlearn.topk_kl(s, a, indices, T=1.3, labels=labels, reduction=reduction)

    assert torch.autograd.gradcheck(fn, (student, log_p_topk))
    assert torch.autograd.gradgradcheck(fn, (student, log_p_topk))


# === masking and reductions ==================================================================


def test_left_out_rows_add_zero_and_get_zero_gradient_whatever_they_hold():
    """A left-out row may be a student of only -inf and a cache of padding (repeated, out-of-range
    indices, NaN or positive log-probabilities): no error, 0 in the loss, 0 gradient."""
    c = make_case((4, 6), 3, 1.0, seed=9)  # rows 0 and 3 are left out
    c["student"][0] = -INF
    c["indices"][0] = [0, 0, 0]
    c["indices"][3] = [-1, 6, 2]
    c["log_p_topk"][0] = [np.nan, 0.5, 0.0]
    c["log_p_topk"][3] = 0.0
    for reduction in REDUCTIONS:
        loss, student = call(c, grad=True, reduction=reduction)
        (grad,) = torch.autograd.grad(loss.sum(), student)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert torch.equal(grad[[0, 3]], torch.zeros(2, 6, dtype=torch.float64))
    kept = {key: value[[1, 2]] for key, value in c.items() if key != "teacher"}
    assert_matches(call(c, reduction="mean")[0], call(kept, reduction="mean")[0].item())
    assert_matches(call(c, reduction="sum")[0], call(kept, reduction="sum")[0].item())


@pytest.mark.parametrize("reduction, expected", [("none", [0.0, 0.0, 0.0]), ("sum", 0.0), ("mean", 0.0)])
def test_no_row_counts(reduction, expected):
    """Every row left out: "mean" is 0 (not 0 / 0), the gradient 0."""
    c = make_case((3, 5), 2, 1.0, seed=10)
    c["labels"][:] = -100
    loss, student = call(c, grad=True, reduction=reduction)
    assert_matches(loss, expected, atol=0)
    (grad,) = torch.autograd.grad(loss.sum(), student)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_rows_of_any_leading_shape_and_none():
    """(B, T, V) logits with a (B, T, k) cache; "none" keeps (B, T); no rows at all gives 0."""
    c = make_case((2, 3, 7), 2, 1.0, seed=11)
    assert call(c, reduction="none")[0].shape == (2, 3)
    empty = torch.zeros(0, 4)
    for reduction, shape in (("none", (0,)), ("sum", ()), ("mean", ())):
        loss = kdlearn.topk_kl(empty, torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.long), reduction=reduction)
        assert loss.shape == shape and loss.sum() == 0


# === numerics =================================================================================


def test_teacher_tail_in_log_space():
    """1 - sum_j exp(a_j) from log-probabilities: a tail of 1e-10 behind a top token is kept in
    fp32 (1 - exp(-1e-10) rounds to 0 there), a full or overfull cache leaves exactly 0, an
    empty one 1, and the gradient is finite at every one of these points."""
    log_probs = torch.tensor([[-1e-10, -INF], [math.log(0.5), math.log(0.5)], [-INF, -INF],
                              [math.log(0.3), math.log(0.2)], [0.0, -30.0]], requires_grad=True)
    rest = _log_rest(log_probs)
    torch.testing.assert_close(rest, torch.tensor([math.log(1e-10), -INF, 0.0, math.log(0.5), -INF]),
                               rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(torch.where(torch.isfinite(rest), rest, 0.0).sum(), log_probs)
    assert torch.isfinite(grad).all()


def test_student_tail_below_fp32_resolution_is_not_rounded_away():
    """The student's tail is summed over the uncached tokens, not taken as 1 - sum_j q_j: a tail of
    2e-18 (1 - sum_j q_j is exactly 0 in fp32) still gives the right loss, and the gradient that
    moves mass from the cached tokens to the tail: (q_v - p_v) / T and (q_v - p_tail) / T here."""
    z = np.array([40.0, 40.0, 0.0, -INF])
    student = torch.tensor(z[None], dtype=torch.float32, requires_grad=True)
    p = np.array([0.5, 0.3])
    loss = kdlearn.topk_kl(student, torch.log(torch.tensor(p[None], dtype=torch.float32)), torch.tensor([[0, 1]]))
    (grad,) = torch.autograd.grad(loss, student)
    q = softmax(z)
    expected = rel_entr(p, q[:2]).sum() + rel_entr(0.2, q[2])
    assert q[2] < 1e-17
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, torch.tensor([[q[0] - 0.5, q[1] - 0.3, q[2] - 0.2, 0.0]], dtype=torch.float32),
                               rtol=1e-6, atol=1e-7)


def test_student_without_a_tail():
    """A student that masks every uncached token has no tail: a teacher tail within the cache's
    rounding counts as 0 (the loss is the KL over the cached tokens), a real one makes the
    divergence infinite, with a finite gradient either way."""
    student = torch.tensor([[0.2, -0.4, -INF, -INF]], requires_grad=True)
    indices = torch.tensor([[1, 0]])
    q = softmax([0.2, -0.4])
    for tail, expected in ((1e-7, rel_entr([0.4, 0.6 - 1e-7], q[::-1]).sum()), (0.1, INF)):
        log_p = torch.log(torch.tensor([[0.4, 0.6 - tail]]))
        loss = kdlearn.topk_kl(student, log_p, indices)
        (grad,) = torch.autograd.grad(loss, student)
        torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-7)
        assert torch.isfinite(grad).all()


def test_cache_summing_to_one_within_rounding_is_no_error_and_no_nan():
    """Cached probabilities that sum to a hair over 1 (rounding) mean an empty teacher tail."""
    log_p = torch.tensor([[math.log(0.6) + 1e-7, math.log(0.4) + 1e-7]])
    student = torch.tensor([[0.3, -0.2, 1.0]], requires_grad=True)
    loss = kdlearn.topk_kl(student, log_p, torch.tensor([[2, 0]]))
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(grad).all()


@settings(max_examples=100)
@given(c=logit_pairs(masks=("labels",)), k_share=st.floats(0.0, 1.0),
       reduction=st.sampled_from(REDUCTIONS))
def test_fuzz_never_negative_never_nan(c, k_share, reduction):
    """Any shape, k, T, dtype, logits of ±1e4, -inf entries, tiny tails (small T), left-out rows:
    a finite loss >= 0 per row, finite gradients, zero gradient off the counted rows."""
    V = c["s"].shape[-1]
    k = 1 + round(k_share * (V - 1))
    log_p, indices = topk_cache(c["t"].numpy(), c["T"], k)
    student = c["s"].to(c["dtype"]).requires_grad_()
    log_p_topk = tt(log_p, c["dtype"], grad=True)
    rows = kdlearn.topk_kl(student, log_p_topk, tt(indices, torch.long), T=c["T"], labels=c["labels"],
                           ignore_index=c["ignore_index"], reduction="none")
    assert rows.dtype == (torch.float64 if c["dtype"] == torch.float64 else torch.float32)
    assert torch.isfinite(rows).all() and (rows >= 0).all()
    loss = kdlearn.topk_kl(student, log_p_topk, tt(indices, torch.long), T=c["T"], labels=c["labels"],
                           ignore_index=c["ignore_index"], reduction=reduction)
    weights = torch.linspace(0.5, 2.0, rows.numel()).view(rows.shape).to(rows.dtype)
    grads = torch.autograd.grad((loss * weights).sum() if reduction == "none" else loss, (student, log_p_topk))
    # The teacher's gradient, about p_j log(p_j / q_j), reaches 1e5 at T = 0.05 with logits of 1e4:
    # beyond fp16, where it can only come back as inf.
    for grad in grads if c["dtype"] != torch.float16 else grads[:1]:
        assert torch.isfinite(grad).all()
        assert torch.equal(grad[~c["valid"]], torch.zeros_like(grad[~c["valid"]]))


# === argument checks ===========================================================================


def good_args():
    return dict(student_logits=torch.zeros(2, 5), teacher_topk_logprobs=torch.log(torch.tensor([[0.5, 0.25]] * 2)),
                teacher_topk_indices=torch.tensor([[1, 3], [0, 4]]))


BAD = {
    "student not a tensor": (dict(student_logits=[[0.0] * 5] * 2), "student_logits"),
    "student integer": (dict(student_logits=torch.zeros(2, 5, dtype=torch.long)), "student_logits"),
    "student NaN": (dict(student_logits=torch.tensor([[0.0, math.nan, 0, 0, 0]] * 2)), "student_logits contains NaN"),
    "student +inf": (dict(student_logits=torch.tensor([[0.0, INF, 0, 0, 0]] * 2)), "student_logits contains \\+inf"),
    "student row of -inf": (dict(student_logits=torch.tensor([[0.0] * 5, [-INF] * 5])), "student_logits has a row"),
    "logprobs not a tensor": (dict(teacher_topk_logprobs=[[-0.7, -1.4]] * 2), "teacher_topk_logprobs"),
    "logprobs integer": (dict(teacher_topk_logprobs=torch.zeros(2, 2, dtype=torch.long)), "teacher_topk_logprobs"),
    "logprobs leading shape": (dict(teacher_topk_logprobs=torch.full((3, 2), -1.0),
                                    teacher_topk_indices=torch.tensor([[1, 3]] * 3)), "leading shape"),
    "logprobs k = 0": (dict(teacher_topk_logprobs=torch.zeros(2, 0),
                            teacher_topk_indices=torch.zeros(2, 0, dtype=torch.long)), "k >= 1"),
    "logprobs scalar": (dict(teacher_topk_logprobs=torch.tensor(-1.0)), "teacher_topk_logprobs"),
    "indices shape": (dict(teacher_topk_indices=torch.tensor([[1, 3, 4], [0, 4, 2]])), "teacher_topk_indices"),
    "indices float": (dict(teacher_topk_indices=torch.tensor([[1.0, 3.0], [0.0, 4.0]])), "teacher_topk_indices"),
    "indices bool": (dict(teacher_topk_indices=torch.tensor([[True, False]] * 2)), "teacher_topk_indices"),
    "indices not a tensor": (dict(teacher_topk_indices=[[1, 3], [0, 4]]), "teacher_topk_indices"),
    "index negative": (dict(teacher_topk_indices=torch.tensor([[1, -1], [0, 4]])), "teacher_topk_indices.*found -1"),
    "index V": (dict(teacher_topk_indices=torch.tensor([[1, 3], [0, 5]])), "teacher_topk_indices.*found 5"),
    "index repeated": (dict(teacher_topk_indices=torch.tensor([[1, 3], [4, 4]])), "teacher_topk_indices repeats"),
    "k > V": (dict(teacher_topk_logprobs=torch.full((2, 6), -3.0),
                   teacher_topk_indices=torch.arange(6).repeat(2, 1)), "more than the vocabulary"),
    "logprob NaN": (dict(teacher_topk_logprobs=torch.tensor([[-0.7, math.nan]] * 2)),
                    "teacher_topk_logprobs contains NaN"),
    "logprob +inf": (dict(teacher_topk_logprobs=torch.tensor([[-0.7, INF]] * 2)),
                     "teacher_topk_logprobs must be log-probabilities"),
    "logprob > 0 (logits)": (dict(teacher_topk_logprobs=torch.tensor([[2.0, 1.0]] * 2)), "<= 0"),
    "logprob a hair > 0": (dict(teacher_topk_logprobs=torch.tensor([[1e-3, -INF]] * 2)), "<= 0"),
    "probabilities sum > 1": (dict(teacher_topk_logprobs=torch.log(torch.tensor([[0.7, 0.4]] * 2))),
                              "sum to more than 1"),
    "logprobs on another device": (dict(teacher_topk_logprobs=torch.full((2, 2), -1.0, device="meta")), "device"),
    "labels shape": (dict(labels=torch.tensor([1, 2, 3])), "labels"),
    "labels float": (dict(labels=torch.tensor([1.0, 2.0])), "labels"),
    "T zero": (dict(T=0.0), "T \\(temperature\\)"),
    "reduction": (dict(reduction="batchmean"), "reduction"),
    "backend": (dict(backend="cuda"), "backend"),
    "ignore_index float": (dict(ignore_index=-100.0), "ignore_index"),
}


@pytest.mark.parametrize("bad", BAD, ids=str)
def test_bad_arguments_raise_a_value_error_naming_them(bad):
    change, message = BAD[bad]
    with pytest.raises(ValueError, match=message):
        kdlearn.topk_kl(**{**good_args(), **change})


def test_rounding_is_no_error():
    """What the checks let through: log-probabilities that round a hair above 0 or sum a hair over
    1, in the precision they are stored in (here bf16, whose rounding is 2**-8 relative)."""
    log_p = torch.log(torch.tensor([[0.25, 0.75]])).to(torch.bfloat16)
    assert torch.logsumexp(log_p.float(), -1) > 0  # the rounded cache sums to more than 1
    kdlearn.topk_kl(torch.zeros(1, 5), log_p, torch.tensor([[0, 1]]))
    kdlearn.topk_kl(torch.zeros(1, 5), torch.tensor([[5e-5, -INF]]), torch.tensor([[0, 1]]))
