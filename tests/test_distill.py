"""Tests of kdlearn.distill: token_loss against a loop over the (b, t) positions that count, in
float64 with torch's kl_div or explicit sums; masking, the per-token mean, padded vocabularies and
gradients; the teacher's mode and gradient; transfer sets; and train() against a training loop
written here from its docstring."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdlearn import distill, lm, teachers
from kdlearn.distill import Objective, token_loss

pytestmark = pytest.mark.usefixtures("single_torch_thread")

INF = math.inf
B, L, V = 3, 6, 7
IGNORE = -100


# --- the reference: one position at a time ------------------------------------------------------


def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_v a_v log(a_v / b_v), for strictly positive a and b."""
    return (a * (a.log() - b.log())).sum()


def divergence_at(zs: torch.Tensor, zt: torch.Tensor, label: int, o: Objective) -> torch.Tensor:
    """The objective's loss for one position: student logits zs, teacher logits zt (V,), float64."""
    log_q1 = torch.log_softmax(zs, dim=-1)
    if o.divergence == "ce":
        return -log_q1[label]
    p, q = torch.softmax(zt / o.T, dim=-1), torch.softmax(zs / o.T, dim=-1)
    if o.divergence == "forward":
        return F.kl_div(q.log(), p, reduction="sum")
    if o.divergence == "reverse":
        return kl(q, p)
    if o.divergence == "jsd":
        if o.beta in (0.0, 1.0):
            return kl(p, q) if o.beta == 0.0 else kl(q, p)
        m = o.beta * p + (1 - o.beta) * q
        return o.beta * kl(p, m) + (1 - o.beta) * kl(q, m)
    if o.divergence == "kd":
        return o.alpha * o.T ** 2 * kl(p, q) + (1 - o.alpha) * -log_q1[label]
    # topk: the teacher's k most likely tokens and one bucket for the rest, on both sides
    top = p.topk(min(o.top_k, len(p))).indices
    p_top, q_top = p[top], q[top]
    p_tail, q_tail = 1 - p_top.sum(), 1 - q_top.sum()
    tail = p_tail * (p_tail.log() - q_tail.log()) if p_tail > 1e-12 else 0.0
    return kl(p_top, q_top) + tail


def reference_loss(student, teacher, labels, objective, vocab=None) -> float:
    """The mean, over every (b, t) whose next label counts, of the loss at (b, t)."""
    per_token = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            label = int(labels[b, t + 1])
            if label == IGNORE:
                continue
            zt = None if teacher is None else teacher[b, t, :vocab].double()
            per_token.append(divergence_at(student[b, t, :vocab].double(), zt, label, objective).item())
    return sum(per_token) / len(per_token) if per_token else 0.0


# --- the case: a prompt, a completion and padding per row -----------------------------------------

# (prompt length, completion length) per row; the rest of the row is padding
ROWS = [(2, 3), (1, 5), (3, 1)]


