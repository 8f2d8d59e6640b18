"""A tiny GPT that trains and writes text on a CPU, its character tokenizer, and its checkpoints.

    from kdlearn import lm
    tokenizer = lm.CharTokenizer("0123456789+=")
    model = lm.GPT(lm.GPTConfig(vocab_size=tokenizer.vocab_size, context=32, width=64, depth=2, heads=4))
    prompts = [tokenizer.encode_prompt("12+34=")]
    completions = lm.generate(model, prompts, eos_id=tokenizer.eos_id, max_new_tokens=4, temperature=0)
    tokenizer.decode(completions[0])

Read top to bottom, this file is the whole model:

* CharTokenizer: one id per character of an alphabet, after three special tokens, pad (0),
  begin (1) and end (2). A prompt is begin + its characters; a completion is its characters + end.
* GPT: token and learned position embeddings, ``depth`` pre-norm blocks (LayerNorm, causal
  self-attention, LayerNorm, a 4x MLP, each with a residual connection), a final LayerNorm and
  a linear head. ``model(tokens)`` returns next-token logits of shape (B, T, V), as a Hugging
  Face causal LM does, so that kdlearn.distill works on either.
* KVCache: the keys and values of the tokens seen so far, so that generating token t costs one
  position's work instead of t positions' (lesson 10 measures the difference).
* generate: batched sampling (greedy, temperature, top-k), seeded, stopping at the end token.
* continuation_log_prob: log p(continuation | prompt), the measure behind precision and recall
  in lesson 08.
* pack: prompts and completions into one right-padded batch whose labels mask the prompt and
  the padding with -100 (the ignore_index of kdlearn.losses and of torch's cross_entropy).
* save / load: weights in safetensors, the configuration and alphabet in a JSON file beside
  them; loading never unpickles anything.

Labels follow Hugging Face's convention: ``labels`` has the shape of ``input_ids`` and is *not*
shifted; logits[:, t] predicts labels[:, t + 1] (kdlearn.distill.token_loss).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


# --- the tokenizer ------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character of ``alphabet``, after the special tokens pad, begin and end."""

    SPECIALS = ("<pad>", "<begin>", "<end>")
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, alphabet: str):
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty string of characters, got {alphabet!r}")
        if len(set(alphabet)) != len(alphabet):
            repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
            raise ValueError(f"alphabet must not repeat a character, but {repeated} appear more than once")
        self.alphabet = alphabet
        self._ids = {c: i + len(self.SPECIALS) for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``'s characters, no special tokens."""
        unknown = sorted({c for c in text if c not in self._ids})
        if unknown:
            raise ValueError(f"text {text!r} has characters outside the tokenizer's alphabet "
                             f"{self.alphabet!r}: {unknown}")
        return [self._ids[c] for c in text]

    def encode_prompt(self, text: str) -> list[int]:
        """begin + the prompt's characters: what a model is given to continue."""
        return [self.bos_id, *self.encode(text)]

    def encode_completion(self, text: str) -> list[int]:
        """The completion's characters + end: what a model is trained to write."""
        return [*self.encode(text), self.eos_id]

    def decode(self, ids) -> str:
        """The text of ``ids`` up to the first end token; pad and begin tokens are dropped."""
        chars = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.eos_id:
                break
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside this tokenizer's vocabulary 0..{self.vocab_size - 1}")
            if i >= len(self.SPECIALS):
                chars.append(self.alphabet[i - len(self.SPECIALS)])
        return "".join(chars)

    def __repr__(self) -> str:
        return f"CharTokenizer({self.alphabet!r})"


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context: int = 32      # the longest sequence, prompt and completion together
    width: int = 64        # the embedding size
    depth: int = 2         # the number of blocks
    heads: int = 4         # attention heads per block; width must be a multiple of heads
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "context", "width", "depth", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """Every block's keys and values for the first ``length`` positions of a batch of sequences.

    Buffers are allocated once, for the whole context; each forward pass writes its new
    positions and attends over everything stored so far."""

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=torch.float32):
        head_size = config.width // config.heads
        shape = (config.depth, 2, batch_size, config.heads, config.context, head_size)
        self.buffers = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        """Write this layer's keys and values (B, heads, T, head_size) after the stored ones; return all of them."""
        end = self.length + keys.shape[2]
        self.buffers[layer, 0, :, :, self.length:end] = keys
        self.buffers[layer, 1, :, :, self.length:end] = values
        return self.buffers[layer, 0, :, :, :end], self.buffers[layer, 1, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.heads, self.layer, self.dropout = config.heads, layer, config.dropout
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            # The new queries sit at positions past .. past+T-1; each sees every stored key up to its own.
            past = cache.length
            k, v = cache.store(self.layer, k, v)
            visible = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width)
        self.attention = CausalSelfAttention(config, layer)
        self.norm2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 4 * config.width), nn.GELU(),
                                 nn.Linear(4 * config.width, config.width), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A decoder-only transformer: tokens (B, T) in, next-token logits (B, T, V) out."""

    def __init__(self, config: GPTConfig, seed: int | None = None):
        super().__init__()
        self.config = config
        # seed draws the initial weights without touching the global RNG, as kdlearn.models.mlp does.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.token_embedding = nn.Embedding(config.vocab_size, config.width)
            self.position_embedding = nn.Embedding(config.context, config.width)
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.depth))
            self.norm = nn.LayerNorm(config.width)
            self.head = nn.Linear(config.width, config.vocab_size, bias=False)
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's initialisation: small normal weights, zero biases.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.context:
            raise ValueError(f"the sequence is {start + T} tokens long, longer than the model's context "
                             f"({self.config.context}); shorten the prompt or the completion")
        positions = torch.arange(start, start + T, device=tokens.device)
        x = self.drop(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        return self.head(self.norm(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --- batches -------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Right-padded prompt + completion sequences. labels is input_ids with the prompt and the
    padding set to IGNORE_INDEX, unshifted (logits[:, t] predicts labels[:, t + 1])."""

    input_ids: torch.Tensor   # (B, L) int64
    labels: torch.Tensor      # (B, L) int64


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int = CharTokenizer.pad_id) -> Batch:
    """One batch from token-id lists: row i is prompts[i] + completions[i], padded on the right.

    Right padding changes nothing for the real tokens (attention is causal), and the labels
    leave out the prompt, so only the completion's tokens are learned."""
    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must pair up, got {len(prompts)} prompts and "
                         f"{len(completions)} completions")
    if not prompts:
        raise ValueError("the batch is empty: pass at least one prompt and completion")
    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        if not prompt:
            raise ValueError(f"prompt {row} is empty; a prompt holds at least the begin token")
        end = len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor([*prompt, *completion])
        labels[row, len(prompt):end] = torch.tensor(completion, dtype=torch.long)
    return batch_on(Batch(input_ids, labels), "cpu")


