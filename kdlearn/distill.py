"""Distilling a causal language model: the token-level loss, one training step, and the two
ways of choosing what the student trains on (a teacher-written transfer set, its own samples).

    from kdlearn import distill, lm, teachers
    teacher = teachers.load("any_order")
    student = lm.GPT(lm.GPTConfig(vocab_size=teacher.tokenizer.vocab_size, width=16, depth=1, heads=2), seed=0)
    data = [(e.prompt, teacher.task.completion(e)) for e in teacher.task.examples("train", 4000)]
    distill.train(student, teacher.tokenizer, data, teacher=teacher.model,
                  objective=distill.Objective("reverse"), steps=500)

Works on any causal LM whose forward returns next-token logits (B, L, V), or an object with a
``.logits`` of that shape (a Hugging Face model), given input ids (B, L) and labels (B, L) in
Hugging Face's convention: unshifted, the prompt and the padding set to -100.

The loss (``token_loss``) follows kdlearn.losses and fixes what language-model trainers get
wrong (see REFERENCES.md):

* logits[:, t] is compared with the teacher's logits[:, t] at every position whose *next* label
  counts, so the prompt and the padding add nothing, and the mean is over the completion tokens
  that count, across the whole batch (never per sequence, never over B alone). A batch with no
  token that counts gives 0, not NaN.
* Every divergence of kdlearn.losses: forward KL(teacher || student), reverse KL(student ||
  teacher), generalized JSD(beta), Hinton's kd_loss with hard labels (T² included), top-k
  (forward KL against the teacher's k most likely tokens plus a tail bucket), or plain
  cross-entropy on the labels (no teacher).
* Teacher and student vocabularies may differ only by padding rows (embedding tables padded to
  a round size): pass ``vocab_size``, the tokenizer's size, and both are cut to it. Any other
  difference is refused with a ValueError that says why.
* The teacher runs without gradient and in eval mode (no dropout), and is put back as it was.

Sequence-level KD (Kim and Rush 2016) is ordinary training on ``write_transfer_set``'s output:
the teacher writes completions (greedy or sampled, several per prompt), optionally filtered by
a verifier. On-policy distillation (GKD, Agarwal et al. 2024) is ``train(..., lmbda=...)``: on a
share lmbda of the steps the student writes the completions of its batch's prompts itself, and
the teacher scores them token by token with the same loss. lmbda = 0 is exactly off-policy
training (the draw that decides a step uses a generator of its own). ``CachedTeacher`` stands in
for a frozen teacher on a fixed transfer set: its logits computed once per sequence, then looked up.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from kdlearn import lm, losses
from kdlearn import _validation as check

DIVERGENCES = ("ce", "forward", "reverse", "jsd", "kd", "topk")


@dataclass(frozen=True)
class Objective:
    """What a distillation step minimises, per completion token (see token_loss).

    divergence: "forward" KL(p || q), "reverse" KL(q || p), "jsd" generalized JSD(beta) (0 is
        forward, 1 reverse), "kd" alpha * T² * KL(p_T || q_T) + (1 - alpha) * CE(labels),
        "topk" forward KL against the teacher's top_k tokens and a tail bucket, or "ce",
        cross-entropy on the labels alone (fine-tuning, no teacher).
    T: the temperature of both distributions. No T² factor except in "kd" (as in kdlearn.losses).
    """

    divergence: str = "forward"
    T: float = 1.0
    beta: float = 0.5
    alpha: float = 0.5
    top_k: int = 8

    def __post_init__(self):
        check.check_choice("divergence", self.divergence, DIVERGENCES)
        check.check_temperature(self.T)
        check.check_unit_interval("beta", self.beta)
        check.check_unit_interval("alpha", self.alpha)
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {self.top_k!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.divergence != "ce"


def logits_of(output) -> torch.Tensor:
    """The logits a causal LM returned: the tensor itself, or a Hugging Face output's .logits."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("the model must return logits of shape (B, L, V), or an object whose .logits has that "
                         f"shape; got {type(output).__name__}"
                         f"{' of shape ' + str(tuple(logits.shape)) if isinstance(logits, torch.Tensor) else ''}")
    return logits


def shared_vocabulary(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                      vocab_size: int | None) -> int:
    """The vocabulary size both sides are cut to: vocab_size when given, else the logits' own V,
    which must then be the same for both."""
    v_student = student_logits.shape[-1]
    v_teacher = v_student if teacher_logits is None else teacher_logits.shape[-1]
    if vocab_size is None:
        if v_student != v_teacher:
            raise ValueError(f"the student's logits have {v_student} vocabulary entries and the teacher's "
                             f"{v_teacher}. If they share a tokenizer and one embedding table is padded, pass "
                             f"vocab_size=<the tokenizer's size>; models with different tokenizers cannot be "
                             f"distilled token by token")
        return v_student
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if vocab_size > min(v_student, v_teacher):
        raise ValueError(f"vocab_size={vocab_size} is more than the student's ({v_student}) or the teacher's "
                         f"({v_teacher}) logits hold: the tokenizer is bigger than a model's vocabulary")
    return vocab_size


