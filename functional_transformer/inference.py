"""From strings to strings: prediction and evaluation of a trained model on text pairs.

Characters outside the model's vocabulary are refused (`UnknownSymbolError`, naming them) unless
the caller passes `allow_unknown=True`, which maps them to the unknown token as the tokenizer's
`encode` does: a model never silently answers a question it could not read. A source longer than
the model's max_len is an error naming it, never cut.

`evaluate` grades whole outputs (exact match), characters (character accuracy) and, with sacreBLEU
installed (the [text] extra), partly right outputs (corpus BLEU and chrF, see metrics.py).
`held_out_metrics` evaluates a model of any family: `evaluate` for an encoder-decoder, the
teacher-forced metrics of families.evaluate_examples for a language model or a classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from backends import backend_of, with_x64_scope

from . import api, families
from .checkpoint import ModelConfig
from .data import DataError, Tokenizer, encode_pairs, iterate_batches, special_id
from .generate import beam_search, greedy
from .metrics import corpus_scores
from .progress import progress_line

if TYPE_CHECKING:
    from .config import TransformerConfig
    from .models import DecoderConfig, EncoderConfig

_MAX_LISTED = 20
_MAX_REPORTED = 3


class UnknownSymbolError(DataError):
    """Input holds characters outside the model's vocabulary; `symbols` lists them (sorted)."""

    def __init__(self, symbols: list[str], tokenizer: Tokenizer, where: str = ""):
        self.symbols = list(symbols)
        listed = ", ".join(repr(c) for c in self.symbols[:_MAX_LISTED])
        if len(self.symbols) > _MAX_LISTED:
            listed += f" and {len(self.symbols) - _MAX_LISTED} more"
        verb = "is" if len(self.symbols) == 1 else "are"
        super().__init__(
            f"{listed}{where} {verb} not in this model's vocabulary (it knows: {tokenizer.describe()}); pass "
            "--allow-unknown (allow_unknown=True in Python) to map them to the unknown token"
        )


@with_x64_scope
def predict(
    params: dict,
    cfg: TransformerConfig,
    tokenizer: Tokenizer,
    sources: list[str],
    *,
    beam_size: int = 1,
    batch_size: int = 64,
    max_steps: int | None = None,
    allow_unknown: bool = False,
    progress: bool | str = False,
) -> list[str]:
    """Decode each source string (greedy with beam_size=1, else beam search), in batches of
    `batch_size` sources of similar length; the outputs come back in the order of `sources`.

    A source character outside the vocabulary raises UnknownSymbolError, unless `allow_unknown`
    (then it is read as the unknown token). progress: a line on stderr counting the sources decoded
    (True, or a string: its label; see progress.ProgressLine)."""
    if not allow_unknown:
        unknown = tokenizer.source.unknown_symbols(sources)
        if unknown:
            raise UnknownSymbolError(unknown, tokenizer)
    if not sources:
        return []
    max_steps = max_steps or cfg.max_len
    examples = encode_pairs([(s, "") for s in sources], tokenizer, cfg.max_len)
    # Similar lengths together: less padding, and decoding stops sooner (a batch ends with its longest output);
    # lengths rounded up to 8 (where that stays within max_len) so that JAX compiles a few shapes, not one per batch.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].src))
    outputs = []
    line = progress_line(progress, "decoding", len(sources), "sources")
    for batch in iterate_batches(
        [examples[i] for i in order],
        batch_size,
        pad_id=special_id(tokenizer, "pad_id"),
        pad_to_multiple=8 if cfg.max_len % 8 == 0 else 1,
        fill_last=True,
    ):
        src = batch["src"]
        kwargs = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, max_steps=max_steps)
        if beam_size == 1:
            tokens = greedy(params, src, cfg, **kwargs)
        else:
            tokens = beam_search(params, src, cfg, beam_size=beam_size, **kwargs)
        outputs.extend(tokenizer.target.decode(row) for row in np.asarray(backend_of(params).to_numpy(tokens)))
        line.advance(min(len(tokens), len(sources) - line.done))  # the last batch's fill rows are not sources
    line.close()
    in_order = [""] * len(sources)
    for position, output in zip(order, outputs):  # the last batch's fill rows (copies of a source) are left out
        in_order[position] = output
    return in_order