def make_labels(rows=ROWS, length=L, vocab=V, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.full((len(rows), length), IGNORE)
    for b, (prompt, completion) in enumerate(rows):
        labels[b, prompt:prompt + completion] = torch.randint(0, vocab, (completion,), generator=generator)
    return labels


def make_logits(seed, shape=(B, L, V), dtype=torch.float64, scale=2.0) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def left_out(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose next label does not count, and every row's last position."""
    out = torch.ones(labels.shape, dtype=torch.bool)
    out[:, :-1] = labels[:, 1:] == IGNORE
    return out


OBJECTIVES = [
    Objective("ce"),
    Objective("forward"), Objective("forward", T=2.5),
    Objective("reverse"), Objective("reverse", T=0.7),
    Objective("jsd", beta=0.5), Objective("jsd", beta=0.0), Objective("jsd", beta=1.0), Objective("jsd", beta=0.2, T=2.0),
    Objective("kd", T=1.0, alpha=0.5), Objective("kd", T=3.0, alpha=0.7), Objective("kd", T=2.0, alpha=1.0),
    Objective("kd", T=2.0, alpha=0.0),
    Objective("topk", top_k=3), Objective("topk", top_k=2, T=2.0), Objective("topk", top_k=V), Objective("topk", top_k=50),
]
WITH_TEACHER = [o for o in OBJECTIVES if o.needs_teacher]


def describe(o: Objective) -> str:
    return f"{o.divergence}-T{o.T}-beta{o.beta}-alpha{o.alpha}-k{o.top_k}"


# === token_loss: values ========================================================================


@pytest.mark.parametrize("objective", OBJECTIVES, ids=describe)
def test_token_loss_is_the_mean_over_counted_positions_of_the_divergence(objective):
    s, t, labels = make_logits(1), make_logits(2), make_labels()
    got = token_loss(s, t if objective.needs_teacher else None, labels, objective)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(reference_loss(s, t, labels, objective), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("objective", [Objective("ce"), Objective("forward", T=2.0), Objective("jsd"),
                                       Objective("kd", T=2.0), Objective("topk", top_k=3)], ids=describe)
def test_token_loss_in_float32_matches_to_float32_precision(objective):
    s, t, labels = make_logits(1, dtype=torch.float32), make_logits(2, dtype=torch.float32), make_labels()
    got = token_loss(s, t, labels, objective)
    assert got.item() == pytest.approx(reference_loss(s, t, labels, objective), rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_topk_over_the_whole_vocabulary_is_forward_kl(T):
    s, t, labels = make_logits(3), make_logits(4), make_labels()
    forward = token_loss(s, t, labels, Objective("forward", T=T))
    for k in (V, V + 5):
        torch.testing.assert_close(token_loss(s, t, labels, Objective("topk", T=T, top_k=k)), forward,
                                   rtol=1e-10, atol=1e-12)
    assert token_loss(s, t, labels, Objective("topk", T=T, top_k=2)) < forward  # fewer buckets, less divergence


def test_kd_is_t_squared_forward_kl_plus_cross_entropy():
    s, t, labels = make_logits(5), make_logits(6), make_labels()
    forward = token_loss(s, t, labels, Objective("forward", T=3.0))
    ce = token_loss(s, None, labels, Objective("ce"))
    torch.testing.assert_close(token_loss(s, t, labels, Objective("kd", T=3.0, alpha=0.25)),
                               0.25 * 9.0 * forward + 0.75 * ce, rtol=1e-12, atol=0)


def test_ce_is_torch_cross_entropy_on_the_shifted_labels():
    s, labels = make_logits(7), make_labels()
    expected = F.cross_entropy(s[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(token_loss(s, None, labels, Objective("ce")), expected, rtol=1e-12, atol=0)


# === masking and the mean ======================================================================

GARBAGE = torch.tensor([1e30, -1e30, -INF, 0.0, 3e4, -INF, 12.0], dtype=torch.float64)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=describe)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prompt_and_padding_logits_change_nothing_and_get_no_gradient(objective, dtype):
    """Whatever the logits hold where the next label does not count (huge values, rows of -inf),
    the loss is that of the clean logits and those positions get a zero gradient."""
    labels = make_labels()
    out = left_out(labels)
    clean_s, clean_t = make_logits(1, dtype=dtype), make_logits(2, dtype=dtype)
    s, t = clean_s.clone(), clean_t.clone()
    s[out] = GARBAGE.to(dtype)
    s[0, 0] = -INF                        # a row that is no distribution at all
    t[out] = GARBAGE.flip(0).to(dtype)
    t[2, 5] = -INF
    s.requires_grad_()
    teacher = t.requires_grad_() if objective.needs_teacher else None
    loss = token_loss(s, teacher, labels, objective)
    torch.testing.assert_close(loss, token_loss(clean_s, clean_t, labels, objective), rtol=0, atol=0)
    loss.backward()
    for grad in (s.grad, t.grad if objective.needs_teacher else None):
        if grad is not None:  # None: the teacher has no part in the loss (ce, or kd with alpha 0)
            assert torch.isfinite(grad).all()
            assert torch.equal(grad[out], torch.zeros_like(grad[out]))
    assert s.grad[~out].abs().sum() > 0


@pytest.mark.parametrize("objective", OBJECTIVES, ids=describe)
def test_an_all_masked_batch_gives_zero_and_finite_gradients(objective):
    labels = torch.full((2, 4), IGNORE)
    labels[:, 0] = 3  # a label on the first position is never predicted: it still counts for nothing
    s = torch.full((2, 4, V), -INF, dtype=torch.float64, requires_grad=True)
    t = make_logits(1, (2, 4, V)).requires_grad_()
    loss = token_loss(s, t, labels, objective)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s.grad))
    assert t.grad is None or torch.equal(t.grad, torch.zeros_like(t.grad))


@pytest.mark.parametrize("objective", [Objective("ce"), Objective("forward"), Objective("kd", T=2.0)], ids=describe)
def test_the_mean_is_over_tokens_across_the_batch(objective):
    """A long completion (5 tokens) and a short one (1): each of the 6 tokens weighs 1/6; a mean
    of per-sequence means would give the short one's token half the weight."""
    labels = make_labels(rows=[(1, 5), (1, 1)])
    s, t = make_logits(8, (2, L, V)), make_logits(9, (2, L, V))
    per_token = [[divergence_at(s[b, i].double(), t[b, i].double(), int(labels[b, i + 1]), objective).item()
                  for i in range(L - 1) if labels[b, i + 1] != IGNORE] for b in range(2)]
    assert [len(row) for row in per_token] == [5, 1]
    loss = token_loss(s, t, labels, objective).item()
    assert loss == pytest.approx(sum(per_token[0] + per_token[1]) / 6, rel=1e-10)
    assert loss != pytest.approx(sum(sum(row) / len(row) for row in per_token) / 2, rel=1e-3)


# === vocabularies ================================================================================


def padded(logits: torch.Tensor, extra: int, value: float | None = None, seed=0) -> torch.Tensor:
    rows = make_logits(seed, (*logits.shape[:-1], extra), scale=50.0) if value is None else \
        torch.full((*logits.shape[:-1], extra), value, dtype=logits.dtype)
    return torch.cat([logits, rows.to(logits.dtype)], dim=-1)


@pytest.mark.parametrize("objective", WITH_TEACHER, ids=describe)
@pytest.mark.parametrize("pad", ["teacher", "student", "both"])
def test_padding_rows_cut_by_vocab_size_give_the_unpadded_loss(objective, pad):
    s, t, labels = make_logits(1), make_logits(2), make_labels()
    ps = padded(s, 5, seed=11) if pad in ("student", "both") else s
    pt = padded(t, 9, value=1e4) if pad in ("teacher", "both") else t
    torch.testing.assert_close(token_loss(ps, pt, labels, objective, vocab_size=V),
                               token_loss(s, t, labels, objective), rtol=0, atol=0)


def test_different_vocabularies_without_vocab_size_are_refused():
    s, t, labels = make_logits(1), padded(make_logits(2), 3), make_labels()
    with pytest.raises(ValueError, match=r"student's logits have 7 vocabulary entries and the teacher's 10.*"
                                         r"pass vocab_size="):
        token_loss(s, t, labels)


@pytest.mark.parametrize("vocab_size,message", [
    (V + 1, r"vocab_size=8 is more than the student's \(7\) or the teacher's \(10\)"),
    (0, "vocab_size must be a positive int"),
    (3.0, "vocab_size must be a positive int"),
])
def test_a_bad_vocab_size_is_refused(vocab_size, message):
    with pytest.raises(ValueError, match=message):
        token_loss(make_logits(1), padded(make_logits(2), 3), make_labels(), vocab_size=vocab_size)


@pytest.mark.parametrize("bad_label", [V, V + 2, -1, -99])
def test_labels_outside_the_shared_vocabulary_are_refused(bad_label):
    labels = make_labels()
    labels[1, 3] = bad_label
    with pytest.raises(ValueError, match=r"labels hold token ids outside the shared vocabulary 0..6"):
        token_loss(padded(make_logits(1), 3), padded(make_logits(2), 3), labels, vocab_size=V)


@pytest.mark.parametrize("call,message", [
    (lambda s, t, y: token_loss(s, None, y, Objective("forward")), "needs teacher_logits"),
    (lambda s, t, y: token_loss(s[0], t, y), r"student_logits must have shape \(B, L, V\)"),
    (lambda s, t, y: token_loss(s, t, y[:, :-1]), r"labels must be a tensor of shape \(B, L\) = \(3, 6\)"),
    (lambda s, t, y: token_loss(s, t, y.tolist()), "labels must be a tensor"),
    (lambda s, t, y: token_loss(s, t[:, :-1], y), "teacher_logits must come from the same input ids"),
    (lambda s, t, y: token_loss(s.long(), t, y), "student_logits must be a floating-point tensor"),
])
def test_bad_token_loss_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call(make_logits(1), make_logits(2), make_labels())


@pytest.mark.parametrize("options,message", [
    ({"divergence": "kl"}, "divergence must be one of"),
    ({"T": 0.0}, "T .temperature. must be a finite number > 0"),
    ({"beta": 1.5}, "beta must be a number in"),
    ({"alpha": -0.1}, "alpha must be a number in"),
    ({"top_k": 0}, "top_k must be a positive int"),
])
def test_bad_objectives_raise(options, message):
    with pytest.raises(ValueError, match=message):
        Objective(**options)


# === gradients ===================================================================================


@pytest.mark.parametrize("objective", [Objective("forward", T=1.5), Objective("reverse"), Objective("jsd", beta=0.3),
                                       Objective("jsd", beta=0.5, T=2.0), Objective("kd", T=2.0, alpha=0.6),
                                       Objective("ce")], ids=describe)
def test_token_loss_passes_gradcheck(objective):
    labels = make_labels(rows=[(1, 2), (2, 2)], length=4, vocab=5)
    s = make_logits(1, (2, 4, 5), scale=1.0).requires_grad_()
    t = make_logits(2, (2, 4, 5), scale=1.0).requires_grad_()
    if objective.needs_teacher:
        assert torch.autograd.gradcheck(lambda a, b: token_loss(a, b, labels, objective), (s, t))
    else:
        assert torch.autograd.gradcheck(lambda a: token_loss(a, None, labels, objective), (s,))


# === logits_of, teacher_logits and distill_step ==================================================


@dataclass
class CausalLMOutput:
    """What a Hugging Face causal LM returns, in miniature."""

    logits: torch.Tensor
    past_key_values: tuple = ()


class HFLike(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return CausalLMOutput(self.model(input_ids))


def test_logits_of_takes_a_tensor_or_an_object_with_logits():
    x = make_logits(1)
    assert distill.logits_of(x) is x
    assert distill.logits_of(CausalLMOutput(x)) is x
    assert distill.logits_of(SimpleNamespace(logits=x, loss=None)) is x


@pytest.mark.parametrize("output,message", [
    ((make_logits(1),), "got tuple"),
    (make_logits(1)[0], r"got Tensor of shape \(6, 7\)"),
    (SimpleNamespace(logits=make_logits(1)[None]), r"of shape \(1, 3, 6, 7\)"),
    (SimpleNamespace(scores=make_logits(1)), "got SimpleNamespace"),
    (None, "got NoneType"),
])
def test_logits_of_refuses_other_outputs(output, message):
    with pytest.raises(ValueError, match=r"must return logits of shape \(B, L, V\).*" + message):
        distill.logits_of(output)


TOKENIZER = lm.CharTokenizer("0123456789:")
CONFIG = lm.GPTConfig(vocab_size=TOKENIZER.vocab_size, context=12, width=16, depth=1, heads=2)


def tiny_gpt(seed=0, **changes) -> lm.GPT:
    return lm.GPT(lm.GPTConfig(**{**vars(CONFIG), **changes}), seed=seed)


def sharp_teacher(seed=1) -> lm.GPT:
    """A random teacher with a scaled-up head, so that its distributions are far from uniform."""
    teacher = tiny_gpt(seed, width=32, heads=4)
    with torch.no_grad():
        teacher.head.weight.mul_(5.0)
    return teacher


def batch_of(texts: list[tuple[str, str]]) -> lm.Batch:
    return lm.pack([TOKENIZER.encode_prompt(p) for p, _ in texts], [TOKENIZER.encode_completion(c) for _, c in texts])


BATCH = [("123:", "321"), ("4567:", "7654"), ("89:", "98"), ("0:", "0")]


def test_teacher_logits_run_in_eval_mode_without_gradient_and_restore_the_mode():
    teacher = tiny_gpt(dropout=0.5).train()
    ids = batch_of(BATCH).input_ids
    a, b = distill.teacher_logits(teacher, ids), distill.teacher_logits(teacher, ids)
    assert teacher.training
    assert torch.equal(a, b) and not a.requires_grad
    with torch.no_grad():
        assert torch.equal(a, teacher.eval()(ids))
        assert not torch.equal(a, teacher.train()(ids))  # dropout is on in train mode: eval mode was used
    assert not distill.teacher_logits(teacher.eval(), ids).requires_grad and not teacher.training


@pytest.mark.parametrize("wrap", [False, True], ids=["gpt", "hf-like"])
def test_distill_step_updates_the_student_only(wrap):
    student, teacher = tiny_gpt(0), tiny_gpt(1, dropout=0.3).train()
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student)
    batch, objective = batch_of(BATCH), Objective("reverse", T=1.5)
    with torch.no_grad():
        expected = token_loss(student(batch.input_ids), teacher.eval()(batch.input_ids), batch.labels, objective)
    teacher.train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    s, t = (HFLike(student), HFLike(teacher)) if wrap else (student, teacher)
    loss = distill.distill_step(s, t, batch, optimizer, objective)
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), student_before.parameters()))


