"""Autoregressive generation: greedy and beam search, with a key/value cache.

The cache holds, per decoder layer, the self-attention keys/values of the tokens generated so far,
(B, H, max_steps, Dh), written one position per step, and the cross-attention keys/values of the
encoder memory, (B, H, S, Dh), computed once per source. One step then costs O(t) attention for
the new token instead of re-running the decoder over the whole prefix (O(t^2)).

A step runs the model's own single-position step (the parts' `step`: the same block code as
training, in eval mode), so cached generation computes exactly what the teacher-forced decoder
computes; `greedy(..., use_cache=False)` re-runs the full decoder each step as
a reference.

Both searches are one step function on fixed shapes (`_greedy_step`, `_beam_step`) driven by
`_decode`, which encodes the source, builds the cache and steps until every row has ended or
max_steps, through `Backend.while_loop`: on JAX `_decode` is jitted whole and the loop is one
`lax.while_loop` with the cache and the per-row state as its carry (no return to Python per token;
one compilation per shape), on NumPy it is a Python `while` over the same step.
"""

from __future__ import annotations

import math

from backends import array_namespace, backend_of, with_x64_scope

from . import api, checks, model
from .config import TransformerConfig
from .errors import ConfigError
from .layers import softmax
from .parts import padding_mask


def init_cache(params: dict, memory, cross_mask, cfg: TransformerConfig, max_steps: int) -> dict:
    """{"layer_i": {"0": self-attention's {"k", "v"}, "1": cross-attention's}}: empty self-attention
    keys/values (B, H, max_steps, Dh) and the memory's cross-attention keys/values (B, H, S, Dh)."""
    xp = backend_of(memory).xp
    ids = xp.zeros((memory.shape[0], 1), dtype=xp.int32)
    return model.for_config(cfg).init_cache(params, (ids, memory), max_steps, memory_mask=cross_mask)


def step(params: dict, cache: dict, tokens, position, memory, cross_mask, cfg: TransformerConfig):
    """The next-token logits (B, V) for tokens (B,) at `position`, and the cache with them written in."""
    xp = backend_of(cache).xp
    logits, cache = model.for_config(cfg).step(
        params, (xp.reshape(tokens, (-1, 1)), memory), cache, position, memory_mask=cross_mask
    )
    return logits[:, 0, :], cache


def _checked_src(src, params, cfg: TransformerConfig, max_steps):
    """-> (backend, src on it), after the input checks (token ids are read here, outside any jit)."""
    backend, a = checks.prepare_inputs(params, cfg, False, None, src=src)
    if max_steps < 1 or max_steps > cfg.max_len:
        raise ConfigError(f"max_steps must be in [1, max_len={cfg.max_len}], got {max_steps}")
    return backend, a["src"]


def _decode(
    params: dict, src, state: dict, cfg: TransformerConfig, step_fn, eos_id: int, max_steps: int, beam_size: int
) -> dict:
    """Encode src (B, S), build the cache, then `cache, state = step_fn(...)` at positions 0, 1, ...
    until every row has ended (all of state["finished"]) or max_steps -> the last state.

    With beam_size > 1 every row's memory is repeated for its beams, (B, ...) -> (B * k, ...),
    beams of a row adjacent. Jitted whole on JAX, where the loop is one lax.while_loop."""
    backend = backend_of(params)
    xp = backend.xp
    memory = model.encode(params, src, cfg)
    cross_mask = padding_mask(src, cfg.pad_id)  # (B, S)
    if beam_size > 1:
        batch = src.shape[0]
        repeat = xp.reshape(xp.broadcast_to(xp.reshape(xp.arange(batch), (batch, 1)), (batch, beam_size)), (-1,))
        memory, cross_mask = xp.take(memory, repeat, axis=0), xp.take(cross_mask, repeat, axis=0)
    cache = init_cache(params, memory, cross_mask, cfg, max_steps)

    def running(carry):
        position, _, state = carry
        return (position < max_steps) & ~xp.all(state["finished"])

    def advance(carry):
        position, cache, state = carry
        cache, state = step_fn(params, cache, state, position, (memory, cross_mask), cfg, eos_id)
        return position + 1, cache, state

    return backend.while_loop(running, advance, (xp.asarray(0), cache, state))[2]


