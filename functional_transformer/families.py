"""The three model families as things to train: what a batch means to each, its loss's inputs and
targets, its input checks and its held-out evaluation. The training step (gradients.py), the loop
(train.py) and `fit` (runs.py) call these and are otherwise the same for every family.

    arch              model (models/)        an example                      its batch
    encoder_decoder   EncoderDecoder         (source, target) strings        src, tgt_in, tgt_out
    decoder           DecoderOnly (a GPT)    one document (a line of text)   tgt_in (bos + doc), tgt_out (doc + eos)
    encoder           EncoderOnly            (text, label)                   src (the text), tgt_out[:, 0] (label + 1)

Every family's examples are `EncodedPair`s, so one batching serves all three (data/batching.py):
a document is a pair with no source; a labelled text is a pair whose target is its class id plus
one (0 is the padding id, so a filler row of a batch, all padding, is a class no one predicts and
the loss ignores).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from backends import Backend, backend_of, with_x64_scope

from . import checkpoint, checks, loss
from .checkpoint import ModelConfig
from .config import DEFAULT_BEST_BY, METRICS, TransformerConfig
from .data import DataError, EncodedPair, Tokenizer, iterate_batches, special_id
from .errors import ConfigError
from .models import DecoderConfig, EncoderConfig, decoder_only, encoder_decoder, encoder_only
from .progress import ProgressLine

ARCHS = tuple(checkpoint.ARCHS)
# METRICS (each family's held-out metrics) and DEFAULT_BEST_BY live in config, beside TrainConfig.best_by.
CONFIGS = {"encoder_decoder": TransformerConfig, "decoder": DecoderConfig, "encoder": EncoderConfig}


def arch_of(cfg: ModelConfig) -> str:
    return checkpoint.arch_of(cfg)


def model_of(cfg: ModelConfig):
    """The model (a Part) of a config of any family."""
    arch = arch_of(cfg)
    module = {"encoder_decoder": encoder_decoder, "decoder": decoder_only, "encoder": encoder_only}[arch]
    return module.for_config(cfg)


def inputs(cfg: ModelConfig, batch: dict):
    """(the model's input x, the loss's targets, its ignore index) of a batch of `cfg`'s family."""
    if isinstance(cfg, TransformerConfig):
        return (batch["src"], batch["tgt_in"]), batch["tgt_out"], cfg.pad_id
    if isinstance(cfg, DecoderConfig):
        return batch["tgt_in"], batch["tgt_out"], cfg.pad_id
    return batch["src"], batch["tgt_out"][:, 0] - 1, -1  # filler rows: label 0 - 1, ignored


def check_batch(batch: dict, cfg: ModelConfig, backend: Backend) -> None:
    """The token ids a batch of `cfg`'s family feeds the model, each within its vocabulary and max_len."""
    if isinstance(cfg, TransformerConfig):
        checks.check_token_ids("src", batch["src"], cfg.src_vocab_size, cfg.max_len, backend)
        checks.check_token_ids("tgt_in", batch["tgt_in"], cfg.tgt_vocab_size, cfg.max_len, backend)
    elif isinstance(cfg, DecoderConfig):
        checks.check_token_ids("tgt_in", batch["tgt_in"], cfg.vocab_size, cfg.max_len, backend)
    else:
        checks.check_token_ids("src", batch["src"], cfg.vocab_size, cfg.max_len, backend)


def n_outputs(cfg: ModelConfig) -> int:
    """How many classes the model's logits score: the target vocabulary, or a classifier's classes."""
    if isinstance(cfg, TransformerConfig):
        return cfg.tgt_vocab_size
    if isinstance(cfg, DecoderConfig):
        return cfg.vocab_size
    return cfg.n_classes


def pad_id_of(cfg: ModelConfig) -> int:
    """The id that pads `cfg`'s batches; a ConfigError for a vocabulary without one (pad_id None, as
    in a converted GPT-2), which can generate text (ft generate) but not be trained or evaluated."""
    if cfg.pad_id is None:
        raise ConfigError(
            "this model's vocabulary has no pad token (pad_id None), and batches of training or evaluation "
            "examples need one; generate text with it instead (ft generate)"
        )
    return cfg.pad_id


def default_best_by(cfg: ModelConfig) -> str:
    return DEFAULT_BEST_BY[arch_of(cfg)]


def check_best_by(best_by: str, cfg: ModelConfig) -> None:
    arch = arch_of(cfg)
    if best_by not in METRICS[arch]:
        raise ConfigError(
            f"best_by={best_by!r} is not a held-out metric of the {arch} model: choose one of {sorted(METRICS[arch])}"
        )


# --- examples ------------------------------------------------------------------------------------


