"""Studies: one-off measurements behind the findings in the docs, apart from the benchmark a user runs.

Each runs as `python -m benchmarks.studies.NAME` from the repository root (`--help` for its flags):

- `ab`: A/B timing of one benchmarked call built from two source trees, interleaved in one process.
- `profile_step`: cProfile of one benchmarked call: where the time of a step goes.
- `profile_numpy_step`: the NumPy train step's time by kind of operation (matmuls, softmax, optimizer, ...).
- `backend_agreement`: how closely the two backends' loss gradients agree, in float64 and float32.
- `backward_lines`: how much backward code was written by hand, per module, against the forward code.
- `compile_times`: what a first call costs on each backend against the calls that follow.
- `mistakes`: the same two mistakes (a shape bug, a diverging learning rate) on both backends.
- `vjp_slips`: what the gradient check catches: check_vjp's error with one slip planted in a VJP.
- `trajectory`: one training trajectory on NumPy and on JAX from the same seed, both loss curves plotted.
- `token_batching`: `--max-tokens` against fixed-size batches: padding, step time and tokens/s.
- `preset_speed`: the gpt2 and llama presets' train steps at one size: CPU time per step.
- `jax_cpu_probe`: JAX's CPU step against PyTorch eager: matmul rates, XLA flags, a profile by kind, bfloat16.
- `long_attention`: the tiny model's train step at long lengths, full against blockwise attention: time and peak memory.

Like the benchmark's package file, this one imports nothing, so that a study can clean its
environment before NumPy is imported (`benchmarks.env_guard`).
"""
