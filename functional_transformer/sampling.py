"""Sampling text from a decoder-only language model: greedy, or with temperature, top-k and top-p
(nucleus), over the model's key/value cache, in one compiled loop on JAX (a Python loop on NumPy).

The random numbers are the project's own Threefry draws (backends/prng.py), one uniform per row
and position from fold_in(key, position), and a token is picked by inverting the cumulative
distribution: the same key gives the same tokens on every backend (up to float rounding of the
logits landing exactly on a boundary between two tokens).
"""

from __future__ import annotations

import math

from backends import array_namespace, backend_of, with_x64_scope
from backends import prng as ftrandom

from . import checks
from .errors import ConfigError
from .layers.softmax import fwd as softmax_fwd
from .models import decoder_only
from .models.decoder_only import DecoderConfig


def _check_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ConfigError(f"temperature must be at least 0 (0 is greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def filtered_probabilities(logits, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """logits (B, V) -> probabilities (B, V) of softmax(logits / temperature), zero outside the top_k
    tokens and outside the smallest set whose probability reaches top_p, renormalised."""
    xp = array_namespace(logits)
    scaled = logits / temperature
    keep = xp.ones(scaled.shape, dtype=xp.bool)
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = -xp.sort(-scaled, axis=-1)[:, top_k - 1 : top_k]  # (B, 1), the k-th largest
        keep = keep & (scaled >= kth)
    p, _ = softmax_fwd(scaled, keep)
    if top_p is not None and top_p < 1.0:
        ranked = -xp.sort(-p, axis=-1)  # largest first
        before = xp.cumulative_sum(ranked, axis=-1) - ranked  # the probability of the tokens ranked above
        smallest_kept = xp.min(
            xp.where(before < top_p, ranked, xp.asarray(math.inf, dtype=p.dtype)), axis=-1, keepdims=True
        )
        p, _ = softmax_fwd(scaled, keep & (p >= smallest_kept))
    return p


def sample(logits, key, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """logits (B, V) -> token ids (B,) int32: the argmax with temperature 0, else one draw per row."""
    xp = array_namespace(logits)
    if temperature == 0:
        return xp.astype(xp.argmax(logits, axis=-1), xp.int32)
    p = filtered_probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    cdf = xp.cumulative_sum(p, axis=-1)  # (B, V)
    u = ftrandom.uniform(key, (logits.shape[0], 1), cdf.dtype) * cdf[:, -1:]
    picked = xp.sum(xp.astype(cdf <= u, xp.int32), axis=-1)  # the first token whose cdf passes u
    return xp.astype(xp.minimum(picked, xp.asarray(logits.shape[-1] - 1)), xp.int32)


def _filler(cfg: DecoderConfig, eos_id: int) -> int:
    """What follows eos in a row: pad, or eos again in a vocabulary without padding (pad_id None)."""
    return eos_id if cfg.pad_id is None else cfg.pad_id


def _loop(
    params, tokens, prompt_lengths, key, cfg: DecoderConfig, max_total: int, eos_id: int, temperature, top_k, top_p
):
    """Feed tokens[:, t] at positions t = 0, 1, ...; from each row's prompt length on, write the
    sampled token at t + 1 (pad once the row has emitted eos) -> (tokens (B, max_total), finished (B,))."""
    backend = backend_of(tokens)
    xp = backend.xp
    model = decoder_only.for_config(cfg)
    batch = tokens.shape[0]
    cache = model.init_cache(params, tokens[:, :1], max_total)
    finished = xp.zeros((batch,), dtype=xp.bool)

    def running(carry):
        position, _, _, finished = carry
        return (position < max_total - 1) & ~xp.all(finished)

    def advance(carry):
        position, cache, tokens, finished = carry
        current = xp.take(tokens, xp.reshape(position, (1,)), axis=1)  # (B, 1)
        logits, cache = model.step(params, current, cache, position)
        logits = logits[:, 0, :]
        if cfg.pad_id is not None:  # pad marks "no token": never sampled (as in the encoder-decoder's decoding)
            logits = xp.where(
                xp.arange(logits.shape[-1]) == cfg.pad_id, xp.asarray(-math.inf, dtype=logits.dtype), logits
            )
        drawn = sample(logits, ftrandom.fold_in(key, position), temperature=temperature, top_k=top_k, top_p=top_p)
        generating = position + 1 >= prompt_lengths  # (B,): past the prompt
        forced = xp.take(tokens, xp.reshape(position + 1, (1,)), axis=1)[:, 0]
        pad = xp.asarray(_filler(cfg, eos_id), dtype=xp.int32)
        new = xp.where(generating, xp.where(finished, pad, drawn), forced)
        tokens = backend.set_at(tokens, (slice(None), position + 1), new)
        finished = finished | (generating & (new == eos_id))
        return position + 1, cache, tokens, finished

    _, _, tokens, finished = backend.while_loop(running, advance, (xp.asarray(0), cache, tokens, finished))
    return tokens, finished


@with_x64_scope
def generate(
    params: dict,
    cfg: DecoderConfig,
    prompts,
    *,
    max_new_tokens: int,
    key=None,
    eos_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    prompt_lengths=None,
):
    """Continue each prompt of a decoder-only model.

    prompts (B, P) token ids, right-padded with pad_id (each row's length in prompt_lengths, or
    counted up to its first pad; every row is whole where cfg.pad_id is None) -> tokens
    (B, P + max_new_tokens): the prompt, then the sampled continuation, pad after eos_id (eos
    again where cfg.pad_id is None). temperature 0 is greedy (no key needed). The loop stops once
    every row has emitted eos_id."""
    _check_settings(temperature, top_k, top_p)
    backend = backend_of(params)
    xp = backend.xp
    prompts = backend.asarray(prompts)
    checks.check_token_ids("prompts", prompts, cfg.vocab_size, cfg.max_len, backend)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    total = prompts.shape[1] + max_new_tokens
    if total > cfg.max_len:
        raise ConfigError(
            f"the prompt ({prompts.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) is {total}, "
            f"more than this model's max_len={cfg.max_len}; ask for fewer new tokens"
        )
    if temperature > 0 and key is None:
        raise ConfigError(
            "sampling (temperature > 0) needs a key: pass key=ft.random.key(seed), or temperature=0 for greedy decoding"
        )
    if prompt_lengths is None and cfg.pad_id is None:
        lengths = [prompts.shape[1]] * prompts.shape[0]
    elif prompt_lengths is None:
        is_pad = backend.to_numpy(prompts) == cfg.pad_id
        lengths = [int(row.argmax()) if row.any() else prompts.shape[1] for row in is_pad]
    else:
        lengths = [int(n) for n in backend.to_numpy(backend.asarray(prompt_lengths))]
    if min(lengths) < 1:
        raise ConfigError("every prompt needs at least one token (begin with the beginning-of-sequence id)")
    tokens = xp.concat(
        [
            xp.astype(prompts, xp.int32),
            xp.full((prompts.shape[0], max_new_tokens), _filler(cfg, eos_id), dtype=xp.int32),
        ],
        axis=1,
    )
    key = backend.random.key(0) if key is None else backend.asarray(key)
    loop = backend.jit(_loop, static_argnames=("cfg", "max_total", "eos_id", "temperature", "top_k", "top_p"))
    tokens, _ = loop(
        params,
        tokens,
        xp.asarray(lengths, dtype=xp.int32),
        key,
        cfg=cfg,
        max_total=total,
        eos_id=eos_id,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
    )
    return tokens
