"""The benchmark configurations: a model shape plus the batch it runs on."""

from __future__ import annotations

import dataclasses

from functional_transformer.config import TransformerConfig


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmarked model and batch shape: tokens are (batch, src_len) and (batch, tgt_len)."""

    name: str
    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int  # encoder layers = decoder layers
    batch: int
    src_len: int
    tgt_len: int
    compute_dtype: str | None = None  # TransformerConfig.compute_dtype (--compute-dtype)

    def model_config(self, drop_rate: float = 0.1) -> TransformerConfig:
        """The float32, post-norm, untied model of the paper with this shape (dropout 0.1), computing
        in compute_dtype when one is set."""
        return TransformerConfig(
            src_vocab_size=self.vocab_size,
            tgt_vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            n_encoder_layers=self.n_layers,
            n_decoder_layers=self.n_layers,
            max_len=max(self.src_len, self.tgt_len),
            drop_rate=drop_rate,
            dtype="float32",
            compute_dtype=self.compute_dtype,
        )


CONFIGS = {
    "tiny": BenchConfig(
        "tiny", vocab_size=32, d_model=128, n_heads=4, d_ff=512, n_layers=2, batch=64, src_len=32, tgt_len=32
    ),
    "small": BenchConfig(
        "small", vocab_size=128, d_model=256, n_heads=4, d_ff=1024, n_layers=3, batch=32, src_len=64, tgt_len=64
    ),
    "base": BenchConfig(
        "base", vocab_size=1000, d_model=512, n_heads=8, d_ff=2048, n_layers=6, batch=16, src_len=64, tgt_len=64
    ),
    # Sentence-length sequences (a subword vocabulary, 128 tokens each way): training and decoding
    # tokens/s where attention's length-squared terms start to count. Not in the default run.
    "long": BenchConfig(
        "long", vocab_size=1000, d_model=256, n_heads=4, d_ff=1024, n_layers=3, batch=8, src_len=128, tgt_len=128
    ),
    # For a GPU (about 0.5 PFLOP per train step): not in the default list, and hours per step on a CPU.
    "big": BenchConfig(
        "big", vocab_size=32000, d_model=1024, n_heads=16, d_ff=4096, n_layers=6, batch=128, src_len=256, tgt_len=256
    ),
}
# What `python -m benchmarks` measures without --configs (results.json holds these).
DEFAULT_CONFIGS = ("tiny", "small", "base")
