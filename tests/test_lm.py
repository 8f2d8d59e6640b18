"""Tests of kdlearn.lm: the tokenizer, the GPT and its KV cache, generation, log-probabilities,
batches and checkpoints, each against a computation written here (explicit loops over full
forward passes, log_softmax by hand, literal tensors) rather than the module's own helpers."""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from kdlearn import lm

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ALPHABET = "0123456789+="
TOKENIZER = lm.CharTokenizer(ALPHABET)
V = TOKENIZER.vocab_size  # 15
EOS = TOKENIZER.eos_id
CONFIG = lm.GPTConfig(vocab_size=V, context=24, width=16, depth=2, heads=2)
TEXTS = ["1+2=", "12+34=", "5", "999+1=", "7+7=", "3", "44+5=", "80+8="]


def sharp_model(seed: int = 0, scale: float = 10.0, **config) -> lm.GPT:
    """A random GPT whose head is scaled up: GPT-2's initialisation gives nearly uniform next-token
    distributions, on which greedy and sampled text, or two temperatures, would hardly differ."""
    model = lm.GPT(lm.GPTConfig(**{**vars(CONFIG), **config}), seed=seed)
    with torch.no_grad():
        model.head.weight.mul_(scale)
    return model.eval()


def prompts_of(texts=TEXTS) -> list[list[int]]:
    return [TOKENIZER.encode_prompt(t) for t in texts]