def check_sources(sources: list[str], tokenizer: Tokenizer, max_len: int, where: str = "source") -> None:
    """A DataError naming (as `where` and the 1-based number) every source that is empty or longer
    than `max_len` tokens, the first few listed; such a source is never cut short."""
    problems = []
    for number, source in enumerate(sources, start=1):
        n_tokens = len(tokenizer.source.encode(source))
        if not source:
            problems.append(f"{where} {number} is empty (the encoder needs at least one token)")
        elif n_tokens > max_len:
            problems.append(
                f"{where} {number} has {n_tokens} tokens, more than this model's max_len={max_len} "
                "(inputs are never cut: shorten or split it)"
            )
    if problems:
        more = f"; and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        raise DataError("; ".join(problems[:_MAX_REPORTED]) + more)


def unknown_in_pairs(tokenizer: Tokenizer, pairs) -> list[str]:
    """The characters of the pairs' sources and targets that their side's tokenizer has no id for."""
    return sorted(
        {*tokenizer.source.unknown_symbols(s for s, _ in pairs), *tokenizer.target.unknown_symbols(t for _, t in pairs)}
    )


@with_x64_scope
def evaluate(
    params: dict,
    cfg: TransformerConfig,
    tokenizer: Tokenizer,
    pairs: list[tuple[str, str]],
    *,
    beam_size: int = 1,
    batch_size: int = 64,
    allow_unknown: bool = False,
    keep_predictions: bool = False,
    progress: bool | str = False,
) -> dict:
    """Teacher-forced loss and token accuracy, plus exact match, character accuracy and (with
    sacreBLEU) corpus BLEU and chrF of decoding.

    exact_match: the fraction of sources decoded to exactly their target. char_accuracy: the
    fraction of target characters that the prediction has at the same position. bleu, chrf (0-100)
    and their sacreBLEU signatures: see metrics.corpus_scores; absent without sacreBLEU. A character
    outside the vocabulary, in a source or a target, raises UnknownSymbolError unless
    `allow_unknown`; n_with_unknown counts the examples that hold one (0 unless `allow_unknown`).
    keep_predictions adds "predictions": the decoded outputs, in the order of `pairs`. progress: a
    line on stderr counting the examples decoded (True, or a string: its label)."""
    with_unknown = [i for i, pair in enumerate(pairs) if unknown_in_pairs(tokenizer, [pair])]
    if with_unknown and not allow_unknown:
        symbols = unknown_in_pairs(tokenizer, [pairs[i] for i in with_unknown])
        raise UnknownSymbolError(symbols, tokenizer, f" (in {len(with_unknown)} of {len(pairs)} examples)")
    examples = encode_pairs(pairs, tokenizer, cfg.max_len)
    total_loss = total_correct = total_tokens = 0.0
    for batch in iterate_batches(examples, batch_size, pad_id=special_id(tokenizer, "pad_id"), fill_last=True):
        metrics = api.loss_and_metrics(params, batch, cfg, label_smoothing=0.0)
        n = float(metrics["n_tokens"])
        total_loss += float(metrics["loss"]) * n
        total_correct += float(metrics["accuracy"]) * n
        total_tokens += n
    max_steps = min(cfg.max_len, max(len(e.tgt) for e in examples))  # target + eos
    predictions = predict(
        params,
        cfg,
        tokenizer,
        [s for s, _ in pairs],
        beam_size=beam_size,
        batch_size=batch_size,
        max_steps=max_steps,
        allow_unknown=True,
        progress="evaluating" if progress is True else progress,
    )
    exact = sum(p == t for p, (_, t) in zip(predictions, pairs))
    chars = sum(len(t) for _, t in pairs)
    char_hits = sum(a == b for p, (_, t) in zip(predictions, pairs) for a, b in zip(p, t))
    result = {
        "loss": total_loss / max(total_tokens, 1.0),
        "token_accuracy": total_correct / max(total_tokens, 1.0),
        "exact_match": exact / len(pairs),
        "char_accuracy": char_hits / max(chars, 1),
        **corpus_scores(predictions, [t for _, t in pairs]),
        "n_examples": len(pairs),
        "n_with_unknown": len(with_unknown),
    }
    if keep_predictions:
        result["predictions"] = predictions
    return result


