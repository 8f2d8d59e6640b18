"""fused_linear_kl against the unfused computation it stands for:

    kdlearn.kl_divergence(student_hidden @ student_weight.T, teacher_logits, ...)   (or generalized_jsd)

with autograd through the whole of it. Values and gradients (for the hidden states and the
weight) must agree for every chunk size, reduction, mask and form of the teacher; gradcheck in
float64 checks the hand-written backward itself.

Tolerances. In float64 both sides compute the same per-row terms and differ only in how the
rows' sums are grouped (per chunk, then across chunks): a few ulps, rtol 1e-12. In bf16 the
logits are rounded to bf16 on both sides but may come from a differently blocked matrix product,
so a logit can differ by one bf16 unit (2**-8 relative), and so can the gradients: rtol 2e-2 on
the loss, and a gradient error measured against the gradient's largest entry.
"""

from __future__ import annotations

import math

import pytest
import torch

import kdlearn
from kdlearn import losses
from kdlearn.kernels import linear_divergence
from kdlearn.kernels.linear_divergence import default_chunk_size, fused_linear_kl

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LEAD, H, V = (3, 5), 6, 9  # 15 rows
CHUNKS = [None, 1, 4, 5, 15, 64]  # default, 1-row, not dividing 15, dividing it, all rows, more
DIVERGENCES = {
    "forward": dict(direction="forward"),
    "reverse": dict(direction="reverse"),
    "jsd": dict(beta=0.3),
}


