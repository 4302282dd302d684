"""From strings to strings: prediction and evaluation of a trained model on text pairs.

Characters outside the model's vocabulary are refused (`UnknownSymbolError`, naming them) unless
the caller passes `allow_unknown=True`, which maps them to the unknown token as the tokenizer's
`encode` does: a model never silently answers a question it could not read.
"""

from __future__ import annotations

import numpy as np

from backends import backend_of, with_x64_scope

from . import api
from .data import CharTokenizer, DataError, encode_pairs, iterate_batches
from .generate import beam_search, greedy

_MAX_LISTED = 20


class UnknownSymbolError(DataError):
    """Input holds characters outside the model's vocabulary; `symbols` lists them (sorted)."""

    def __init__(self, symbols: list[str], tokenizer: CharTokenizer, where: str = ""):
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
def predict(params: dict, cfg, tokenizer: CharTokenizer, sources: list[str], *, beam_size: int = 1,
            batch_size: int = 64, max_steps: int | None = None, allow_unknown: bool = False) -> list[str]:
    """Decode each source string (greedy with beam_size=1, else beam search).

    A source character outside the vocabulary raises UnknownSymbolError, unless `allow_unknown`
    (then it is read as the unknown token)."""
    if not allow_unknown:
        unknown = tokenizer.unknown_symbols(sources)
        if unknown:
            raise UnknownSymbolError(unknown, tokenizer)
    if not sources:
        return []
    max_steps = max_steps or cfg.max_len
    examples = encode_pairs([(s, "") for s in sources], tokenizer, cfg.max_len)
    outputs = []
    for batch in iterate_batches(examples, batch_size, pad_id=tokenizer.pad_id, fill_last=True):
        src = batch["src"]
        kwargs = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, max_steps=max_steps)
        if beam_size == 1:
            tokens = greedy(params, src, cfg, **kwargs)
        else:
            tokens = beam_search(params, src, cfg, beam_size=beam_size, **kwargs)
        outputs.extend(tokenizer.decode(row) for row in np.asarray(backend_of(params).to_numpy(tokens)))
    return outputs[: len(sources)]  # the last batch's fill rows decode a copy of a source


@with_x64_scope
def evaluate(params: dict, cfg, tokenizer: CharTokenizer, pairs: list[tuple[str, str]], *, beam_size: int = 1,
             batch_size: int = 64, allow_unknown: bool = False) -> dict:
    """Teacher-forced loss and token accuracy, plus exact match and character accuracy of decoding.

    exact_match: the fraction of sources decoded to exactly their target. char_accuracy: the
    fraction of target characters that the prediction has at the same position. A character
    outside the vocabulary, in a source or a target, raises UnknownSymbolError unless
    `allow_unknown`; n_with_unknown counts the examples that hold one (0 unless `allow_unknown`)."""
    with_unknown = [i for i, pair in enumerate(pairs) if tokenizer.unknown_symbols(pair)]
    if with_unknown and not allow_unknown:
        symbols = tokenizer.unknown_symbols(text for i in with_unknown for text in pairs[i])
        raise UnknownSymbolError(symbols, tokenizer, f" (in {len(with_unknown)} of {len(pairs)} examples)")
    examples = encode_pairs(pairs, tokenizer, cfg.max_len)
    total_loss = total_correct = total_tokens = 0.0
    for batch in iterate_batches(examples, batch_size, pad_id=tokenizer.pad_id, fill_last=True):
        metrics = api.loss_and_metrics(params, batch, cfg, label_smoothing=0.0)
        n = float(metrics["n_tokens"])
        total_loss += float(metrics["loss"]) * n
        total_correct += float(metrics["accuracy"]) * n
        total_tokens += n
    max_steps = min(cfg.max_len, max(len(e.tgt) for e in examples))  # target + eos
    predictions = predict(params, cfg, tokenizer, [s for s, _ in pairs], beam_size=beam_size,
                          batch_size=batch_size, max_steps=max_steps, allow_unknown=True)
    exact = sum(p == t for p, (_, t) in zip(predictions, pairs))
    chars = sum(len(t) for _, t in pairs)
    char_hits = sum(a == b for p, (_, t) in zip(predictions, pairs) for a, b in zip(p, t))
    return {
        "loss": total_loss / max(total_tokens, 1.0),
        "token_accuracy": total_correct / max(total_tokens, 1.0),
        "exact_match": exact / len(pairs),
        "char_accuracy": char_hits / max(chars, 1),
        "n_examples": len(pairs),
        "n_with_unknown": len(with_unknown),
    }


__all__ = ["UnknownSymbolError", "evaluate", "predict"]