def token_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
               objective: Objective = Objective(), *, vocab_size: int | None = None,
               ignore_index: int = lm.IGNORE_INDEX) -> torch.Tensor:
    """The mean over completion tokens of the objective's per-token loss (a scalar).

        loss = sum_{b, t: labels[b, t+1] != ignore_index} D(teacher[b, t], student[b, t]) / #those tokens

    student_logits, teacher_logits: (B, L, V) from the same input ids; labels: (B, L), unshifted.
    teacher_logits may be None for divergence "ce". See the module docstring for vocab_size."""
    check.check_logits("student_logits", student_logits)
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must have shape (B, L, V), got {tuple(student_logits.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != student_logits.shape[:2]:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape (B, L) = {tuple(student_logits.shape[:2])}, got {got}")
    if objective.needs_teacher:
        if teacher_logits is None:
            raise ValueError(f"divergence {objective.divergence!r} needs teacher_logits; use Objective('ce') "
                             "to train on the labels alone")
        check.check_logits("teacher_logits", teacher_logits)
        if teacher_logits.shape[:2] != student_logits.shape[:2]:
            raise ValueError(f"teacher_logits must come from the same input ids as student_logits: shapes "
                             f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)} differ before V")
    vocab = shared_vocabulary(student_logits, teacher_logits if objective.needs_teacher else None, vocab_size)
    targets = labels[:, 1:]
    counted = targets != ignore_index
    if (targets[counted] < 0).any() or (targets[counted] >= vocab).any():
        raise ValueError(f"labels hold token ids outside the shared vocabulary 0..{vocab - 1} (other than "
                         f"ignore_index={ignore_index})")
    student = student_logits[:, :-1, :vocab]
    teacher = teacher_logits[:, :-1, :vocab] if objective.needs_teacher else None
    o = objective
    options = dict(labels=targets, ignore_index=ignore_index, reduction="mean")
    if o.divergence == "ce":
        # Positions that do not count may hold anything, a row of -inf too, whose NaN log-softmax
        # would reach the gradient through 0 * NaN: they are zeroed first, as kdlearn.losses does.
        student = torch.where(counted.unsqueeze(-1), student, 0.0)
        log_q = torch.log_softmax(losses._at_least_fp32(student), dim=-1)
        nll = -log_q.gather(-1, torch.where(counted, targets, 0).unsqueeze(-1)).squeeze(-1)
        return losses.reduce_rows(nll, counted, "mean")
    if o.divergence in ("forward", "reverse"):
        return losses.kl_divergence(student, teacher, T=o.T, direction=o.divergence, **options)
    if o.divergence == "jsd":
        return losses.generalized_jsd(student, teacher, beta=o.beta, T=o.T, **options)
    if o.divergence == "kd":
        return losses.kd_loss(student, teacher, targets, T=o.T, alpha=o.alpha, ignore_index=ignore_index)
    top = torch.log_softmax(losses._at_least_fp32(teacher) / o.T, dim=-1).topk(min(o.top_k, vocab), dim=-1)
    return losses.topk_kl(student, top.values, top.indices, T=o.T, **options)


def new_student(teacher: lm.GPT, *, width: int, depth: int, heads: int, seed: int) -> lm.GPT:
    """An untrained GPT of the given size that shares the teacher's vocabulary and context (so that
    their logits line up token for token), its initial weights drawn from seed."""
    config = lm.GPTConfig(vocab_size=teacher.config.vocab_size, context=teacher.config.context,
                          width=width, depth=depth, heads=heads)
    return lm.GPT(config, seed=seed)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The teacher's logits for input_ids, without gradient and in eval mode (its mode is restored)."""
    was_training = teacher.training
    teacher.eval()
    try:
        return logits_of(teacher(input_ids))
    finally:
        teacher.train(was_training)


class CachedTeacher(nn.Module):
    """A frozen causal teacher whose logits are computed once per sequence and looked up after that.

    Distilling on a fixed transfer set asks the teacher the same questions at every epoch, and its
    forward pass is most of a step's work; offline distillation at scale stores the teacher's
    (top-k) logits for the same reason. Call it as the teacher: ``forward(input_ids)`` takes
    right-padded ids (B, L), as lm.pack lays them out, and returns logits (B, L, V) equal to the
    teacher's wherever they predict a real token; on a row's trailing ``pad_id`` tokens they are 0,
    positions the loss masks anyway. Each sequence is keyed without its trailing padding, so the same
    text gives the same logits in a batch of any length.

    ``sequences`` (rows of ids, a tensor or lists, padded or not) are computed up front in fixed
    chunks, so the cached values never depend on the order in which training asks for them; a
    sequence not seen before is computed when first asked for. Only for a frozen teacher: the cache
    never sees new weights."""

    def __init__(self, teacher: nn.Module, pad_id: int, sequences=(), chunk: int = 512):
        super().__init__()
        check.check_positive_int("chunk", chunk)
        self.teacher, self.pad_id, self.chunk = teacher, pad_id, chunk
        self._logits: dict[tuple[int, ...], torch.Tensor] = {}
        self._add(self._keys(sequences))

    def __len__(self) -> int:
        return len(self._logits)

    def _keys(self, rows) -> list[tuple[int, ...]]:
        rows = rows.tolist() if isinstance(rows, torch.Tensor) else [list(row) for row in rows]
        keys = []
        for row in rows:
            while row and row[-1] == self.pad_id:
                row.pop()
            if not row:
                raise ValueError("a row of input_ids is all padding: every sequence needs at least one real token")
            keys.append(tuple(row))
        return keys

    def _add(self, keys: list[tuple[int, ...]]) -> None:
        missing = [key for key in dict.fromkeys(keys) if key not in self._logits]
        for start in range(0, len(missing), self.chunk):
            block = missing[start:start + self.chunk]
            padded = torch.full((len(block), max(map(len, block))), self.pad_id, dtype=torch.long)
            for row, key in enumerate(block):
                padded[row, :len(key)] = torch.tensor(key)
            logits = teacher_logits(self.teacher, padded)
            for row, key in enumerate(block):
                self._logits[key] = logits[row, :len(key)].clone()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        keys = self._keys(input_ids)
        if not keys:
            raise ValueError("input_ids is empty: pass a batch of at least one sequence")
        self._add(keys)
        first = self._logits[keys[0]]
        out = torch.zeros(*input_ids.shape, first.shape[-1], dtype=first.dtype)
        for row, key in enumerate(keys):
            out[row, :len(key)] = self._logits[key]
        return out


def distill_step(student: nn.Module, teacher: nn.Module | None, batch: lm.Batch, optimizer: torch.optim.Optimizer,
                 objective: Objective = Objective(), *, vocab_size: int | None = None,
                 max_grad_norm: float | None = 1.0) -> float:
    """One update of the student on ``batch``: the teacher's logits (no gradient, eval mode), the
    student's, token_loss, backward, gradient clipping at max_grad_norm, optimizer step. Returns the loss."""
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"divergence {objective.divergence!r} needs a teacher; pass teacher=, or Objective('ce')")
    target = teacher_logits(teacher, batch.input_ids) if objective.needs_teacher else None
    loss = token_loss(logits_of(student(batch.input_ids)), target, batch.labels, objective, vocab_size=vocab_size)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(student.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


# --- what the student trains on --------------------------------------------------------------------


@dataclass
class TransferSet:
    """A teacher-written transfer set: (prompt, completion) texts, and how many the teacher wrote."""

    examples: list[tuple[str, str]]
    written: int

    @property
    def kept(self) -> float:
        """The share of the teacher's outputs that the verifier let through."""
        return len(self.examples) / self.written if self.written else 0.0


def write_transfer_set(teacher: lm.GPT, tokenizer: lm.CharTokenizer, prompts: Sequence[str], *,
                       max_new_tokens: int, samples_per_prompt: int = 1, temperature: float = 0.0,
                       top_k: int | None = None, verifier: Callable[[str, str], bool] | None = None,
                       seed: int = 0) -> TransferSet:
    """The teacher's completions of every prompt, samples_per_prompt each, as training data.

    temperature 0 is greedy (one output per prompt, so samples_per_prompt must be 1), as close as
    a character model comes to Kim and Rush's beam search; above 0 the teacher samples. verifier
    (prompt, completion) -> bool keeps only the completions it accepts (rejection sampling)."""
    if not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be a positive int, got {samples_per_prompt!r}")
    if temperature == 0 and samples_per_prompt > 1:
        raise ValueError("greedy decoding (temperature=0) writes one output per prompt; pass samples_per_prompt=1 "
                         "or a temperature above 0")
    if not prompts:
        raise ValueError("prompts is empty: the teacher needs prompts to write completions for")
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    outputs = lm.complete(teacher, tokenizer, repeated, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=top_k, seed=seed)
    pairs = [(p, o) for p, o in zip(repeated, outputs) if verifier is None or verifier(p, o)]
    return TransferSet(pairs, len(repeated))


@dataclass
class History:
    """What train() saw, per step: the loss, and whether the student wrote the batch (on-policy);
    and the seconds spent generating and in all."""

    loss: list[float] = field(default_factory=list)
    on_policy: list[bool] = field(default_factory=list)
    generation_seconds: float = 0.0
    seconds: float = 0.0


def train(student: lm.GPT, tokenizer: lm.CharTokenizer, data: Sequence[tuple[str, str]], *,
          teacher: nn.Module | None = None, objective: Objective = Objective("ce"), steps: int = 1000,
          batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0, warmup: int = 50,
          lmbda: float = 0.0, sample_temperature: float = 1.0, max_new_tokens: int | None = None,
          seed: int = 0, progress: bool = True) -> History:
    """Train ``student`` in place for ``steps`` updates on (prompt, completion) texts; leave it in eval mode.

    Step s (counted from 0) takes the next batch_size draws of one ``random.Random(seed)``,
    ``randrange(len(data))`` each, as its pairs, encoded with tokenizer.encode_prompt and
    encode_completion and packed with lm.pack. With probability lmbda (drawn from a generator of
    its own) the student writes that batch's completions itself, sampled at sample_temperature
    (0 is greedy) up to max_new_tokens (by default the longest encoded completion in data, end
    token included, plus one), and the teacher's feedback on them is the loss; otherwise the
    data's completions are used. The update is distill_step (gradients clipped at norm 1), the
    student in train mode, with AdamW(lr, weight_decay) at learning rate lr * (s + 1) / warmup
    while s < warmup, then lr * (1 + cos(pi * (s - warmup) / max(1, steps - warmup))) / 2 (linear
    warmup, cosine decay to 0). Dropout draws from torch's global generator, seeded with seed for
    the run and restored afterwards. Deterministic for a given seed and number of torch threads."""
    if not data:
        raise ValueError("data is empty: pass (prompt, completion) pairs to train on")
    if not isinstance(steps, int) or steps < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive ints, got steps={steps!r}, batch_size={batch_size!r}")
    lmbda = check.check_unit_interval("lmbda", lmbda)
    if lmbda > 0 and not objective.needs_teacher:
        raise ValueError("on-policy training (lmbda > 0) needs a teacher to score the student's samples; "
                         "pass teacher= and a divergence other than 'ce'")
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"divergence {objective.divergence!r} needs a teacher; pass teacher=, or Objective('ce')")
    # Checked here, not at the first on-policy step, which may come after minutes of training.
    if isinstance(sample_temperature, bool) or not isinstance(sample_temperature, (int, float)) \
            or not math.isfinite(sample_temperature) or sample_temperature < 0:
        raise ValueError(f"sample_temperature must be a finite number >= 0 (0 is greedy), got {sample_temperature!r}")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be None or a positive int, got {max_new_tokens!r}")
    if getattr(student, "config", None) is not None and student.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the student's vocabulary ({student.config.vocab_size}) is not the tokenizer's "
                         f"({tokenizer.vocab_size})")
    prompts = [tokenizer.encode_prompt(p) for p, _ in data]
    completions = [tokenizer.encode_completion(c) for _, c in data]
    if max_new_tokens is None:
        max_new_tokens = max(map(len, completions)) + 1
    batches, policy = random.Random(seed), random.Random(f"policy/{seed}")
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history, started = History(), time.perf_counter()
    device = next(student.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout
        for step in tqdm(range(steps), desc="training", unit="step", disable=not progress, leave=False):
            rows = [batches.randrange(len(data)) for _ in range(batch_size)]
            on_policy = lmbda > 0 and policy.random() < lmbda
            batch_prompts = [prompts[i] for i in rows]
            if on_policy:
                began = time.perf_counter()
                written = lm.generate(student, batch_prompts, eos_id=tokenizer.eos_id, max_new_tokens=max_new_tokens,
                                      temperature=sample_temperature, seed=seed * 1_000_003 + step)
                history.generation_seconds += time.perf_counter() - began
            else:
                written = [completions[i] for i in rows]
            student.train()
            batch = lm.batch_on(lm.pack(batch_prompts, written, tokenizer.pad_id), device)
            history.loss.append(distill_step(student, teacher, batch, optimizer, objective))
            history.on_policy.append(on_policy)
            schedule.step()
    student.eval()
    history.seconds = time.perf_counter() - started
    return history