def gradient_norm(model) -> float:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()


def test_distill_step_clips_the_gradient_at_max_grad_norm():
    teacher, batch, objective = sharp_teacher(), batch_of(BATCH), Objective("forward")
    raw = tiny_gpt(0)
    token_loss(raw(batch.input_ids), teacher(batch.input_ids).detach(), batch.labels, objective).backward()
    unclipped = gradient_norm(raw)
    for max_grad_norm, expected in [(None, unclipped), (unclipped / 10, unclipped / 10)]:
        student = tiny_gpt(0)
        distill.distill_step(student, teacher, batch, torch.optim.SGD(student.parameters(), lr=0.0), objective,
                             max_grad_norm=max_grad_norm)
        assert gradient_norm(student) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("objective", [Objective("forward"), Objective("reverse"), Objective("ce")], ids=describe)
def test_distill_step_reduces_the_loss_on_a_repeated_batch(objective):
    student, teacher, batch = tiny_gpt(0), sharp_teacher(), batch_of(BATCH)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = [distill.distill_step(student, teacher, batch, optimizer, objective) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_distill_step_without_a_teacher_needs_ce():
    student = tiny_gpt(0)
    with pytest.raises(ValueError, match="divergence 'forward' needs a teacher"):
        distill.distill_step(student, None, batch_of(BATCH), torch.optim.SGD(student.parameters(), lr=0.1))


# === write_transfer_set ==========================================================================


@pytest.fixture(scope="module")
def any_order():
    return teachers.load("any_order")


def test_greedy_transfer_set_is_the_teachers_greedy_completions(any_order):
    prompts = [e.prompt for e in any_order.task.examples("validation")[:20]]
    written = distill.write_transfer_set(any_order.model, any_order.tokenizer, prompts, max_new_tokens=5)
    expected = lm.complete(any_order.model, any_order.tokenizer, prompts, max_new_tokens=5, temperature=0)
    assert written.examples == list(zip(prompts, expected))
    assert written.written == 20 and written.kept == 1.0


def test_samples_per_prompt_multiplies_the_output_and_the_verifier_filters_it(any_order):
    task, prompts = any_order.task, [e.prompt for e in any_order.task.examples("validation")[:30]]
    options = dict(max_new_tokens=5, samples_per_prompt=3, temperature=2.0, seed=4)
    everything = distill.write_transfer_set(any_order.model, any_order.tokenizer, prompts, **options)
    assert everything.written == 90 and len(everything.examples) == 90
    assert [p for p, _ in everything.examples] == [p for p in prompts for _ in range(3)]
    assert len(set(everything.examples)) > 30  # the samples differ
    filtered = distill.write_transfer_set(any_order.model, any_order.tokenizer, prompts, verifier=task.is_correct,
                                          **options)
    right = [(p, c) for p, c in everything.examples if task.is_correct(p, c)]
    assert filtered.examples == right
    assert filtered.written == 90 and filtered.kept == len(right) / 90
    assert 0.0 < filtered.kept < 1.0  # at temperature 2 the teacher errs sometimes


@pytest.mark.parametrize("options,message", [
    ({"samples_per_prompt": 2}, "greedy decoding .temperature=0. writes one output per prompt"),
    ({"samples_per_prompt": 0, "temperature": 1.0}, "samples_per_prompt must be a positive int"),
    ({"prompts": []}, "prompts is empty"),
])
def test_bad_transfer_set_arguments_raise(any_order, options, message):
    options = {"prompts": ["123:"], "max_new_tokens": 5, **options}
    with pytest.raises(ValueError, match=message):
        distill.write_transfer_set(any_order.model, any_order.tokenizer, **options)


# === train =======================================================================================

DATA = [(p, p[:-1][::-1]) for p in ["123:", "4567:", "89:", "0:", "13:", "2468:", "975:", "31:", "70:", "5:"]]


def explicit_training(student, teacher, data, objective, *, steps, batch_size, lr, weight_decay, warmup, seed,
                      on_policy_tokens=None):
    """train() as its docstring describes it, written out: the pairs of step s are the next batch_size
    draws of random.Random(seed).randrange(len(data)); AdamW; the learning rate lr * (s + 1) / warmup
    for s < warmup, then lr * (1 + cos(pi * (s - warmup) / (steps - warmup))) / 2; dropout from torch's
    generator seeded with seed; distill_step (gradients clipped at norm 1). With on_policy_tokens the
    student writes each batch's completions greedily first."""
    rows, optimizer, losses = random.Random(seed), torch.optim.AdamW(student.parameters(), lr=lr,
                                                                      weight_decay=weight_decay), []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            factor = (step + 1) / warmup if step < warmup else \
                (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) / 2
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            pairs = [data[rows.randrange(len(data))] for _ in range(batch_size)]
            prompts = [TOKENIZER.encode_prompt(p) for p, _ in pairs]
            if on_policy_tokens is None:
                completions = [TOKENIZER.encode_completion(c) for _, c in pairs]
            else:
                completions = lm.generate(student, prompts, max_new_tokens=on_policy_tokens, temperature=0)
            student.train()
            losses.append(distill.distill_step(student, teacher, lm.pack(prompts, completions), optimizer, objective))
    return losses


TRAINING = dict(steps=14, batch_size=3, lr=1e-2, weight_decay=0.1, warmup=4, seed=5)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("objective", [Objective("forward"), Objective("ce")], ids=describe)
def test_off_policy_training_is_exactly_a_loop_of_distill_steps(objective):
    teacher = sharp_teacher() if objective.needs_teacher else None
    student = tiny_gpt(0, dropout=0.1)
    by_hand = copy.deepcopy(student)
    rng_before = torch.get_rng_state()
    history = distill.train(student, TOKENIZER, DATA, teacher=teacher, objective=objective, progress=False,
                            **TRAINING)
    assert torch.equal(torch.get_rng_state(), rng_before)
    losses = explicit_training(by_hand, teacher, DATA, objective, **TRAINING)
    assert history.loss == losses
    assert history.on_policy == [False] * TRAINING["steps"] and history.generation_seconds == 0.0
    assert_same_weights(student, by_hand)
    assert not student.training


def test_fully_on_policy_training_trains_on_the_students_own_samples():
    """lmbda = 1 at sample_temperature 0: every batch's completions are what the student, as it
    is at that step, writes greedily."""
    teacher, student = sharp_teacher(), tiny_gpt(0)
    by_hand = copy.deepcopy(student)
    history = distill.train(student, TOKENIZER, DATA, teacher=teacher, objective=Objective("reverse"), lmbda=1.0,
                            sample_temperature=0.0, max_new_tokens=6, progress=False, **TRAINING)
    assert history.on_policy == [True] * TRAINING["steps"] and history.generation_seconds > 0
    losses = explicit_training(by_hand, teacher, DATA, Objective("reverse"), on_policy_tokens=6, **TRAINING)
    assert history.loss == losses
    assert_same_weights(student, by_hand)


def test_on_policy_samples_are_not_the_data():
    """At the default sample_temperature of 1 the student's samples, not the data, are trained on."""
    teacher = sharp_teacher()
    runs = {}
    for lmbda in (0.0, 1.0):
        student = tiny_gpt(0)
        runs[lmbda] = distill.train(student, TOKENIZER, DATA, teacher=teacher, objective=Objective("forward"),
                                    lmbda=lmbda, progress=False, **TRAINING).loss
    assert runs[0.0] != runs[1.0]


def test_lmbda_between_gives_about_that_share_of_on_policy_steps():
    history = distill.train(tiny_gpt(0, width=8), TOKENIZER, DATA, teacher=sharp_teacher(),
                            objective=Objective("forward"), lmbda=0.3, steps=200, batch_size=2, warmup=1,
                            max_new_tokens=4, progress=False)
    assert len(history.on_policy) == 200
    share = sum(history.on_policy) / 200
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 200)  # four binomial standard deviations


