"""Model FLOPs counted exactly from shapes: matrix multiplications only, 2*m*n*k each.

Notation: B batch, S source length, T target length, D d_model, F d_ff, V target vocabulary,
N_e / N_d encoder / decoder layers. Heads do not change the count (H heads of D/H columns).

    encoder layer    8*B*S*D^2            q, k, v, o projections
                   + 4*B*S^2*D            scores q k^T and weighted sum p v
                   + 4*B*S*D*F            feed-forward, two matmuls
    decoder layer    8*B*T*D^2 + 4*B*T^2*D            self-attention (full T x T scores: the
                                                       causal mask hides, it does not skip)
                   + 4*B*T*D^2 + 4*B*S*D^2 + 4*B*T*S*D cross-attention: q, o on T; k, v on S
                   + 4*B*T*D*F                        feed-forward
    output           2*B*T*D*V
    forward          N_e * encoder + N_d * decoder + output
    train step       3 * forward: the backward pass does two matmuls of the same size for each
                     forward matmul (the input gradient and the weight/other-operand gradient).

Embedding gathers, layer norm, softmax, dropout, the loss and the optimizer are not counted.
Greedy decoding with the cache of `generate.greedy` runs the encoder once, projects the
memory to cross-attention keys/values once per decoder layer, then each of `steps` steps runs
one token (T = 1) through the decoder whose self-attention scores span the whole cache of
`steps` positions (masked, not skipped), and the output projection.
"""

from __future__ import annotations


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an (m, k) @ (k, n) product: m*n multiply-adds of length k."""
    return 2 * m * n * k


def attention_flops(batch: int, q_len: int, kv_len: int, d_model: int) -> int:
    """Multi-head attention of (batch, q_len, D) queries over (batch, kv_len, D) keys/values."""
    projections = 2 * matmul_flops(batch * q_len, d_model, d_model) + 2 * matmul_flops(batch * kv_len, d_model, d_model)
    scores_and_sum = 2 * matmul_flops(batch * q_len, kv_len, d_model)  # summed over heads
    return projections + scores_and_sum


def feed_forward_flops(batch: int, length: int, d_model: int, d_ff: int) -> int:
    return 2 * matmul_flops(batch * length, d_ff, d_model)


def encoder_flops(cfg, batch: int, src_len: int) -> int:
    per_layer = attention_flops(batch, src_len, src_len, cfg.d_model) + feed_forward_flops(
        batch, src_len, cfg.d_model, cfg.d_ff
    )
    return cfg.n_encoder_layers * per_layer


def decoder_flops(cfg, batch: int, src_len: int, tgt_len: int) -> int:
    """The decoder stack and the output projection over tgt_len positions."""
    per_layer = (
        attention_flops(batch, tgt_len, tgt_len, cfg.d_model)
        + attention_flops(batch, tgt_len, src_len, cfg.d_model)
        + feed_forward_flops(batch, tgt_len, cfg.d_model, cfg.d_ff)
    )
    return cfg.n_decoder_layers * per_layer + matmul_flops(batch * tgt_len, cfg.tgt_vocab_size, cfg.d_model)


def forward_flops(cfg, batch: int, src_len: int, tgt_len: int) -> int:
    """One forward pass: src (batch, src_len), tgt_in (batch, tgt_len) -> logits."""
    return encoder_flops(cfg, batch, src_len) + decoder_flops(cfg, batch, src_len, tgt_len)


def train_flops(cfg, batch: int, src_len: int, tgt_len: int) -> int:
    """One training step: forward plus a backward of twice the forward's matmul FLOPs."""
    return 3 * forward_flops(cfg, batch, src_len, tgt_len)


def greedy_decode_flops(cfg, batch: int, src_len: int, steps: int) -> int:
    """Cached greedy decoding of `steps` tokens per row (no early stop)."""
    d = cfg.d_model
    cross_kv = cfg.n_decoder_layers * 2 * matmul_flops(batch * src_len, d, d)
    self_attention = 4 * matmul_flops(batch, d, d) + 2 * matmul_flops(batch, steps, d)  # q k v o; over the cache
    cross_attention = 2 * matmul_flops(batch, d, d) + 2 * matmul_flops(batch, src_len, d)  # q, o; over the memory
    per_layer = self_attention + cross_attention + feed_forward_flops(batch, 1, d, cfg.d_ff)
    per_step = cfg.n_decoder_layers * per_layer + matmul_flops(batch, cfg.tgt_vocab_size, d)
    return encoder_flops(cfg, batch, src_len) + cross_kv + steps * per_step