def encode_documents(documents: Sequence[str], tokenizer: Tokenizer, max_len: int) -> list[EncodedPair]:
    """Documents as language-model examples: one stream of bos + document + eos for every document,
    cut into windows of max_len + 1 tokens that overlap by one (a window's inputs are its first
    max_len tokens, its targets the last max_len), so every token but the stream's first is
    predicted exactly once and no batch slot is spent on padding but in the last window. An empty
    document is an error."""
    stream = []
    for index, document in enumerate(documents):
        ids = tokenizer.target.encode(document)
        if not ids:
            raise DataError(f"document {index} is empty; a language-model example needs at least one token")
        stream += [tokenizer.bos_id, *ids, tokenizer.eos_id]
    return [
        EncodedPair((), tuple(stream[start : start + max_len + 1]))
        for start in range(0, max(len(stream) - 1, 1), max_len)
    ]


def encode_labelled(
    pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, labels: Sequence[str], max_len: int | None
) -> tuple[list, int]:
    """(text, label) pairs as classifier examples, each text cut to max_len tokens -> (examples, how
    many were cut). A label outside `labels` is an error naming it."""
    index = {label: i for i, label in enumerate(labels)}
    bos_id = special_id(tokenizer, "bos_id")
    examples, n_cut = [], 0
    for number, (text, label) in enumerate(pairs):
        if label not in index:
            raise DataError(
                f"example {number} has the label {label!r}, which the training data does not have "
                f"(labels: {', '.join(map(repr, labels[:20]))}{' ...' if len(labels) > 20 else ''})"
            )
        ids = tuple(tokenizer.source.encode(text))
        if not ids:
            raise DataError(f"example {number} has an empty text; the classifier needs at least one token")
        if max_len is not None and len(ids) > max_len:
            ids, n_cut = ids[:max_len], n_cut + 1
        examples.append(EncodedPair(ids, (bos_id, index[label] + 1)))
    return examples, n_cut


def unigram_perplexity(train: Sequence[EncodedPair], held_out: Sequence[EncodedPair], vocab_size: int) -> float:
    """The held-out perplexity of the unigram model of the training tokens (add-one smoothed over the
    vocabulary), over the tokens a language model predicts (each window's targets). A model that
    learnt nothing of context does no better."""
    counts = Counter(token for example in train for token in example.tgt[1:])
    total = sum(counts.values()) + vocab_size
    nll = [-math.log((counts[token] + 1) / total) for example in held_out for token in example.tgt[1:]]
    return math.exp(sum(nll) / max(len(nll), 1))


# Settings `fit` and `ft train` use when not told otherwise (the encoder-decoder's are run_data.MODEL_DEFAULTS);
# the vocabulary (and a classifier's classes) follow from the data. A language model reads windows of
# max_len tokens of its text; a classifier's max_len is its longest text, rounded up to 8.
MODEL_DEFAULTS = {
    "decoder": {"d_model": 128, "n_heads": 4, "d_ff": 512, "n_layers": 4, "drop_rate": 0.1, "max_len": 128},
    "encoder": {"d_model": 128, "n_heads": 4, "d_ff": 512, "n_layers": 2, "drop_rate": 0.1},
}