@pytest.mark.parametrize("options,message", [
    ({"data": []}, "data is empty"),
    ({"steps": 0}, "steps and batch_size must be positive ints"),
    ({"steps": 2.0}, "steps and batch_size must be positive ints"),
    ({"batch_size": 0}, "steps and batch_size must be positive ints"),
    ({"lmbda": 1.5}, "lmbda must be a number in"),
    ({"lmbda": -0.1}, "lmbda must be a number in"),
    ({"lmbda": 0.5, "objective": Objective("ce")}, "on-policy training .lmbda > 0. needs a teacher"),
    ({"teacher": None}, "divergence 'forward' needs a teacher"),
    ({"student": tiny_gpt(0, vocab_size=20)}, r"the student's vocabulary \(20\) is not the tokenizer's \(14\)"),
    ({"lmbda": 0.5, "sample_temperature": -1.0}, "sample_temperature must be a finite number >= 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be None or a positive int"),
])
def test_bad_training_arguments_raise(options, message):
    arguments = dict(student=tiny_gpt(0), tokenizer=TOKENIZER, data=DATA, teacher=sharp_teacher(),
                     objective=Objective("forward"), steps=3, progress=False)
    with pytest.raises(ValueError, match=message):
        distill.train(**{**arguments, **options})


# === CachedTeacher and new_student ===============================================================


