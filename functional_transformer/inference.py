"""From strings to strings: prediction and evaluation of a trained model on text pairs."""

from __future__ import annotations

import numpy as np

from backends import backend_of

from . import api
from .data import CharTokenizer, encode_pairs, iterate_batches
from .generate import beam_search, greedy


def predict(params: dict, cfg, tokenizer: CharTokenizer, sources: list[str], *, beam_size: int = 1,
            batch_size: int = 64, max_steps: int | None = None) -> list[str]:
    """Decode each source string (greedy with beam_size=1, else beam search)."""
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


def evaluate(params: dict, cfg, tokenizer: CharTokenizer, pairs: list[tuple[str, str]], *, beam_size: int = 1,
             batch_size: int = 64) -> dict:
    """Teacher-forced loss and token accuracy, plus exact match and character accuracy of decoding.

    exact_match: the fraction of sources decoded to exactly their target. char_accuracy: the
    fraction of target characters that the prediction has at the same position."""
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
                          batch_size=batch_size, max_steps=max_steps)
    exact = sum(p == t for p, (_, t) in zip(predictions, pairs))
    chars = sum(len(t) for _, t in pairs)
    char_hits = sum(a == b for p, (_, t) in zip(predictions, pairs) for a, b in zip(p, t))
    return {
        "loss": total_loss / max(total_tokens, 1.0),
        "token_accuracy": total_correct / max(total_tokens, 1.0),
        "exact_match": exact / len(pairs),
        "char_accuracy": char_hits / max(chars, 1),
        "n_examples": len(pairs),
    }


__all__ = ["predict", "evaluate"]