def batch_on(batch: Batch, device) -> Batch:
    return Batch(batch.input_ids.to(device), batch.labels.to(device))


# --- writing text ---------------------------------------------------------------------------------


def _check_prompts(model: GPT, prompts, extra: int, what: str) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    prompts = [list(p) for p in prompts]
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt (a list of token ids)")
    vocab, context = model.config.vocab_size, model.config.context
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; encode it with tokenizer.encode_prompt, which puts the "
                             "begin token first")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt {i} has token ids outside the model's vocabulary 0..{vocab - 1}: {prompt}; "
                             "was it encoded with the model's own tokenizer?")
        if len(prompt) + extra > context:
            raise ValueError(f"prompt {i} is {len(prompt)} tokens long; with {what} that is more than the "
                             f"model's context of {context} tokens")
    return prompts


def _check_batch_size(batch_size) -> None:
    # A batch_size below 1 would make the loops over batches run zero times and return nothing.
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _groups_by_length(prompts: list[list[int]], batch_size: int):
    """Indices of prompts of equal length, in batches: with learned positions, prompts of one
    length can be continued side by side without padding."""
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    for length in sorted(by_length):
        indices = by_length[length]
        for start in range(0, len(indices), batch_size):
            yield indices[start:start + batch_size]


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """One token per row from last-position logits (B, V): the argmax at temperature 0, else a sample
    from softmax(logits / temperature), restricted to the top_k most likely tokens when given."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: GPT, prompts, *, eos_id: int = CharTokenizer.eos_id, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, seed: int = 0, use_cache: bool = True,
             batch_size: int = 512) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to max_new_tokens tokens; stop a row at eos_id.

    temperature 0 is greedy decoding; above 0, tokens are sampled from softmax(logits /
    temperature), from the top_k most likely only when top_k is given. Sampling draws from a
    generator seeded with ``seed``, so the same call gives the same text. Returns each prompt's
    completion, the end token included when one was written. use_cache=False recomputes every
    position at every step, for comparison (same text, more work). The model is put in eval
    mode for the call and back as it was."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")
    _check_batch_size(batch_size)
    prompts = _check_prompts(model, prompts, max_new_tokens, f"max_new_tokens={max_new_tokens}")
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    completions: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for indices in _groups_by_length(prompts, batch_size):
            tokens = torch.tensor([prompts[i] for i in indices], device=device)
            written = _continue(model, tokens, eos_id, max_new_tokens, temperature, top_k, generator, use_cache)
            for row, i in enumerate(indices):
                completions[i] = _until_end(written[row].tolist(), eos_id)
    finally:
        model.train(was_training)
    return completions


def _continue(model, tokens, eos_id, max_new_tokens, temperature, top_k, generator, use_cache):
    """The tokens written after each row of ``tokens`` (B, T), max_new_tokens of them (rows that
    ended keep being fed, and are cut at their end token afterwards)."""
    cache = KVCache(model.config, tokens.shape[0], tokens.device, next(model.parameters()).dtype) if use_cache else None
    sequence, written = tokens, []
    step_input = tokens
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for _ in range(max_new_tokens):
        logits = model(step_input, cache) if use_cache else model(sequence)
        token = _next_token(logits[:, -1], temperature, top_k, generator)
        written.append(token)
        done |= token == eos_id
        if done.all():
            break
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        step_input = token[:, None]
    return torch.stack(written, dim=1)


def _until_end(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[:tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def complete(model: GPT, tokenizer: CharTokenizer, prompts: list[str], **options) -> list[str]:
    """generate for text: each prompt's completion as text (the end token not shown)."""
    encoded = [tokenizer.encode_prompt(p) for p in prompts]
    return [tokenizer.decode(c) for c in generate(model, encoded, eos_id=tokenizer.eos_id, **options)]


