"""The command line: `ft train`, `ft eval`, `ft predict` (also `python -m functional_transformer`).

The backend is FT_BACKEND (numpy by default, or jax).

A failure the user can cause (a bad flag, file, checkpoint, input or backend) prints one line,
"ft <command>: error: ...", on stderr and exits with 2; `ft --debug <command>` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np

from . import checkpoint
from .backend_choice import default_backend
from .checkpoint_format import CheckpointError, UncheckedCheckpointWarning
from .config import TransformerConfig
from .data import CharTokenizer, DataError, TASKS, encode_pairs, make_task_data, read_tsv, task_alphabet
from .inference import evaluate, predict
from .train import OPTIMIZERS, SCHEDULES, Run, TrainConfig, TrainingDiverged, fit

DEFAULTS = TrainConfig()


def load_pairs(spec: dict) -> tuple[list, list]:
    """(train pairs, held-out pairs) from a data spec: a built-in task or TSV files."""
    if spec["kind"] == "task":
        return make_task_data(spec["task"], spec["n_train"], spec["n_valid"], spec["min_len"], spec["max_len"],
                              spec["seed"])
    train = read_tsv(spec["train"])
    if spec.get("valid"):
        valid = read_tsv(spec["valid"])
    else:  # hold out a deterministic 5% whose sources never occur in training
        order = np.random.default_rng(spec["seed"]).permutation(len(train))
        n_valid = max(1, len(train) // 20) if len(train) > 1 else 0
        valid = [train[i] for i in order[:n_valid]]
        held_out = {s for s, _ in valid}
        train = [train[i] for i in order[n_valid:] if train[i][0] not in held_out]
        if not train:
            raise DataError(f"{spec['train']} has too few distinct examples to hold some out; pass --valid")
    return train, valid


def _tokenizer_for(spec: dict, train, valid) -> CharTokenizer:
    if spec["kind"] == "task":
        return CharTokenizer.from_texts([task_alphabet(spec["task"])])
    return CharTokenizer.from_texts([text for pair in train + valid for text in pair])


def _round_up(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


def _add_model_flags(p):
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, default=128, help="model width (default 128; the paper's base uses 512)")
    g.add_argument("--n-heads", type=int, default=4, help="attention heads; must divide --d-model (default 4)")
    g.add_argument("--d-ff", type=int, default=512, help="feed-forward inner width (default 512)")
    g.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each (default 2)")
    g.add_argument("--drop-rate", type=float, default=0.1, help="residual and embedding dropout (default 0.1)")
    g.add_argument("--norm-first", action="store_true", help="pre-norm residuals instead of the paper's post-norm")
    g.add_argument("--tie-embeddings", action="store_true", help="share the target embedding with the output layer")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="parameter dtype")


def _add_train_flags(p):
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"optimizer steps (default {DEFAULTS.steps})")
    g.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help=f"sequences per step (default {DEFAULTS.batch_size})")
    g.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate,
                   help="peak learning rate; with --schedule transformer, the scale of the paper's schedule "
                        f"(default {DEFAULTS.learning_rate})")
    g.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps, help=f"warmup steps (default {DEFAULTS.warmup_steps})")
    g.add_argument("--schedule", choices=SCHEDULES, default=DEFAULTS.schedule,
                   help="learning-rate schedule: cosine (linear warmup, cosine decay), transformer (paper eq. 3), constant")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer,
                   help="adam/adamw use the paper's beta1 0.9, beta2 0.98, eps 1e-9; sgd uses momentum 0.9")
    g.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="decoupled weight decay for adamw")
    g.add_argument("--clip-norm", type=float, default=DEFAULTS.clip_norm, help="global gradient-norm clip, 0 for none")
    g.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing, help="label smoothing (paper: 0.1)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the data, the init and dropout")
    g.add_argument("--log-every", type=int, default=DEFAULTS.log_every, help="steps between progress lines")
    g.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every, help="steps between held-out evaluations")
    g.add_argument("--save-every", type=int, default=DEFAULTS.save_every, help="steps between checkpoints")
    g.add_argument("--grad-method", choices=("vjp", "autodiff"), default=None,
                   help="gradients from the hand-written VJPs or jax.grad (default: vjp on numpy, autodiff on jax)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ft", description=__doc__.splitlines()[0] + " Backend: FT_BACKEND=numpy|jax.")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of the one-line message "
                             "(give it before the command: ft --debug predict ...)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a built-in task or your own TSV data",
                       description="Train a Transformer on a character task (--task) or TSV files (--data).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", choices=sorted(TASKS), help="a built-in task (default reverse)")
    src.add_argument("--data", type=Path, help="training TSV: one 'source<TAB>target' per line")
    p.add_argument("--valid", type=Path, help="held-out TSV for --data (default: 5%% of --data held out)")
    p.add_argument("--out", type=Path, help="run folder for checkpoint, metrics.jsonl, curves.png (default runs/<task>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g = p.add_argument_group("task data")
    g.add_argument("--min-len", type=int, default=1, help="shortest task string (default 1)")
    g.add_argument("--max-len", type=int, default=12, help="longest task string; digits per operand for addition (default 12)")
    g.add_argument("--n-train", type=int, default=50_000, help="task training examples (default 50000)")
    g.add_argument("--n-valid", type=int, default=500, help="task held-out examples, never seen in training (default 500)")
    _add_model_flags(p)
    _add_train_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")

    p = sub.add_parser("eval", help="exact match and character accuracy of a checkpoint",
                       description="Evaluate a checkpoint on held-out data; the last line is 'exact_match: <fraction>'.")
    p.add_argument("--checkpoint", type=Path, required=True, help="a run folder or its checkpoint.safetensors")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", choices=sorted(TASKS),
                     help="fresh strings of this task, less any seen in training (default: the run's own held-out set)")
    src.add_argument("--data", type=Path, help="a TSV file of 'source<TAB>target' lines")
    p.add_argument("--n", type=int, default=None, help="evaluate at most this many examples")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the fresh --task strings")
    p.add_argument("--allow-unknown", action="store_true",
                   help="read characters outside the model's vocabulary as the unknown token (default: refuse "
                        "them); n_with_unknown counts the examples that hold one")

    p = sub.add_parser("predict", help="decode the given strings", description="Print one prediction per input string.")
    p.add_argument("--checkpoint", type=Path, required=True, help="a run folder or its checkpoint.safetensors")
    p.add_argument("inputs", nargs="+", help="source strings")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy; the paper uses 4, with alpha 0.6)")
    p.add_argument("--allow-unknown", action="store_true",
                   help="read characters outside the model's vocabulary as the unknown token (default: refuse them)")
    return parser


def _train(args) -> int:
    backend = default_backend()
    out = args.out or Path("runs") / (args.task or (args.data.stem if args.data else "reverse"))
    if args.resume:
        loaded = checkpoint.load(out, backend)
        cfg, tokenizer, spec = loaded["cfg"], loaded["tokenizer"], loaded["data_spec"]
        tcfg = dataclasses.replace(TrainConfig(**loaded["train_config"]), steps=args.steps)
        state, key = loaded["state"], loaded["key"]
        print(f"resuming {out} at step {int(backend.to_numpy(state['step']))}", file=sys.stderr)
    else:
        if args.data:
            spec = {"kind": "tsv", "train": str(args.data), "valid": str(args.valid) if args.valid else None,
                    "seed": args.seed}
        else:
            spec = {"kind": "task", "task": args.task or "reverse", "n_train": args.n_train, "n_valid": args.n_valid,
                    "min_len": args.min_len, "max_len": args.max_len, "seed": args.seed}
        state = key = None
        tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           warmup_steps=args.warmup_steps, schedule=args.schedule, optimizer=args.optimizer,
                           weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                           label_smoothing=args.label_smoothing, seed=args.seed, log_every=args.log_every,
                           eval_every=args.eval_every, save_every=args.save_every, grad_method=args.grad_method)
    train_pairs, valid_pairs = load_pairs(spec)
    if not args.resume:
        tokenizer = _tokenizer_for(spec, train_pairs, valid_pairs)
        longest = max(max(len(s), len(t) + 1) for s, t in train_pairs + valid_pairs)
        cfg = TransformerConfig(
            src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size, d_model=args.d_model,
            n_heads=args.n_heads, d_ff=args.d_ff, n_encoder_layers=args.layers, n_decoder_layers=args.layers,
            max_len=_round_up(longest + 1), drop_rate=args.drop_rate, pad_id=tokenizer.pad_id,
            norm_first=args.norm_first, tie_embeddings=args.tie_embeddings, dtype=args.dtype)
    run = Run(cfg=cfg, tcfg=tcfg, tokenizer=tokenizer, train_examples=encode_pairs(train_pairs, tokenizer, cfg.max_len),
              valid_pairs=valid_pairs, out_dir=out, data_spec=spec, backend=backend, progress=not args.no_progress)
    print(f"backend {backend.name}; {len(train_pairs)} training and {len(valid_pairs)} held-out pairs; "
          f"vocabulary {tokenizer.vocab_size}; writing to {out}", file=sys.stderr)
    result = fit(run, state, key)
    summary = result["summary"]
    print(f"{summary['stopped']} at step {summary['step']} in {summary['seconds']:.1f} s; checkpoint {summary['checkpoint']}")
    if "valid" in summary:
        print(f"held-out exact_match: {summary['valid']['exact_match']:.4f}")
    return 0 if summary["stopped"] == "finished" else 130


def _eval(args) -> int:
    backend = default_backend()
    loaded = checkpoint.load(args.checkpoint, backend)
    cfg, tokenizer, spec = loaded["cfg"], loaded["tokenizer"], loaded["data_spec"]
    if args.data:
        pairs = read_tsv(args.data)
    elif args.task:
        pairs = make_task_data(args.task, 0, args.n or 500, spec.get("min_len", 1), spec.get("max_len", 12), args.seed)[1]
        if spec["kind"] == "task" and spec["task"] == args.task:  # keep them held out: drop strings seen in training
            seen = {source for source, _ in load_pairs(spec)[0]}
            pairs = [pair for pair in pairs if pair[0] not in seen]
    else:
        pairs = load_pairs(spec)[1]
    pairs = pairs[: args.n] if args.n else pairs
    result = evaluate(loaded["state"]["params"], cfg, tokenizer, pairs, beam_size=args.beam,
                      allow_unknown=args.allow_unknown)
    for name in ("n_examples", "n_with_unknown", "loss", "token_accuracy", "char_accuracy"):
        print(f"{name}: {result[name]}")
    print(f"exact_match: {result['exact_match']}")
    return 0


def _predict(args) -> int:
    backend = default_backend()
    loaded = checkpoint.load(args.checkpoint, backend)
    for line in predict(loaded["state"]["params"], loaded["cfg"], loaded["tokenizer"], args.inputs, beam_size=args.beam,
                        allow_unknown=args.allow_unknown):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": _train, "eval": _eval, "predict": _predict}[args.command]
    with warnings.catch_warnings():
        _show_checkpoint_warnings_as_one_line(args.command)
        try:  # FT_BACKEND: an unknown name is a ValueError, JAX not installed an ImportError
            default_backend()
        except (ValueError, ImportError) as err:
            return _fail(args, err)
        try:
            return command(args)
        except (CheckpointError, DataError, OSError, TrainingDiverged, ValueError) as err:
            # What a user can cause: a flag, a file, a checkpoint, an input.
            return _fail(args, err)


def _fail(args, err: BaseException) -> int:
    """One line on stderr and exit status 2; with --debug, the traceback instead."""
    if args.debug:
        raise err
    print(f"ft {args.command}: error: {err}", file=sys.stderr)
    return 2


def _show_checkpoint_warnings_as_one_line(command: str) -> None:
    """Inside a warnings.catch_warnings() block: a checkpoint without checksums is reported as
    "ft <command>: warning: ..." on stderr; other warnings are shown as usual."""
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UncheckedCheckpointWarning):
            print(f"ft {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


if __name__ == "__main__":
    sys.exit(main())
