"""Corpus-level BLEU and chrF from sacreBLEU (the [text] extra), beside exact match.

The scores are sacreBLEU's own (0-100), computed by `sacrebleu.metrics.BLEU` / `CHRF` with their
defaults, the same numbers as `sacrebleu.corpus_bleu` / `corpus_chrf`, each with its signature
string, so they can be compared with scores reported elsewhere. Without sacreBLEU they are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from .data.bpe import INSTALL_HINT, TextExtraMissing

# The metrics that only sacreBLEU gives.
TEXT_METRICS = ("bleu", "chrf")
MISSING_NOTE = f"sacrebleu is not installed, so BLEU and chrF are left out ({INSTALL_HINT})"


def sacrebleu_available() -> bool:
    """Whether sacreBLEU can be imported."""
    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        return False
    return True


def require_sacrebleu(what: str):
    """The sacrebleu module, or TextExtraMissing naming `what` needs it."""
    try:
        import sacrebleu
    except ImportError:
        raise TextExtraMissing(f"{what} needs sacreBLEU, an optional extra: {INSTALL_HINT}") from None
    return sacrebleu


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """{"bleu", "bleu_signature", "chrf", "chrf_signature"} of hypotheses against one reference
    each (corpus level); {} where sacreBLEU is not installed."""
    if not sacrebleu_available():
        return {}
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF

    reference_streams = [list(references)]  # sacreBLEU takes one stream per reference; there is one
    scores = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        scores[name] = float(metric.corpus_score(list(hypotheses), reference_streams).score)
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


__all__ = ["MISSING_NOTE", "TEXT_METRICS", "corpus_scores", "require_sacrebleu", "sacrebleu_available"]