@torch.no_grad()
def continuation_log_prob(model: GPT, prompts, continuations, *, batch_size: int = 512) -> torch.Tensor:
    """log p(continuations[i] | prompts[i]) under the model, summed over the continuation's tokens: (N,).

    Divide by the continuations' lengths for a per-token figure. The model runs in eval mode."""
    if len(prompts) != len(continuations):
        raise ValueError(f"prompts and continuations must pair up, got {len(prompts)} and {len(continuations)}")
    _check_batch_size(batch_size)
    longest = max((len(c) for c in continuations), default=0)
    prompts = _check_prompts(model, prompts, longest, f"the longest continuation ({longest} tokens)")
    vocab = model.config.vocab_size
    if any(not 0 <= t < vocab for c in continuations for t in c):
        raise ValueError(f"continuations hold token ids outside the model's vocabulary 0..{vocab - 1}")
    device = next(model.parameters()).device
    total = torch.empty(len(prompts))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = batch_on(pack(prompts[start:start + batch_size], continuations[start:start + batch_size]), device)
            log_probs = torch.log_softmax(model(batch.input_ids)[:, :-1].float(), dim=-1)
            labels = batch.labels[:, 1:]
            counts = labels != IGNORE_INDEX
            picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total[start:start + len(batch.labels)] = torch.where(counts, picked, 0.0).sum(-1).cpu()
    finally:
        model.train(was_training)
    return total


# --- checkpoints ----------------------------------------------------------------------------------


def _checkpoint_files(path) -> tuple[Path, Path]:
    """path.safetensors and path.json. Only those two suffixes are dropped from path: any other
    dot belongs to the name, so that run_T2.0 and run_T2.5 are two checkpoints, not one."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save(model: GPT, tokenizer: CharTokenizer, path, **metadata) -> tuple[Path, Path]:
    """Write ``path``.safetensors (the weights) and ``path``.json (the configuration, the alphabet,
    and any ``metadata`` given, e.g. how the model was trained and what it scored)."""
    from safetensors.torch import save_file

    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                         f"{model.config.vocab_size}: they do not belong together")
    weights, config = _checkpoint_files(path)
    save_file({name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}, str(weights))
    config.write_text(json.dumps({"config": asdict(model.config), "alphabet": tokenizer.alphabet,
                                  **metadata}, indent=1) + "\n")
    return weights, config


def load(path) -> tuple[GPT, CharTokenizer, dict]:
    """The model, tokenizer and metadata that save wrote at ``path`` (with or without a suffix).

    Raises FileNotFoundError when a file is missing, and ValueError, naming the file, when one
    is unreadable or its weights do not fit its configuration. The model is returned in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config_file = _checkpoint_files(path)
    for file in (config_file, weights):
        if not file.is_file():
            raise FileNotFoundError(f"no checkpoint file {file}; a checkpoint is a .json and a .safetensors "
                                    "file side by side, written by kdlearn.lm.save")
    try:
        meta = json.loads(config_file.read_text())
        config = GPTConfig(**meta.pop("config"))
        tokenizer = CharTokenizer(meta.pop("alphabet"))
    # AttributeError: JSON that is no object ("a string", null) has no .pop.
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{config_file} is not a kdlearn.lm checkpoint configuration: {error}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights} is not a readable safetensors file ({error}); it may be truncated: "
                         "write it again with kdlearn.lm.save") from None
    model = GPT(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or [n for n in expected if expected[n] != found[n]]
        raise ValueError(f"{weights} does not fit the configuration in {config_file}: tensors {wrong[:4]} are "
                         f"missing, unexpected or of the wrong shape")
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{config_file}: the alphabet gives {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size is {config.vocab_size}")
    model.load_state_dict(state)
    return model.eval(), tokenizer, meta