def test_cached_teacher_gives_the_teachers_logits_wherever_they_predict_a_real_token():
    teacher = sharp_teacher()
    cache = distill.CachedTeacher(teacher, TOKENIZER.pad_id, batch_of(BATCH).input_ids, chunk=3)
    assert len(cache) == len(BATCH)
    # a batch in another order, with another padded length, and a sequence the cache has not seen
    texts = [BATCH[2], ("55:", "55"), BATCH[0], BATCH[0]]
    batch = batch_of(texts)
    cached, direct = cache(batch.input_ids), distill.teacher_logits(teacher, batch.input_ids)
    real = batch.input_ids != TOKENIZER.pad_id
    assert torch.allclose(cached[real], direct[real], atol=1e-5)
    assert torch.equal(cached[~real], torch.zeros_like(cached[~real]))
    assert len(cache) == len(BATCH) + 1 and not cached.requires_grad
    for objective in (Objective("forward"), Objective("reverse"), Objective("jsd", beta=0.3)):
        student_logits = tiny_gpt(0)(batch.input_ids)
        assert token_loss(student_logits, cached, batch.labels, objective).item() == pytest.approx(
            token_loss(student_logits, direct, batch.labels, objective).item(), rel=1e-5)


def test_cached_teacher_answers_the_same_text_the_same_whatever_the_batch():
    cache = distill.CachedTeacher(sharp_teacher(), TOKENIZER.pad_id, batch_of(BATCH).input_ids)
    alone = cache(batch_of([BATCH[3]]).input_ids)[0]
    among = cache(batch_of([BATCH[1], BATCH[3]]).input_ids)[1]
    assert torch.equal(among[:alone.shape[0]], alone)


