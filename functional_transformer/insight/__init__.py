"""Seeing inside a trained model: its attention maps (attention.py), plots of them and of a run's
curves (plots.py, matplotlib: the [plot] extra), and a one-page HTML report of a run (report.py).

    import functional_transformer as ft
    model = ft.load("runs/reverse")
    maps = ft.attention_maps(model.params, model.cfg, model.tokenizer, "apple")
    maps["cross"].shape        # (decoder layers, heads, target + 1, source): rows sum to 1
"""

from .attention import KINDS, attention_maps

__all__ = ["KINDS", "attention_maps"]