def make(seed, lead=LEAD, hidden=H, vocab=V, dtype=torch.float64, teacher_hidden=4):
    """Student hidden and weight (requiring grad), teacher logits, and a teacher as hidden+weight."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return dict(
        h=randn(*lead, hidden).requires_grad_(),
        w=randn(vocab, hidden, scale=0.8).requires_grad_(),
        t=randn(*lead, vocab, scale=2.0),
        th=randn(*lead, teacher_hidden),
        tw=randn(vocab, teacher_hidden, scale=1.5),
    )


def labels_for(lead, seed, ignored=0.3, vocab=V):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, lead, generator=g)
    return labels.masked_fill(torch.rand(lead, generator=g) < ignored, -100)


def naive(h, w, teacher_logits, beta=None, **kwargs):
    """The unfused computation: the full logits, then the public loss."""
    if beta is None:
        return kdlearn.kl_divergence(h @ w.T, teacher_logits, **kwargs)
    return kdlearn.generalized_jsd(h @ w.T, teacher_logits, beta=beta, **kwargs)


def loss_and_grads(fn, x, grad_output):
    loss = fn()
    grads = torch.autograd.grad(loss, (x["h"], x["w"]), grad_output)
    return loss.detach(), grads


def grad_output_for(reduction, lead, seed):
    g = torch.Generator().manual_seed(seed)
    if reduction == "none":
        return torch.randn(lead, generator=g, dtype=torch.float64)
    return torch.tensor(-2.5, dtype=torch.float64)  # != 1, and negative


def assert_close_to_naive(x, kwargs, reduction, chunk_size, grad_output, teacher="logits"):
    teacher_args = ((x["t"],), {}) if teacher == "logits" else ((), dict(teacher_hidden=x["th"],
                                                                           teacher_weight=x["tw"]))
    t = x["t"] if teacher == "logits" else x["th"] @ x["tw"].T
    fused, fused_grads = loss_and_grads(
        lambda: fused_linear_kl(x["h"], x["w"], *teacher_args[0], **teacher_args[1], **kwargs,
                                reduction=reduction, chunk_size=chunk_size), x, grad_output)
    ref, ref_grads = loss_and_grads(lambda: naive(x["h"], x["w"], t, **kwargs, reduction=reduction), x,
                                    grad_output)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-14)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    return fused, fused_grads


# --- values and gradients against the unfused computation ---------------------------------------


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_matches_unfused(name, reduction, chunk_size):
    x = make(seed=1)
    kwargs = dict(DIVERGENCES[name], T=1.7, labels=labels_for(LEAD, seed=2))
    assert_close_to_naive(x, kwargs, reduction, chunk_size, grad_output_for(reduction, LEAD, seed=3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_teacher_as_hidden_and_weight(reduction, chunk_size):
    x = make(seed=4)
    kwargs = dict(direction="reverse", T=0.5, mask=labels_for(LEAD, seed=5) != -100)
    assert_close_to_naive(x, kwargs, reduction, chunk_size, grad_output_for(reduction, LEAD, seed=6),
                          teacher="linear")


def test_teacher_forms_agree():
    x = make(seed=7)
    t = (x["th"] @ x["tw"].T).detach()
    as_logits = fused_linear_kl(x["h"], x["w"], t, chunk_size=4, beta=0.5)
    as_linear = fused_linear_kl(x["h"], x["w"], teacher_hidden=x["th"], teacher_weight=x["tw"], chunk_size=4,
                                beta=0.5)
    torch.testing.assert_close(as_logits, as_linear, rtol=1e-12, atol=0)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_mean_divides_by_every_counted_row(direction):
    """Rows counted unevenly across chunks (4 of 5 in the first, 1 in the second, 0 in the third):
    "mean" is the sum over all rows divided by the 5 that count, not a mean of chunk means."""
    x = make(seed=8, lead=(15,))
    labels = torch.full((15,), -100)
    labels[[0, 1, 2, 4, 7]] = 1
    mean = fused_linear_kl(x["h"], x["w"], x["t"], labels=labels, chunk_size=5, direction=direction)
    per_row = fused_linear_kl(x["h"], x["w"], x["t"], labels=labels, chunk_size=5, direction=direction,
                              reduction="none")
    torch.testing.assert_close(mean, per_row.sum() / 5, rtol=1e-12, atol=0)
    assert (per_row[labels == -100] == 0).all() and (per_row[labels != -100] > 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_left_out_rows_add_nothing_and_get_zero_gradient(reduction):
    """Left-out rows may hold anything the checks allow (huge hidden states, a teacher row of
    -inf): they add exactly 0 and get exactly 0 gradient, and the rest is unchanged."""
    x = make(seed=9, lead=(10,))
    labels = labels_for((10,), seed=10, ignored=0.0)
    left_out = torch.tensor([1, 4, 5, 9])
    labels[left_out] = -100
    with torch.no_grad():
        x["h"][left_out] = 1e4
    t = x["t"].clone()
    t[left_out[0]] = -math.inf
    t[:, 2] = -math.inf  # a masked vocabulary entry in every row
    grad_output = grad_output_for(reduction, (10,), seed=11)
    loss, (grad_h, grad_w) = loss_and_grads(
        lambda: fused_linear_kl(x["h"], x["w"], t, labels=labels, chunk_size=3, reduction=reduction), x,
        grad_output)
    assert torch.isfinite(loss).all() and torch.isfinite(grad_h).all() and torch.isfinite(grad_w).all()
    assert (grad_h[left_out] == 0).all()
    if reduction == "none":
        assert (loss[left_out] == 0).all()
    kept = torch.ones(10, dtype=torch.bool)
    kept[left_out] = False
    h_kept = x["h"][kept].detach().requires_grad_()
    w = x["w"].detach().requires_grad_()
    ref = naive(h_kept, w, t[kept], reduction=reduction)
    ref_h, ref_w = torch.autograd.grad(ref, (h_kept, w), grad_output[kept] if reduction == "none" else grad_output)
    torch.testing.assert_close(loss[kept] if reduction == "none" else loss, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_h[kept], ref_h, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_left_out(reduction):
    x = make(seed=12)
    labels = torch.full(LEAD, -100)
    loss = fused_linear_kl(x["h"], x["w"], x["t"], labels=labels, chunk_size=4, reduction=reduction)
    grad_h, grad_w = torch.autograd.grad(loss.sum(), (x["h"], x["w"]))
    assert (loss == 0).all() and loss.shape == (LEAD if reduction == "none" else ())
    assert (grad_h == 0).all() and (grad_w == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_rows(reduction):
    x = make(seed=13, lead=(0,))
    loss = fused_linear_kl(x["h"], x["w"], x["t"], reduction=reduction)
    grad_h, grad_w = torch.autograd.grad(loss.sum(), (x["h"], x["w"]))
    assert loss.shape == ((0,) if reduction == "none" else ()) and (loss == 0).all()
    assert grad_h.shape == (0, H) and (grad_w == 0).all()


# --- the backward itself, in float64 -------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_gradcheck(name, reduction):
    x = make(seed=14, lead=(5,), hidden=3, vocab=4)
    labels = torch.tensor([0, -100, 2, 3, 1])
    teacher = dict(teacher_hidden=x["th"], teacher_weight=x["tw"]) if name == "reverse" else {}
    args = () if teacher else (x["t"],)

    def fn(h, w):
        return fused_linear_kl(h, w, *args, **teacher, **DIVERGENCES[name], T=1.3, labels=labels, chunk_size=2,
                               reduction=reduction)

    assert torch.autograd.gradcheck(fn, (x["h"], x["w"]))


def test_grad_output_scales_the_gradients():
    x = make(seed=15)
    (g1h, g1w), (g2h, g2w) = (
        torch.autograd.grad(fused_linear_kl(x["h"], x["w"], x["t"], chunk_size=4), (x["h"], x["w"]),
                            torch.tensor(s, dtype=torch.float64))
        for s in (1.0, -3.0))
    torch.testing.assert_close(g2h, -3.0 * g1h, rtol=1e-14, atol=0)
    torch.testing.assert_close(g2w, -3.0 * g1w, rtol=1e-14, atol=0)


# --- what is differentiated, and the memory the chunks promise -----------------------------------


def test_only_the_inputs_that_require_grad_get_one():
    x = make(seed=16)
    w_frozen = x["w"].detach()
    loss = fused_linear_kl(x["h"], w_frozen, x["t"], chunk_size=4)
    (grad_h,) = torch.autograd.grad(loss, (x["h"],))
    ref_h = torch.autograd.grad(naive(x["h"], w_frozen, x["t"]), (x["h"],))[0]
    torch.testing.assert_close(grad_h, ref_h, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        loss = fused_linear_kl(x["h"], x["w"], x["t"], chunk_size=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, naive(x["h"], x["w"], x["t"]).detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_chunk_holds_more_rows_than_chunk_size(monkeypatch, reduction):
    """The divergence only ever sees chunk_size rows of logits, in forward and (for "none",
    which recomputes) in backward: the full (N, V) logits never exist."""
    seen = []
    real = losses.kl_divergence

    def spy(student_logits, teacher_logits, **kwargs):
        seen.append(student_logits.shape[0])
        return real(student_logits, teacher_logits, **kwargs)

    monkeypatch.setattr(losses, "kl_divergence", spy)
    x = make(seed=17, lead=(15,))
    fused_linear_kl(x["h"], x["w"], x["t"], chunk_size=4, reduction=reduction).sum().backward()
    assert seen == [4, 4, 4, 3] * (2 if reduction == "none" else 1)


def test_default_chunk_size_rule():
    assert default_chunk_size(32000, torch.device("cpu")) == 128
    assert default_chunk_size(128256, torch.device("cuda")) == 1024
    assert default_chunk_size(10**9, torch.device("cpu")) == 1
    for vocab in (10, 1000, 32000, 151936):
        for device in ("cpu", "cuda"):
            rows = default_chunk_size(vocab, torch.device(device))
            budget = linear_divergence.CHUNK_LOGITS_BYTES.get(device, linear_divergence.DEFAULT_CHUNK_LOGITS_BYTES)
            assert rows & (rows - 1) == 0 and rows * 4 * vocab <= budget < 2 * rows * 4 * vocab


def test_non_contiguous_inputs():
    x = make(seed=18, lead=(6, 4))
    h = x["h"].transpose(0, 1)  # (4, 6, H), not contiguous
    t = x["t"].transpose(0, 1)
    loss = fused_linear_kl(h, x["w"], t, chunk_size=5, reduction="none")
    assert loss.shape == (4, 6)
    torch.testing.assert_close(loss, naive(h, x["w"], t, reduction="none"), rtol=1e-12, atol=1e-14)


# --- low precision ---------------------------------------------------------------------------------


def exact_grads(x, grad_output, **kwargs):
    """The float64 loss and gradients at the same (bf16-valued) inputs."""
    h, w = (x[k].detach().double().requires_grad_() for k in ("h", "w"))
    loss = naive(h, w, x["t"].double(), **kwargs)
    return loss.detach(), torch.autograd.grad(loss, (h, w), grad_output.double())


def normwise_error(got, exact):
    return ((got.double() - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bf16(reduction):
    """bf16 in, fp32 loss, bf16 gradients, as accurate as the unfused bf16 path: both round the
    logits and the gradients to bf16 (2**-8 relative, plus the sums over rows and H)."""
    x = make(seed=19, lead=(40,), hidden=32, vocab=300, dtype=torch.bfloat16)
    kwargs = dict(labels=labels_for((40,), seed=20, vocab=300), reduction=reduction, T=2.0)
    grad_output = grad_output_for(reduction, (40,), seed=21).float()
    fused, fused_grads = loss_and_grads(lambda: fused_linear_kl(x["h"], x["w"], x["t"], chunk_size=7, **kwargs),
                                        x, grad_output)
    unfused, unfused_grads = loss_and_grads(lambda: naive(x["h"], x["w"], x["t"], **kwargs), x, grad_output)
    exact, exact_grad = exact_grads(x, grad_output, **kwargs)
    assert fused.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in fused_grads)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)  # the same bf16 logits
    torch.testing.assert_close(fused.double(), exact, rtol=2e-2, atol=1e-3)
    for got, unfused_grad, want in zip(fused_grads, unfused_grads, exact_grad):
        assert normwise_error(got, want) <= max(1.5 * normwise_error(unfused_grad, want), 2**-8)


def test_bf16_weight_gradient_is_summed_in_fp32():
    """One row per chunk, 512 chunks: summed in bf16, the weight gradient would lose ~2**-9 of
    its size at each of the 512 additions; summed in fp32, what remains is each chunk's product
    rounded to bf16, and the final rounding."""
    x = make(seed=26, lead=(512,), hidden=8, vocab=16, dtype=torch.bfloat16)
    grad_output = torch.tensor(1.0)
    _, (_, grad_w) = loss_and_grads(lambda: fused_linear_kl(x["h"], x["w"], x["t"], chunk_size=1, reduction="sum"),
                                    x, grad_output)
    _, (_, exact_w) = exact_grads(x, grad_output, reduction="sum")
    assert normwise_error(grad_w, exact_w) <= 2**-8


# --- the Triton kernel (through the interpreter on a CPU) -----------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_backend_matches_torch(reduction):
    """backend reaches the divergence of each chunk: the kernel gives what the specification does."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if reason := kdlearn.kernels.unavailable_reason(torch.device(device)):
        pytest.skip(reason)
    x = {k: v.detach().float().to(device).requires_grad_(v.requires_grad) for k, v in make(seed=22).items()}
    grad_output = grad_output_for(reduction, LEAD, seed=23).float().to(device)
    results = [loss_and_grads(lambda: fused_linear_kl(x["h"], x["w"], x["t"], beta=0.5, chunk_size=4,
                                                      reduction=reduction, backend=backend), x, grad_output)
               for backend in ("torch", "triton")]
    (torch_loss, torch_grads), (triton_loss, triton_grads) = results
    torch.testing.assert_close(triton_loss, torch_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(triton_grads, torch_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# --- argument checks -----------------------------------------------------------------------------


def _bad_calls():
    x = make(seed=24)
    h, w, t, th, tw = x["h"], x["w"], x["t"], x["th"], x["tw"]
    return [
        ("student_hidden", lambda: fused_linear_kl(h.long(), w, t)),
        ("student_hidden", lambda: fused_linear_kl(h[..., :0], w[:, :0], t)),
        ("student_weight", lambda: fused_linear_kl(h, w[0], t)),
        ("student_weight", lambda: fused_linear_kl(h, w[:, :-1], t)),
        ("student_weight", lambda: fused_linear_kl(h, w.float(), t)),
        ("student_hidden contains NaN", lambda: fused_linear_kl(h.detach().clone().fill_(math.nan), w, t)),
        ("student_weight contains NaN or inf", lambda: fused_linear_kl(h, w.detach() * math.inf, t)),
        ("as teacher_logits .*got neither", lambda: fused_linear_kl(h, w)),
        ("got teacher_hidden", lambda: fused_linear_kl(h, w, teacher_hidden=th)),
        ("not both", lambda: fused_linear_kl(h, w, t, teacher_hidden=th, teacher_weight=tw)),
        ("teacher_logits must have student_hidden's leading shape", lambda: fused_linear_kl(h, w, t[:2])),
        ("vocabulary size", lambda: fused_linear_kl(h, w, t[..., :-1])),
        ("vocabulary size", lambda: fused_linear_kl(h, w, teacher_hidden=th, teacher_weight=tw[:-1])),
        ("teacher_hidden must have student_hidden's leading shape",
         lambda: fused_linear_kl(h, w, teacher_hidden=th[:1], teacher_weight=tw)),
        ("teacher_weight", lambda: fused_linear_kl(h, w, teacher_hidden=th, teacher_weight=tw[:, :-1])),
        ("teacher_logits requires grad", lambda: fused_linear_kl(h, w, t.clone().requires_grad_())),
        ("teacher_weight requires grad",
         lambda: fused_linear_kl(h, w, teacher_hidden=th, teacher_weight=tw.clone().requires_grad_())),
        ("chunk_size", lambda: fused_linear_kl(h, w, t, chunk_size=0)),
        ("chunk_size", lambda: fused_linear_kl(h, w, t, chunk_size=2.0)),
        ("chunk_size", lambda: fused_linear_kl(h, w, t, chunk_size=True)),
        ("reduction", lambda: fused_linear_kl(h, w, t, reduction="batchmean")),
        ("direction", lambda: fused_linear_kl(h, w, t, direction="backward")),
        ("not both", lambda: fused_linear_kl(h, w, t, direction="reverse", beta=0.5)),
        ("beta", lambda: fused_linear_kl(h, w, t, beta=1.5)),
        ("T", lambda: fused_linear_kl(h, w, t, T=0)),
        ("backend", lambda: fused_linear_kl(h, w, t, backend="cuda")),
        ("labels", lambda: fused_linear_kl(h, w, t, labels=torch.zeros(3, dtype=torch.long))),
        ("labels", lambda: fused_linear_kl(h, w, t, labels=torch.full(LEAD, V))),
        ("mask", lambda: fused_linear_kl(h, w, t, mask=torch.ones(LEAD))),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_arguments_raise_value_error_naming_them(case):
    match, call = _bad_calls()[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_triton_backend_that_cannot_run_is_refused_up_front(monkeypatch):
    monkeypatch.setattr(kdlearn.kernels, "unavailable_reason", lambda device: "no kernels today")
    x = make(seed=27)
    with pytest.raises(ValueError, match=r"^backend='triton' cannot run here: no kernels today$"):
        fused_linear_kl(x["h"], x["w"], x["t"], backend="triton")


def test_error_found_in_a_chunk_says_which_rows():
    x = make(seed=25, lead=(12,))
    t = x["t"].clone()
    t[9] = -math.inf  # a counted teacher row that is no distribution
    with pytest.raises(ValueError, match=r"rows 8 to 11 of the flattened input.*teacher_logits has a row"):
        fused_linear_kl(x["h"], x["w"], t, chunk_size=4)