def _run_decode(backend, params, src, state, cfg: TransformerConfig, step_fn, eos_id, max_steps, beam_size=1) -> dict:
    """_decode, jitted on JAX: one compilation per config, step function, eos_id, max_steps and shape."""
    decode = backend.jit(_decode, static_argnames=("cfg", "step_fn", "eos_id", "max_steps", "beam_size"))
    return decode(params, src, state, cfg=cfg, step_fn=step_fn, eos_id=eos_id, max_steps=max_steps, beam_size=beam_size)


def _never_pad(logits, pad_id: int):
    """Logits with pad ruled out: pad marks "no token" after eos, and a pad inside a prefix would be
    a key the full decoder masks but the cache keeps."""
    xp = array_namespace(logits)
    return xp.where(xp.arange(logits.shape[-1]) == pad_id, xp.asarray(-math.inf, dtype=logits.dtype), logits)


def _greedy_pick(logits, state, position, cfg: TransformerConfig, eos_id):
    """The greedy state after the logits (B, V) at `position`: the argmax token (never pad) for a
    live row, pad for a row that has ended."""
    backend = backend_of(logits)
    xp = backend.xp
    logits = _never_pad(logits, cfg.pad_id)
    pad = xp.asarray(cfg.pad_id, dtype=xp.int32)
    tokens = xp.where(state["finished"], pad, xp.astype(xp.argmax(logits, axis=-1), xp.int32))
    return {
        "tokens": tokens,
        "finished": state["finished"] | (tokens == eos_id),
        "output": backend.set_at(state["output"], (slice(None), position), tokens),
    }


def _greedy_start(xp, batch: int, cfg: TransformerConfig, bos_id: int, max_steps: int) -> dict:
    """Greedy's state before the first step: every row live, at bos, its output all pad."""
    return {
        "tokens": xp.full((batch,), bos_id, dtype=xp.int32),
        "finished": xp.zeros((batch,), dtype=xp.bool),
        "output": xp.full((batch, max_steps), cfg.pad_id, dtype=xp.int32),
    }


def _greedy_step(params, cache, state, position, source, cfg: TransformerConfig, eos_id):
    """One greedy step on fixed shapes over the cache -> (cache, state); source is (memory, cross_mask)."""
    memory, cross_mask = source
    logits, cache = step(params, cache, state["tokens"], position, memory, cross_mask, cfg)
    return cache, _greedy_pick(logits, state, position, cfg, eos_id)


@with_x64_scope
def greedy(
    params: dict, src, cfg: TransformerConfig, *, bos_id: int, eos_id: int, max_steps: int, use_cache: bool = True
):
    """src (B, S) -> tokens (B, max_steps): the argmax token (never pad) each step, pad_id after end-of-sequence.

    Stops early once every row has emitted eos_id (the rest is pad_id)."""
    backend, src = _checked_src(src, params, cfg, max_steps)
    xp = backend.xp
    state = _greedy_start(xp, src.shape[0], cfg, bos_id, max_steps)
    if use_cache:
        return _run_decode(backend, params, src, state, cfg, _greedy_step, eos_id, max_steps)["output"]
    # The reference: the full decoder over the whole prefix every step, a Python loop on every backend.
    memory = api.encode(params, src, cfg)
    prefix = state["tokens"][:, None]
    for position in range(max_steps):
        state = _greedy_pick(api.decode(params, memory, src, prefix, cfg)[:, -1, :], state, position, cfg, eos_id)
        prefix = xp.concat([prefix, state["tokens"][:, None]], axis=1)
        if bool(xp.all(state["finished"])):
            break
    return state["output"]


def length_penalty(length, alpha: float):
    """GNMT's ((5 + |Y|) / 6) ** alpha (Wu et al. 2016), which the paper uses with alpha = 0.6."""
    return ((5.0 + length) / 6.0) ** alpha


