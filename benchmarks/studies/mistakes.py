"""The same two mistakes (a shape bug, a diverging learning rate) on both backends: what their maker sees.

    uv run python -m benchmarks.studies.mistakes                  # both mistakes, both backends, Markdown
    uv run python -m benchmarks.studies.mistakes --tail 0         # whole outputs, not their last lines

1. "shape": a shape mismatch inside attention. A copy of the package is made in a temporary folder
   with one edit in layers/attention.py, the transpose of the keys forgotten in
   `scores = (q * scale) @ k.mT`, and two things are run there: a Python script calling `ft.apply`
   (what a developer sees) and `ft train` (what a user sees).
2. "nan": a learning rate far too large. The unedited `ft train` with SGD at learning rate 1000,
   no clipping, until the loss is NaN; on JAX once more with JAX_DEBUG_NANS=True.

Each runs in a fresh process with FT_BACKEND set; the output printed is its stdout and stderr
together, with the temporary folder's path written as <copy>.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MISTAKES = ("shape", "nan")
BUG = ("scores = (q * scale) @ k.mT", "scores = (q * scale) @ k")  # the edit: k^T forgotten
SCRIPT = """\
import numpy as np
import functional_transformer as ft

cfg = ft.TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=128, n_heads=4, d_ff=512,
                           n_encoder_layers=2, n_decoder_layers=2, max_len=16)
params = ft.init(ft.random.key(0), cfg)
src, tgt_in = np.ones((2, 10), np.int32), np.ones((2, 9), np.int32)
logits = ft.apply(params, src, tgt_in, cfg)
"""
TRAIN = [
    "train",
    "--task",
    "reverse",
    "--steps",
    "30",
    "--n-train",
    "2000",
    "--n-valid",
    "20",
    "--max-len",
    "8",
    "--eval-every",
    "1000",
]
NAN_FLAGS = [
    "--optimizer",
    "sgd",
    "--learning-rate",
    "1000",
    "--clip-norm",
    "0",
    "--warmup-steps",
    "1",
    "--log-every",
    "1",
]


def _run(argv: list[str], backend: str, cwd: Path, copy: Path | None, **extra_env: str) -> str:
    env = dict(os.environ, FT_BACKEND=backend, **extra_env)
    if copy is not None:
        env["PYTHONPATH"] = str(copy)  # ahead of the installed (editable) package
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    text = (proc.stdout + proc.stderr).rstrip("\n")
    if copy is not None:
        text = text.replace(str(copy), "<copy>")
    return f"{text}\n(exit status {proc.returncode})"


def _copy_with_bug(folder: Path) -> Path:
    for package in ("functional_transformer", "backends"):
        shutil.copytree(REPO / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    attention = folder / "functional_transformer" / "layers" / "attention.py"
    source = attention.read_text()
    assert source.count(BUG[0]) == 1, "the line to break is not in attention.py any more"
    attention.write_text(source.replace(*BUG))
    return folder


def outputs(backends: list[str], mistakes: list[str] = MISTAKES) -> dict:
    """{(mistake, how, backend): output} of each mistake in `mistakes` on each backend."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        copy = _copy_with_bug(tmp / "copy")
        (copy / "apply.py").write_text(SCRIPT)
        for backend in backends:
            if "shape" in mistakes:
                results[("shape", "python apply.py", backend)] = _run(["apply.py"], backend, copy, copy)
                out = tmp / f"shape-{backend}"
                results[("shape", "ft train", backend)] = _run(
                    ["-m", "functional_transformer", *TRAIN, "--out", str(out), "--no-progress"], backend, copy, copy
                )
            if "nan" in mistakes:
                out = tmp / f"nan-{backend}"
                results[("nan", "ft train", backend)] = _run(
                    ["-m", "functional_transformer", *TRAIN, *NAN_FLAGS, "--out", str(out)], backend, tmp, None
                )
        if "jax" in backends and "nan" in mistakes:  # JAX's own NaN hunt: re-run the jitted function op by op
            out = tmp / "nan-jax-debug"
            results[("nan", "JAX_DEBUG_NANS=True ft train", "jax")] = _run(
                ["-m", "functional_transformer", *TRAIN, *NAN_FLAGS, "--out", str(out)],
                "jax",
                tmp,
                None,
                JAX_DEBUG_NANS="True",
            )
    return {key: text.replace(str(tmp), "<tmp>") for key, text in results.items()}


def _tail(text: str, n: int) -> str:
    lines = text.splitlines()
    if n <= 0 or len(lines) <= n:
        return text
    return f"[... {len(lines) - n} lines above ...]\n" + "\n".join(lines[-n:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.mistakes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["numpy", "jax"], choices=["numpy", "jax"])
    parser.add_argument("--mistakes", nargs="+", default=list(MISTAKES), choices=MISTAKES, help="which (default both)")
    parser.add_argument("--tail", type=int, default=14, help="keep each output's last lines (0: all)")
    args = parser.parse_args(argv)
    for (mistake, how, backend), text in outputs(args.backends, args.mistakes).items():
        flags = " ".join(NAN_FLAGS) if mistake == "nan" else ""
        print(f"### {mistake}: `FT_BACKEND={backend} {how}` {flags}\n\n```\n{_tail(text, args.tail)}\n```\n")


if __name__ == "__main__":
    main()
