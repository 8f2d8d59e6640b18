"""kdlearn.distill on a Hugging Face causal LM: its output object, a padded vocabulary, no download.

The GPT-2 here is built from a config with random weights (nothing is fetched), its embedding
table padded to 16 rows against the shipped any_order teacher's 14, as real model families pad
theirs (REFERENCES.md: 151936 against 152064)."""

from __future__ import annotations

import pytest
import torch

import kdlearn
from kdlearn import distill, lm, teachers

transformers = pytest.importorskip("transformers")

PADDED_VOCAB = 16


@pytest.fixture(scope="module")
def teacher():
    return teachers.load("any_order")


def gpt2(seed: int, vocab_size: int = PADDED_VOCAB, dropout: float = 0.0):
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                     bos_token_id=lm.CharTokenizer.bos_id, eos_token_id=lm.CharTokenizer.eos_id,
                                     pad_token_id=lm.CharTokenizer.pad_id)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


def batch_of(teacher, n: int = 16) -> lm.Batch:
    examples = teacher.task.examples("train", n, seed=3)
    return lm.pack([teacher.tokenizer.encode_prompt(e.prompt) for e in examples],
                   [teacher.tokenizer.encode_completion(e.answer) for e in examples])


def test_a_padded_hugging_face_student_gets_the_loss_of_its_real_rows(teacher, single_torch_thread):
    """The padding rows of the student's table are cut away: the loss is that of its first 14 logits,
    computed here by slicing by hand and calling kdlearn.losses directly."""
    student, batch = gpt2(0), batch_of(teacher)
    vocab = teacher.tokenizer.vocab_size
    output = student(batch.input_ids)
    assert output.logits.shape[-1] == PADDED_VOCAB
    got = distill.token_loss(distill.logits_of(output), distill.teacher_logits(teacher.model, batch.input_ids),
                             batch.labels, distill.Objective("reverse"), vocab_size=vocab)
    by_hand = kdlearn.kl_divergence(output.logits[:, :-1, :vocab], teacher.model(batch.input_ids)[:, :-1],
                                    direction="reverse", labels=batch.labels[:, 1:])
    torch.testing.assert_close(got, by_hand)


def test_vocabularies_that_differ_need_the_tokenizer_size(teacher):
    student, batch = gpt2(0), batch_of(teacher)
    with pytest.raises(ValueError, match="vocab_size"):
        distill.token_loss(student(batch.input_ids).logits, teacher.model(batch.input_ids), batch.labels)


def test_distill_step_trains_a_hugging_face_student(teacher, single_torch_thread):
    """Repeated steps on one batch lower the forward KL to the teacher, the teacher untouched."""
    student, batch = gpt2(1), batch_of(teacher)
    before = {name: p.clone() for name, p in teacher.model.named_parameters()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    objective = distill.Objective("forward")
    losses = [distill.distill_step(student, teacher.model, batch, optimizer, objective,
                                   vocab_size=teacher.tokenizer.vocab_size) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.equal(p, before[name]) for name, p in teacher.model.named_parameters())
    assert all(p.grad is None for p in teacher.model.parameters())


def test_a_hugging_face_teacher_is_run_in_eval_mode_without_gradient(teacher):
    """teacher_logits reads .logits, under no_grad, with dropout off (two calls agree), mode restored."""
    hf_teacher, batch = gpt2(2, vocab_size=teacher.tokenizer.vocab_size, dropout=0.5), batch_of(teacher)
    hf_teacher.train()
    assert not torch.equal(hf_teacher(batch.input_ids).logits, hf_teacher(batch.input_ids).logits)  # dropout is on
    first = distill.teacher_logits(hf_teacher, batch.input_ids)
    second = distill.teacher_logits(hf_teacher, batch.input_ids)
    assert torch.equal(first, second) and not first.requires_grad
    assert hf_teacher.training