def test_training_on_the_cache_gives_the_teachers_weights():
    teacher = sharp_teacher()
    sequences = [TOKENIZER.encode_prompt(p) + TOKENIZER.encode_completion(c) for p, c in DATA]
    cache = distill.CachedTeacher(teacher, TOKENIZER.pad_id, sequences)
    a, b = tiny_gpt(0), tiny_gpt(0)
    for student, source in ((a, teacher), (b, cache)):
        distill.train(student, TOKENIZER, DATA, teacher=source, objective=Objective("forward"), progress=False,
                      **TRAINING)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: distill.CachedTeacher(tiny_gpt(), 0, chunk=0), "chunk must be a positive int"),
    (lambda: distill.CachedTeacher(tiny_gpt(), 0, [[0, 0]]), "all padding"),
    (lambda: distill.CachedTeacher(tiny_gpt(), 0)(torch.zeros(0, 3, dtype=torch.long)), "input_ids is empty"),
])
def test_bad_cached_teacher_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_new_student_shares_the_teachers_vocabulary_and_context_and_is_seeded():
    teacher = tiny_gpt(0, width=32, heads=4)
    student = distill.new_student(teacher, width=8, depth=2, heads=2, seed=3)
    assert (student.config.vocab_size, student.config.context) == (CONFIG.vocab_size, CONFIG.context)
    assert (student.config.width, student.config.depth, student.config.heads) == (8, 2, 2)
    assert_same_weights(student, distill.new_student(teacher, width=8, depth=2, heads=2, seed=3))