def _beam_start(xp, batch: int, k: int, cfg: TransformerConfig, bos_id: int, max_steps: int) -> dict:
    """Beam search's state before the first step, k hypotheses per row (tokens flat, (B * k,))."""
    dtype = getattr(xp, cfg.dtype)
    return {
        "tokens": xp.full((batch * k,), bos_id, dtype=xp.int32),
        # Only the first beam of a row starts live, so step one does not pick k copies of one token.
        "scores": xp.asarray([[0.0] + [-math.inf] * (k - 1)] * batch, dtype=dtype),
        "finished": xp.zeros((batch, k), dtype=xp.bool),
        "lengths": xp.zeros((batch, k), dtype=dtype),
        "history": xp.full((batch, k, max_steps), cfg.pad_id, dtype=xp.int32),
    }


def _beam_step(params, cache, state, position, source, cfg: TransformerConfig, eos_id):
    """One beam-search step on fixed shapes: extend every live hypothesis, keep the best k per row;
    source is (memory, cross_mask), each row repeated for its beams."""
    backend = backend_of(cache)
    xp = backend.xp
    batch, k = state["scores"].shape
    vocab = cfg.tgt_vocab_size
    memory, cross_mask = source
    logits, cache = step(params, cache, state["tokens"], position, memory, cross_mask, cfg)
    log_probs = xp.reshape(softmax.log_softmax(_never_pad(logits, cfg.pad_id)), (batch, k, vocab))
    # A finished hypothesis can only continue with pad, at log-probability 0: its score is frozen.
    frozen = xp.astype(xp.where(xp.arange(vocab) == cfg.pad_id, 0.0, -math.inf), log_probs.dtype)
    log_probs = xp.where(state["finished"][..., None], frozen, log_probs)
    candidates = xp.reshape(state["scores"][..., None] + log_probs, (batch, k * vocab))
    best = xp.argsort(-candidates, axis=-1, stable=True)[:, :k]  # (B, k), best first
    beam, token = best // vocab, xp.astype(best % vocab, xp.int32)
    was_finished = xp.take_along_axis(state["finished"], beam, axis=-1)
    rows = xp.reshape(beam + xp.reshape(xp.arange(batch), (batch, 1)) * k, (-1,))  # flat source beam
    history = xp.take(xp.reshape(state["history"], (batch * k, -1)), rows, axis=0)
    history = backend.set_at(history, (slice(None), position), xp.reshape(token, (-1,)))
    cache = backend.tree_map(lambda c: xp.take(c, rows, axis=0), cache)
    return cache, {
        "tokens": xp.reshape(token, (-1,)),
        "scores": xp.take_along_axis(candidates, best, axis=-1),
        "finished": was_finished | (token == eos_id),
        "lengths": xp.take_along_axis(state["lengths"], beam, axis=-1)
        + xp.astype(~was_finished, state["lengths"].dtype),
        "history": xp.reshape(history, (batch, k, -1)),
    }


def _best_hypothesis(state: dict, alpha: float):
    """The history (B, max_steps) of each row's best final hypothesis by score / length_penalty."""
    xp = array_namespace(state["scores"])
    best_beam = xp.argmax(state["scores"] / length_penalty(state["lengths"], alpha), axis=-1)  # (B,)
    return xp.take_along_axis(state["history"], best_beam[:, None, None], axis=1)[:, 0, :]


@with_x64_scope
def beam_search(
    params: dict,
    src,
    cfg: TransformerConfig,
    *,
    bos_id: int,
    eos_id: int,
    max_steps: int,
    beam_size: int = 4,
    alpha: float = 0.6,
):
    """src (B, S) -> tokens (B, max_steps), the best of `beam_size` hypotheses by log p / length_penalty.

    Each step keeps the beam_size best continuations by total log-probability; a hypothesis that
    has emitted eos_id is finished and its score frozen. With beam_size=1 this is greedy."""
    if beam_size < 1:
        raise ConfigError(f"beam_size must be at least 1, got {beam_size}")
    backend, src = _checked_src(src, params, cfg, max_steps)
    xp = backend.xp
    state = _beam_start(xp, src.shape[0], beam_size, cfg, bos_id, max_steps)
    state = _run_decode(backend, params, src, state, cfg, _beam_step, eos_id, max_steps, beam_size=beam_size)
    return _best_hypothesis(state, alpha)