def make_config(
    arch: str,
    tokenizer: Tokenizer,
    model: dict | ModelConfig | None = None,
    *,
    longest: int | None = None,
    n_classes: int | None = None,
) -> ModelConfig:
    """The DecoderConfig or EncoderConfig for data: the vocabulary and pad id from the tokenizer, a
    classifier's n_classes and (unless given) max_len from the data, the rest from `model` (a dict of
    fields over MODEL_DEFAULTS[arch], or over a named architecture's with {"preset": "gpt2" | "llama"};
    or a whole config, checked against the data)."""
    config_type = CONFIGS[arch]
    derived: dict[str, int | None] = {
        "vocab_size": tokenizer.target.vocab_size if arch == "decoder" else tokenizer.source.vocab_size,
        "pad_id": tokenizer.pad_id,
    }
    if arch == "encoder":
        derived["n_classes"] = n_classes
    if model is not None and not isinstance(model, dict):
        if not isinstance(model, config_type):
            raise ConfigError(
                f"model for arch={arch!r} must be a dict of {config_type.__name__} fields or a "
                f"{config_type.__name__}, got {type(model).__name__}"
            )
        for name, value in derived.items():
            if getattr(model, name) != value:
                raise ConfigError(
                    f"the model's {name} is {getattr(model, name)} but the data needs {value}; pass a "
                    "dict of the other fields and let fit fill these in"
                )
        return model
    fields = {**MODEL_DEFAULTS[arch], **dict(model or {})}
    given = sorted(set(model or {}) & set(derived))
    if given:
        raise ConfigError(f"{given} follow from the data; leave them out (or pass a whole {config_type.__name__})")
    if arch == "encoder" and "max_len" not in (model or {}):
        if longest is None:
            raise ConfigError("an encoder's config needs longest (its longest text, in tokens) or a max_len in model")
        fields["max_len"] = -(-longest // 8) * 8
    preset_name = fields.pop("preset", None)
    if preset_name is not None:  # a named architecture (models/presets.py), the fields given over it
        if arch != "decoder":
            raise ConfigError(f"preset={preset_name!r} names a decoder-only architecture; it does not apply to {arch}")
        from .models import presets

        given = {name: value for name, value in (model or {}).items() if name != "preset"}
        return presets.preset(preset_name, **{**given, **derived})
    return config_type.from_dict({**fields, **derived})


# --- held-out evaluation ---------------------------------------------------------------------------


def _batch_outputs(params, batch, cfg: ModelConfig):
    """logits and loss metrics of one batch in eval mode (no label smoothing)."""
    x, targets, ignore = inputs(cfg, batch)
    logits = model_of(cfg).apply(params, x)
    _, metrics, _ = loss.fwd(logits, targets, ignore, 0.0)
    return logits, metrics


@with_x64_scope
def evaluate_examples(
    params: dict,
    cfg: ModelConfig,
    examples: Sequence[EncodedPair],
    *,
    batch_size: int = 64,
    n_classes: int | None = None,
    progress: bool | str = False,
) -> dict:
    """The held-out metrics of a decoder or an encoder model on encoded examples.

    decoder: {"loss", "perplexity", "token_accuracy", "n_examples", "n_tokens"} (teacher-forced: each
    token predicted from the ones before it). encoder: {"loss", "accuracy", "n_examples", "confusion"}
    with confusion[i][j] the examples of class i predicted as class j."""
    backend = backend_of(params)
    run = backend.jit(_batch_outputs, static_argnames=("cfg",))
    arch = arch_of(cfg)
    total_loss = total_correct = total_tokens = 0.0
    confusion = np.zeros((n_classes or 0, n_classes or 0), dtype=np.int64)
    line = ProgressLine(
        progress if isinstance(progress, str) else "evaluating", len(examples), unit="examples", enabled=bool(progress)
    )
    pad_id = pad_id_of(cfg)
    for host_batch in iterate_batches(list(examples), batch_size, pad_id=pad_id, fill_last=True, pad_to_multiple=8):
        line.advance(min(batch_size, len(examples) - line.done))
        check_batch(host_batch, cfg, backend)
        logits, metrics = run(params, backend.tree_asarray(host_batch), cfg)
        n = float(metrics["n_tokens"])
        total_loss += float(metrics["loss"]) * n
        total_correct += float(metrics["accuracy"]) * n
        total_tokens += n
        if arch == "encoder":
            labels = host_batch["tgt_out"][:, 0] - 1
            predicted = np.argmax(backend.to_numpy(logits), axis=-1)
            for true, guess in zip(labels, predicted):
                if true >= 0:
                    confusion[true, guess] += 1
    line.close()
    mean_loss = total_loss / max(total_tokens, 1.0)
    result: dict[str, Any] = {"loss": mean_loss}
    if arch == "decoder":
        result.update(
            perplexity=math.exp(min(mean_loss, 700.0)),
            token_accuracy=total_correct / max(total_tokens, 1.0),
            n_tokens=int(total_tokens),
        )
    else:
        result.update(accuracy=total_correct / max(total_tokens, 1.0), confusion=confusion.tolist())
    result["n_examples"] = len(examples)
    return result


def describe_result(result: dict) -> str:
    """The scores of an evaluation on one line ("loss 1.2345 perplexity 3.44 ...")."""
    shown = [
        (name, value)
        for name, value in result.items()
        if isinstance(value, float) and not name.startswith("n_") and name != "time_s"
    ]
    return " ".join(f"{name} {value:.4f}" for name, value in shown)


def confusion_table(confusion: list[list[int]], labels: Sequence[str]) -> str:
    """A Markdown table: rows are the true labels, columns the predicted ones."""
    head = "| true \\ predicted | " + " | ".join(labels) + " |"
    rule = "|---|" + "--:|" * len(labels)
    rows = [f"| {label} | " + " | ".join(str(n) for n in row) + " |" for label, row in zip(labels, confusion)]
    return "\n".join([head, rule, *rows])


__all__ = [
    "ARCHS",
    "CONFIGS",
    "DEFAULT_BEST_BY",
    "METRICS",
    "MODEL_DEFAULTS",
    "make_config",
    "arch_of",
    "check_batch",
    "check_best_by",
    "confusion_table",
    "default_best_by",
    "describe_result",
    "encode_documents",
    "encode_labelled",
    "evaluate_examples",
    "inputs",
    "model_of",
    "n_outputs",
    "unigram_perplexity",
]
