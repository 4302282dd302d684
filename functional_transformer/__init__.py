"""functional_transformer: the Transformer of "Attention Is All You Need" as pure functions."""