def held_out_metrics(
    params: dict,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    valid_pairs,
    *,
    labels: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool | str = False,
) -> dict:
    """Held-out metrics of a model of any family on its held-out pairs (documents as ("", text));
    progress (True or a label) shows a progress line on stderr."""
    arch = families.arch_of(cfg)
    if arch == "encoder_decoder":
        return evaluate(params, cfg, tokenizer, valid_pairs, batch_size=batch_size, progress=progress)
    if arch == "decoder":
        examples = families.encode_documents([text for _, text in valid_pairs], tokenizer, cfg.max_len)
        return families.evaluate_examples(params, cfg, examples, batch_size=batch_size, progress=progress)
    if labels is None:
        raise ValueError("evaluating a classifier needs its labels (the class names, model.labels)")
    examples, _ = families.encode_labelled(valid_pairs, tokenizer, labels, cfg.max_len)
    return families.evaluate_examples(
        params, cfg, examples, batch_size=batch_size, n_classes=len(labels), progress=progress
    )


def _class_logits(params: dict, ids, cfg: EncoderConfig):
    """A classifier's logits (B, n_classes) for ids (B, T)."""
    return families.model_of(cfg).apply(params, ids)


@with_x64_scope
def classify(
    params: dict,
    cfg: EncoderConfig,
    tokenizer: Tokenizer,
    labels: list[str],
    texts: list[str],
    *,
    batch_size: int = 64,
    allow_unknown: bool = False,
) -> list[str]:
    """A classifier's label for each text (the argmax class), in the order of `texts`. A text that
    is empty or longer than max_len tokens is an error naming it; unknown characters as in predict."""
    if not allow_unknown:
        unknown = tokenizer.source.unknown_symbols(texts)
        if unknown:
            raise UnknownSymbolError(unknown, tokenizer)
    check_sources(texts, tokenizer, cfg.max_len, "text")
    backend = backend_of(params)
    apply = backend.jit(_class_logits, static_argnames=("cfg",))  # one compilation per config and shape
    predicted = []
    for batch in iterate_batches(
        encode_pairs([(t, "") for t in texts], tokenizer, cfg.max_len),
        batch_size,
        pad_id=special_id(tokenizer, "pad_id"),
        pad_to_multiple=8 if cfg.max_len % 8 == 0 else 1,
    ):
        logits = apply(params, backend.asarray(batch["src"]), cfg)
        predicted.extend(int(i) for i in np.argmax(backend.to_numpy(logits), axis=-1))
    return [labels[i] for i in predicted]


@with_x64_scope
def continue_texts(
    params: dict,
    cfg: DecoderConfig,
    tokenizer: Tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key=None,
    batch_size: int = 64,
    allow_unknown: bool = False,
) -> list[str]:
    """A language model's continuation of each prompt (the new text only, up to end-of-sequence):
    greedy with temperature 0, else sampled (sampling.generate; a key is needed). max_new_tokens
    defaults to what max_len leaves after the longest prompt of a batch."""
    from .sampling import generate

    if not allow_unknown:
        unknown = tokenizer.target.unknown_symbols(prompts)
        if unknown:
            raise UnknownSymbolError(unknown, tokenizer)
    backend = backend_of(params)
    outputs = []
    for start in range(0, len(prompts), batch_size):
        encoded = [[tokenizer.bos_id, *tokenizer.target.encode(p)] for p in prompts[start : start + batch_size]]
        longest = max(len(ids) for ids in encoded)
        if longest >= cfg.max_len:
            raise DataError(
                f"a prompt has {longest - 1} tokens; this model reads at most max_len={cfg.max_len} "
                "(with beginning-of-sequence), leaving no room to continue it"
            )
        rows = np.full((len(encoded), longest), tokenizer.pad_id, dtype=np.int32)
        for row, ids in enumerate(encoded):
            rows[row, : len(ids)] = ids
        new = min(max_new_tokens or cfg.max_len, cfg.max_len - longest)
        tokens = backend.to_numpy(
            generate(
                params,
                cfg,
                rows,
                max_new_tokens=new,
                key=key,
                eos_id=tokenizer.eos_id,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                prompt_lengths=[len(ids) for ids in encoded],
            )
        )
        outputs.extend(tokenizer.target.decode(row[len(ids) :]) for row, ids in zip(tokens, encoded))
    return outputs


__all__ = [
    "UnknownSymbolError",
    "check_sources",
    "classify",
    "continue_texts",
    "evaluate",
    "held_out_metrics",
    "predict",
    "unknown_in_pairs",
]