def greedy_by_hand(model: lm.GPT, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding the slow, obvious way: one prompt, a full forward pass per token."""
    sequence, written = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([sequence]))[0, -1].argmax())
            written.append(token)
            if token == EOS:
                break
            sequence.append(token)
    return written


# === the tokenizer ==============================================================================


def test_tokenizer_ids_are_specials_then_the_alphabet_in_order():
    assert (TOKENIZER.pad_id, TOKENIZER.bos_id, TOKENIZER.eos_id) == (0, 1, 2)
    assert TOKENIZER.vocab_size == 3 + len(ALPHABET)
    assert TOKENIZER.encode("90+=") == [3 + 9, 3 + 0, 3 + 10, 3 + 11]
    assert TOKENIZER.encode_prompt("12") == [1, 4, 5]
    assert TOKENIZER.encode_completion("12") == [4, 5, 2]
    assert TOKENIZER.encode("") == []


@pytest.mark.parametrize("text", ["", "0", "12+34=", "9999=+0", ALPHABET])
def test_tokenizer_round_trip(text):
    assert TOKENIZER.decode(TOKENIZER.encode(text)) == text
    assert TOKENIZER.decode(TOKENIZER.encode_prompt(text)) == text       # begin dropped
    assert TOKENIZER.decode(TOKENIZER.encode_completion(text)) == text   # end not shown


def test_decode_stops_at_the_end_token_and_drops_pad_and_begin():
    ids = [1, 0, 4, 0, 5, 1, 6, 2, 7, 8, 2]
    assert TOKENIZER.decode(ids) == "123"
    assert TOKENIZER.decode(torch.tensor(ids)) == "123"
    assert TOKENIZER.decode([2, 4, 5]) == ""


@pytest.mark.parametrize("ids", [[4, V], [4, -1]])
def test_decode_refuses_ids_outside_the_vocabulary(ids):
    with pytest.raises(ValueError, match=f"token id {ids[-1]} is outside"):
        TOKENIZER.decode(ids)


def test_encode_names_the_unknown_characters():
    with pytest.raises(ValueError, match=r"\['a', 'x'\]"):
        TOKENIZER.encode("1a2x3a")


@pytest.mark.parametrize("alphabet,named", [("abca", r"\['a'\]"), ("0120", r"\['0'\]"), ("xyyxz", r"\['x', 'y'\]")])
def test_repeated_alphabet_characters_are_named(alphabet, named):
    with pytest.raises(ValueError, match=named):
        lm.CharTokenizer(alphabet)


@pytest.mark.parametrize("alphabet", ["", None, ["a", "b"]])
def test_alphabet_must_be_a_non_empty_string(alphabet):
    with pytest.raises(ValueError, match="alphabet"):
        lm.CharTokenizer(alphabet)


# === the model ===================================================================================


def test_logits_have_shape_batch_time_vocabulary():
    model = lm.GPT(CONFIG, seed=0)
    tokens = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (3, 7, V) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("changed_from", [1, 4, 8])
def test_later_tokens_do_not_change_earlier_logits(changed_from):
    """Causality: logits[:, t] depends on tokens[:, :t + 1] only."""
    model = sharp_model()
    generator = torch.Generator().manual_seed(changed_from)
    tokens = torch.randint(0, V, (2, 10), generator=generator)
    other = tokens.clone()
    other[:, changed_from:] = (tokens[:, changed_from:] + 1 + torch.randint(0, V - 1, (2, 10 - changed_from),
                                                                            generator=generator)) % V
    a, b = model(tokens), model(other)
    torch.testing.assert_close(a[:, :changed_from], b[:, :changed_from], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, changed_from], b[:, changed_from], atol=1e-3)


def test_seed_gives_the_same_weights_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(5)
    torch.manual_seed(123)
    a, b, c = lm.GPT(CONFIG, seed=7), lm.GPT(CONFIG, seed=7), lm.GPT(CONFIG, seed=8)
    assert torch.equal(torch.rand(5), expected_next)  # three models drawn, the global stream untouched
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.token_embedding.weight, c.token_embedding.weight)


@pytest.mark.parametrize("changes,named", [
    ({"width": 10, "heads": 4}, "multiple of heads"),
    ({"depth": 0}, "depth"),
    ({"heads": 0}, "heads"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"context": 2.5}, "context"),
    ({"width": True}, "width"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
])
def test_bad_configurations_raise(changes, named):
    with pytest.raises(ValueError, match=named):
        lm.GPTConfig(**{**vars(CONFIG), **changes})


def test_a_sequence_longer_than_the_context_is_refused():
    model = lm.GPT(CONFIG, seed=0)
    with pytest.raises(ValueError, match=r"25 tokens long, longer than the model's context \(24\)"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_num_parameters_counts_every_weight():
    W, L, C = CONFIG.width, CONFIG.depth, CONFIG.context
    per_block = 2 * 2 * W + (W * 3 * W + 3 * W) + (W * W + W) + (W * 4 * W + 4 * W) + (4 * W * W + W)
    assert lm.GPT(CONFIG).num_parameters() == V * W + C * W + L * per_block + 2 * W + W * V


# === the KV cache ================================================================================


@pytest.mark.parametrize("pieces", [[10], [1] * 10, [3, 1, 4, 2], [7, 3]])
def test_feeding_a_sequence_in_pieces_through_a_cache_gives_the_full_forward(pieces):
    model = sharp_model()
    tokens = torch.randint(0, V, (3, sum(pieces)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        cache, start, parts = lm.KVCache(CONFIG, batch_size=3), 0, []
        for n in pieces:
            parts.append(model(tokens[:, start:start + n], cache))
            start += n
            assert cache.length == start
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_cache_refuses_to_run_past_the_context():
    model, cache = lm.GPT(CONFIG, seed=0), lm.KVCache(CONFIG, batch_size=1)
    with torch.no_grad():
        model(torch.zeros(1, 20, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="25 tokens long"):
            model(torch.zeros(1, 5, dtype=torch.long), cache)


# === generate ====================================================================================


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_equals_an_argmax_loop_over_full_forwards(use_cache):
    model, prompts = sharp_model(seed=5), prompts_of()
    got = lm.generate(model, prompts, max_new_tokens=8, temperature=0, use_cache=use_cache)
    expected = [greedy_by_hand(model, p, 8) for p in prompts]
    assert got == expected
    # the case covers both rows that end early and rows cut at max_new_tokens
    assert any(c[-1] == EOS and len(c) < 8 for c in expected) and any(EOS not in c for c in expected)


def test_each_row_stops_at_its_end_token_with_nothing_after_it():
    """Rows that end early keep being fed inside the batch; what is returned must not show it."""
    completions = lm.generate(sharp_model(scale=3.0), prompts_of() * 5, max_new_tokens=10, seed=4)
    ended = [c for c in completions if EOS in c]
    assert ended and len(ended) < len(completions)
    for c in completions:
        assert len(c) <= 10
        if EOS in c:
            assert c.index(EOS) == len(c) - 1
        else:
            assert len(c) == 10
    assert len({len(c) for c in ended}) > 1


def test_prompts_of_different_lengths_get_the_completion_they_get_alone():
    model, prompts = sharp_model(), prompts_of()
    together = lm.generate(model, prompts, max_new_tokens=6, temperature=0)
    alone = [lm.generate(model, [p], max_new_tokens=6, temperature=0)[0] for p in prompts]
    assert together == alone
    # in a different order, and in small batches, too
    reordered = lm.generate(model, prompts[::-1], max_new_tokens=6, temperature=0, batch_size=2)
    assert reordered == together[::-1]


def test_sampling_is_seeded():
    model, prompts = sharp_model(scale=3.0), prompts_of() * 3
    a = lm.generate(model, prompts, max_new_tokens=8, seed=11)
    assert a == lm.generate(model, prompts, max_new_tokens=8, seed=11)
    assert a != lm.generate(model, prompts, max_new_tokens=8, seed=12)


@pytest.mark.parametrize("temperature,top_k", [(0, None), (1.0, None), (2.0, 3)])
def test_the_cache_changes_no_token(temperature, top_k):
    model, prompts = sharp_model(scale=3.0), prompts_of() * 2
    options = dict(max_new_tokens=10, temperature=temperature, top_k=top_k, seed=5)
    assert lm.generate(model, prompts, use_cache=True, **options) == \
        lm.generate(model, prompts, use_cache=False, **options)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_k_1_is_greedy(temperature):
    model, prompts = sharp_model(scale=3.0), prompts_of()
    assert lm.generate(model, prompts, max_new_tokens=8, temperature=temperature, top_k=1, seed=3) == \
        lm.generate(model, prompts, max_new_tokens=8, temperature=0)


def first_token_counts(model, prompt, n, **options) -> torch.Tensor:
    first = lm.generate(model, [prompt] * n, max_new_tokens=1, **options)
    return torch.bincount(torch.tensor([c[0] for c in first]), minlength=V)


def first_token_distribution(model, prompt, temperature) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1].double()
    return torch.softmax(logits / temperature, dim=-1)


@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_sampling_follows_softmax_of_logits_over_temperature(temperature):
    """Chi-square of the first tokens of 6000 samples against softmax(logits / t); the same
    counts are far from the distribution at temperature 1, so the test can tell them apart."""
    model, prompt, n = sharp_model(scale=3.0), prompts_of()[1], 6000
    counts = first_token_counts(model, prompt, n, temperature=temperature, seed=0)

    def p_value(t):
        p = first_token_distribution(model, prompt, t)
        seen = p * n >= 5  # chi-square needs expected counts of 5 or more: pool the rest
        observed = [*counts[seen].tolist(), counts[~seen].sum().item()]
        expected = [*(p[seen] * n).tolist(), (p[~seen] * n).sum().item()]
        if expected[-1] == 0:
            observed, expected = observed[:-1], expected[:-1]
        return chisquare(observed, expected).pvalue

    assert p_value(temperature) > 1e-3
    assert p_value(1.0) < 1e-8


def test_top_k_samples_only_the_k_most_likely_tokens_in_proportion():
    model, prompt, n, k = sharp_model(scale=3.0), prompts_of()[1], 4000, 3
    counts = first_token_counts(model, prompt, n, temperature=1.0, top_k=k, seed=1)
    p = first_token_distribution(model, prompt, 1.0)
    top = p.topk(k).indices
    assert set(counts.nonzero().flatten().tolist()) == set(top.tolist())
    renormalised = p[top] / p[top].sum()
    assert chisquare(counts[top].tolist(), (renormalised * n).tolist()).pvalue > 1e-3


def test_generate_restores_training_mode_and_runs_without_dropout():
    model = sharp_model(scale=3.0, dropout=0.5).train()
    prompts = prompts_of()
    trained = lm.generate(model, prompts, max_new_tokens=6, temperature=0)
    assert model.training
    assert trained == [greedy_by_hand(model.eval(), p, 6) for p in prompts]


def test_a_tensor_of_prompts_is_accepted():
    model, prompts = sharp_model(), prompts_of(["1+2=", "3+4=", "9+9="])
    assert lm.generate(model, torch.tensor(prompts), max_new_tokens=5, temperature=0) == \
        lm.generate(model, prompts, max_new_tokens=5, temperature=0)


def test_complete_is_generate_for_text():
    model = sharp_model()
    texts = ["1+2=", "12+34="]
    expected = [TOKENIZER.decode(greedy_by_hand(model, TOKENIZER.encode_prompt(t), 8)) for t in texts]
    assert lm.complete(model, TOKENIZER, texts, max_new_tokens=8, temperature=0) == expected


@pytest.mark.parametrize("prompts,options,message", [
    ([[1] * 20], {"max_new_tokens": 5}, r"prompt 0 is 20 tokens long; with max_new_tokens=5 .* context of 24"),
    ([[1, 4], [1, V]], {}, r"prompt 1 has token ids outside the model's vocabulary 0..14"),
    ([[1, -1]], {}, "outside the model's vocabulary"),
    (["1+2="], {}, "outside the model's vocabulary"),  # text where token ids belong
    ([], {}, "prompts is empty"),
    ([[1, 4], []], {}, "prompt 1 is empty"),
    ([[1]], {"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ([[1]], {"temperature": math.nan}, "temperature"),
    ([[1]], {"top_k": 0}, "top_k must be None or a positive int"),
    ([[1]], {"top_k": 2.0}, "top_k"),
    ([[1]], {"max_new_tokens": 0}, "max_new_tokens must be a positive int"),
    ([[1]], {"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ([[1]], {"batch_size": -1}, "batch_size must be a positive int, got -1"),
])
def test_bad_generate_arguments_raise(prompts, options, message):
    with pytest.raises(ValueError, match=message):
        lm.generate(lm.GPT(CONFIG, seed=0), prompts, **{"max_new_tokens": 3, **options})


# === continuation_log_prob and pack ==============================================================


def test_continuation_log_prob_is_the_sum_of_the_continuation_tokens_log_probabilities():
    model = sharp_model(scale=3.0)
    prompts = prompts_of(["1+2=", "12+34=", "5", "7+7="])
    continuations = [TOKENIZER.encode_completion(t) for t in ["3", "64", "", "41+"]]
    expected = []
    with torch.no_grad():
        for prompt, continuation in zip(prompts, continuations):
            log_p = torch.log_softmax(model(torch.tensor([prompt + continuation]))[0].double(), dim=-1)
            # the token at position len(prompt) + j is predicted at position len(prompt) + j - 1
            expected.append(sum(log_p[len(prompt) + j - 1, token].item() for j, token in enumerate(continuation)))
    got = lm.continuation_log_prob(model, prompts, continuations, batch_size=3)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    assert (got < 0).all()


def test_continuation_log_prob_of_nothing_is_zero():
    got = lm.continuation_log_prob(sharp_model(), prompts_of(["1+2="]), [[]])
    assert got.tolist() == [0.0]


@pytest.mark.parametrize("continuations,options,message", [
    ([[4]], {}, "must pair up"),
    ([[4], [V]], {}, "outside the model's vocabulary"),
    ([[4], [5]], {"batch_size": -1}, "batch_size must be a positive int"),
])
def test_bad_continuations_raise(continuations, options, message):
    with pytest.raises(ValueError, match=message):
        lm.continuation_log_prob(lm.GPT(CONFIG, seed=0), [[1, 4], [1, 5]], continuations, **options)


def test_pack_pads_on_the_right_and_masks_the_prompt_and_the_padding():
    batch = lm.pack([[1, 3, 4], [1, 5], [1, 6, 7, 8]], [[6, 2], [7, 8, 9, 2], []])
    assert torch.equal(batch.input_ids, torch.tensor([[1, 3, 4, 6, 2, 0],
                                                      [1, 5, 7, 8, 9, 2],
                                                      [1, 6, 7, 8, 0, 0]]))
    n = -100
    assert torch.equal(batch.labels, torch.tensor([[n, n, n, 6, 2, n],
                                                   [n, n, 7, 8, 9, 2],
                                                   [n, n, n, n, n, n]]))
    assert batch.input_ids.dtype == batch.labels.dtype == torch.int64
    assert lm.pack([[1]], [[4]], pad_id=9).input_ids.tolist() == [[1, 4]]
    assert lm.pack([[1]], [[]], pad_id=9).input_ids.tolist() == [[1]]
    assert lm.pack([[1], [1, 3]], [[], [4]], pad_id=9).input_ids.tolist() == [[1, 9, 9], [1, 3, 4]]


@pytest.mark.parametrize("prompts,completions,message", [
    ([[1], [1]], [[4]], "must pair up, got 2 prompts and 1 completions"),
    ([], [], "the batch is empty"),
    ([[1], []], [[4], [5]], "prompt 1 is empty"),
])
def test_pack_refuses_mismatched_or_empty_lists(prompts, completions, message):
    with pytest.raises(ValueError, match=message):
        lm.pack(prompts, completions)


# === checkpoints =================================================================================


def saved(tmp_path: Path, name: str = "model", model: lm.GPT | None = None, **metadata) -> Path:
    lm.save(model or sharp_model(seed=3), TOKENIZER, tmp_path / name, **metadata)
    return tmp_path / name


def test_save_and_load_give_back_the_same_model_tokenizer_and_metadata(tmp_path):
    model = sharp_model(seed=3).train()
    weights, config = lm.save(model, TOKENIZER, tmp_path / "model", task="addition", figures={"accuracy": 0.5})
    assert (weights, config) == (tmp_path / "model.safetensors", tmp_path / "model.json")
    tokens = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    for path in (tmp_path / "model", weights, config):  # with or without a suffix
        loaded, tokenizer, metadata = lm.load(path)
        assert not loaded.training
        assert loaded.config == model.config
        assert tokenizer.alphabet == ALPHABET and tokenizer.vocab_size == V
        assert metadata == {"task": "addition", "figures": {"accuracy": 0.5}}
        with torch.no_grad():
            assert torch.equal(loaded(tokens), model.eval()(tokens))


def test_a_dot_in_the_name_is_part_of_the_name(tmp_path):
    """run_T2.0 and run_T2.5 are two checkpoints, not one file written twice."""
    lm.save(sharp_model(seed=1), TOKENIZER, tmp_path / "run_T2.0", T=2.0)
    lm.save(sharp_model(seed=2), TOKENIZER, tmp_path / "run_T2.5", T=2.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run_T2.0.json", "run_T2.0.safetensors", "run_T2.5.json", "run_T2.5.safetensors"]
    assert lm.load(tmp_path / "run_T2.0")[2] == {"T": 2.0}
    assert lm.load(tmp_path / "run_T2.5.safetensors")[2] == {"T": 2.5}


def test_save_refuses_a_tokenizer_that_does_not_fit_the_model(tmp_path):
    with pytest.raises(ValueError, match="the tokenizer has 5 tokens but the model's vocabulary is 15"):
        lm.save(lm.GPT(CONFIG), lm.CharTokenizer("ab"), tmp_path / "model")


@pytest.mark.parametrize("missing", [".safetensors", ".json"])
def test_loading_a_missing_file_names_it(tmp_path, missing):
    path = saved(tmp_path)
    path.with_suffix(missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"model{missing}"):
        lm.load(path)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        lm.load(tmp_path / "nothing")


@pytest.mark.parametrize("keep", [0, 7, 100, -10])
def test_a_truncated_weights_file_is_a_value_error_naming_it(tmp_path, keep):
    path = saved(tmp_path)
    weights = path.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        lm.load(path)


@pytest.mark.parametrize("text", ["{not json", "", '"a string"', "[1, 2]", "null", '{"alphabet": "01"}',
                                  '{"config": {"vocab_size": 15}, "alphabet": 5}'])
def test_a_broken_configuration_file_is_a_value_error_naming_it(tmp_path, text):
    path = saved(tmp_path)
    path.with_suffix(".json").write_text(text)
    with pytest.raises(ValueError, match="model.json is not a kdlearn.lm checkpoint configuration"):
        lm.load(path)


def test_weights_of_the_wrong_shapes_are_a_value_error_naming_the_file(tmp_path):
    path = saved(tmp_path)
    other = saved(tmp_path, "wider", lm.GPT(lm.GPTConfig(**{**vars(CONFIG), "width": 32})))
    path.with_suffix(".json").write_text(other.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match=r"model.safetensors does not fit the configuration in .*model.json"):
        lm.load(path)


def test_an_alphabet_that_does_not_fit_vocab_size_is_a_value_error_naming_the_file(tmp_path):
    path = saved(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["alphabet"] += "x"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model.json: the alphabet gives 16 tokens but the model's vocab_size is 15"):
        lm.load(path)


class LeavesAMark:
    """Unpickling this object creates a file: the sign that a loader ran a pickle."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return Path.touch, (self.mark,)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_renamed_safetensors_is_refused_not_run(tmp_path, writer):
    path, mark = saved(tmp_path), tmp_path / "pickle-ran"
    payload = {"token_embedding.weight": LeavesAMark(mark)}
    with open(path.with_suffix(".safetensors"), "wb") as f:
        pickle.dump(payload, f) if writer == "pickle" else torch.save(payload, f)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        lm.load(path)
    assert not mark.exists()
    pickle.loads(pickle.dumps(LeavesAMark(mark)))  # the payload does leave its mark when unpickled
    assert mark.exists()


def test_the_weights_file_is_plain_safetensors(tmp_path):
    """What is on disk: an 8-byte little-endian header length, a JSON header naming every tensor
    with its dtype and shape, then the raw data; nothing a pickle could hide in."""
    model = sharp_model(seed=3)
    data = saved(tmp_path, model=model).with_suffix(".safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header.pop("__metadata__", None)
    assert {n: (h["dtype"], h["shape"]) for n, h in header.items()} == \
        {n: ("F32", list(t.shape)) for n, t in model.state_dict().items()}
    assert len(data) == 8 + length + 4 * model.num_parameters()
