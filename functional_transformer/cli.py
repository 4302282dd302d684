"""The command line: `ft train`, `ft eval`, `ft predict`, `ft generate`, `ft convert`, `ft info`, ... (also
`python -m functional_transformer`).

The backend is FT_BACKEND (numpy by default, or jax).

Exit status: 0 done; 2 a usage or input error (a bad flag, setting, file, checkpoint, input or
backend); 1 a runtime failure (the loss diverged, the disk filled); 130 Ctrl-C. Errors are one line,
"ft <command>: error: ...", on stderr; `ft --debug <command>` shows the traceback. Any other
exception is a bug in the library and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

from backends import get_backend

from . import checkpoint, config_file, families, metrics
from .backend_choice import default_backend
from .checkpoint_format import CheckpointWriteError, UncheckedCheckpointWarning
from .config import (
    ATTENTION_KERNELS,
    BEST_BY,
    COMPUTE_DTYPES,
    DTYPES,
    GRAD_METHODS,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    TransformerConfig,
)
from .data import TASKS, DataError, make_task_data, read_lines, read_tsv
from .errors import ConfigError, UserInputError
from .inference import (
    UnknownSymbolError,
    check_sources,
    classify,
    continue_texts,
    evaluate,
    held_out_metrics,
    predict,
)
from .insight import KINDS as ATTENTION_KINDS
from .models import DecoderConfig
from .run_data import (
    MODEL_DEFAULTS,
    TASK_DATA_DEFAULTS,
    TOKENIZERS,
    check_held_out_lengths,
    fit_held_out,
    load_pairs,
    tokenizer_spec,
)
from .runs import TrainedModel, fit, load
from .train import SaveFailed, TrainingDiverged
from .tuning.sweep import OBJECTIVES, PRUNERS

TRAIN_DEFAULTS = TrainConfig()


def _model_flag_defaults() -> dict:
    fields = {f.name: f.default for f in dataclasses.fields(TransformerConfig) if f.default is not dataclasses.MISSING}
    return {**fields, **MODEL_DEFAULTS}


def _add_model_flags(p):
    # Every flag defaults to None, so that `--resume` can tell what was given (and must agree with
    # the run) from what was not; the defaults shown are run_data.MODEL_DEFAULTS over TransformerConfig's.
    d = _model_flag_defaults()
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, help=f"model width (default {d['d_model']}; the paper's base uses 512)")
    g.add_argument("--n-heads", type=int, help=f"attention heads; must divide --d-model (default {d['n_heads']})")
    g.add_argument("--d-ff", type=int, help=f"feed-forward inner width (default {d['d_ff']})")
    g.add_argument("--layers", type=int, help=f"encoder and decoder layers each (default {d['n_encoder_layers']})")
    g.add_argument("--encoder-layers", type=int, help="encoder layers, over --layers")
    g.add_argument("--decoder-layers", type=int, help="decoder layers, over --layers")
    g.add_argument("--drop-rate", type=float, help=f"residual and embedding dropout (default {d['drop_rate']})")
    # --no-X as well, so that a flag can turn off what a --config file turns on.
    g.add_argument(
        "--norm-first",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pre-norm residuals instead of the paper's post-norm",
    )
    g.add_argument(
        "--tie-embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="share the target embedding with the output layer",
    )
    g.add_argument(
        "--preset",
        choices=("gpt2", "llama"),
        help="with --arch decoder: a named architecture (gpt2: pre-norm, learned positions, GELU, tied "
        "embeddings; llama: RMSNorm, rotary positions, SwiGLU, grouped-query attention, no biases); "
        "the size flags given override its sizes",
    )
    g.add_argument(
        "--attention-kernel",
        choices=ATTENTION_KERNELS,
        help="full attention, blockwise attention (memory linear in the length), or auto: blockwise from "
        "1024 x 1024 query-key pairs on (default auto)",
    )
    g.add_argument("--dtype", choices=DTYPES, help=f"parameter dtype (default {d['dtype']})")
    g.add_argument(
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        help="matmuls and activations in this dtype over --dtype params (JAX only; default: --dtype)",
    )


def _model_flags(args) -> dict:
    """The model config fields given on the command line: TransformerConfig's, or with --arch decoder
    or encoder DecoderConfig's or EncoderConfig's (--layers is then n_layers, --max-len the model's max_len)."""
    arch = _arch(args)
    fields = {
        "d_model": args.d_model,
        "n_heads": args.n_heads,
        "d_ff": args.d_ff,
        "drop_rate": args.drop_rate,
        "norm_first": args.norm_first,
        "attention_kernel": args.attention_kernel,
        "dtype": args.dtype,
    }
    if arch == "encoder_decoder":
        if args.preset is not None:
            raise ConfigError("--preset names a decoder-only architecture: give it with --arch decoder")
        # --encoder-layers and --decoder-layers say more than --layers, so they win over it.
        encoder_layers = args.layers if args.encoder_layers is None else args.encoder_layers
        decoder_layers = args.layers if args.decoder_layers is None else args.decoder_layers
        fields.update(
            n_encoder_layers=encoder_layers,
            n_decoder_layers=decoder_layers,
            tie_embeddings=args.tie_embeddings,
            compute_dtype=args.compute_dtype,
        )
    else:
        for flag, value in (
            ("--compute-dtype", args.compute_dtype),
            ("--encoder-layers", args.encoder_layers),
            ("--decoder-layers", args.decoder_layers),
            ("--tie-embeddings", args.tie_embeddings if arch == "encoder" else None),
        ):
            if value is not None:
                raise ConfigError(f"{flag} does not apply to --arch {arch}")
        fields.update(
            n_layers=args.layers,
            max_len=getattr(args, "max_len", None) if arch == "decoder" else None,
            tie_embeddings=args.tie_embeddings if arch == "decoder" else None,
        )
        if args.preset is not None:
            if arch != "decoder":
                raise ConfigError("--preset names a decoder-only architecture: give it with --arch decoder")
            fields["preset"] = args.preset
    return {name: value for name, value in fields.items() if value is not None}


# TrainConfig field -> (type, help); each becomes --field-name with the dataclass's default.
TRAIN_FLAGS = {
    "steps": (int, "optimizer steps"),
    "batch_size": (int, "sequences per step"),
    "max_tokens": (
        int,
        "instead of --batch-size: batches of at most this many padded tokens (rows x length) from "
        "examples of similar length (length buckets; fewer padding tokens)",
    ),
    "learning_rate": (float, "peak learning rate; with --schedule transformer, the scale of the paper's schedule"),
    "warmup_steps": (int, "warmup steps"),
    "schedule": (
        SCHEDULES,
        "learning-rate schedule: cosine (linear warmup, cosine decay), transformer (paper eq. 3), constant",
    ),
    "optimizer": (OPTIMIZERS, "adam/adamw use the paper's beta1 0.9, beta2 0.98, eps 1e-9; sgd uses momentum 0.9"),
    "weight_decay": (float, "decoupled weight decay for adamw"),
    "clip_norm": (float, "global gradient-norm clip, 0 for none"),
    "label_smoothing": (float, "label smoothing (paper: 0.1)"),
    "seed": (int, "seed of the data, the init and dropout"),
    "log_every": (int, "steps between progress lines"),
    "eval_every": (int, "steps between held-out evaluations (each may write best.safetensors)"),
    "save_every": (int, "steps between checkpoints"),
    "patience": (int, "stop after this many evaluations without a better held-out --best-by (0: never)"),
    "best_by": (
        tuple(BEST_BY),
        "the held-out metric that picks best.safetensors and that --patience watches "
        "(default exact_match; loss with --arch decoder, accuracy with --arch encoder; bleu "
        "and chrf need the [text] extra; loss and perplexity are minimised, the others "
        "maximised)",
    ),
    "grad_method": (
        GRAD_METHODS,
        "gradients from the hand-written VJPs or jax.grad (default: vjp on numpy, autodiff on jax)",
    ),
    "accumulate_steps": (
        int,
        "micro-batches per optimizer update: the update of one batch N times larger (weighted "
        "by target tokens), in the memory of one",
    ),
}
# TrainConfig fields whose flag is not --field-name.
TRAIN_FLAG_NAMES = {"accumulate_steps": "--accumulate"}


def _add_train_flags(p):
    g = p.add_argument_group("training")
    for name, (kind, text) in TRAIN_FLAGS.items():
        default = getattr(TRAIN_DEFAULTS, name)
        text = f"{text} (default {default})" if default is not None else text
        flag = TRAIN_FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if isinstance(kind, tuple):
            g.add_argument(flag, dest=name, choices=kind, help=text)
        else:
            g.add_argument(flag, dest=name, type=kind, help=text)


def _train_flags(args) -> dict:
    """The TrainConfig fields given on the command line."""
    return {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}


def _device_count(text: str):
    if text == "all":
        return "all"
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"a positive device count or 'all', got {text!r}")
    return count


def _add_parallel_flags(p):
    g = p.add_argument_group("many devices and hosts (JAX backend)")
    g.add_argument(
        "--devices",
        type=_device_count,
        default=1,
        help="devices to split each batch over: a count or 'all' (every device of every process); "
        "--batch-size is the global batch and must be a multiple of it (default 1)",
    )
    g.add_argument(
        "--shard-params",
        action="store_true",
        help="also split the params' and optimizer state's matrices over the devices (ZeRO-3/FSDP)",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, for a run over several hosts")
    g.add_argument("--num-processes", type=int, help="processes (hosts) in the run, with --coordinator")
    g.add_argument("--process-id", type=int, help="this process's index in [0, --num-processes), with --coordinator")


def _start_processes(args) -> None:
    """jax.distributed.initialize for a multi-host run, before any other JAX call."""
    given = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
    if not any(given):
        return
    if not all(given):
        raise ConfigError("a run over several hosts needs all of --coordinator, --num-processes and --process-id")
    if default_backend().name != "jax":
        raise ConfigError("--coordinator needs the JAX backend (FT_BACKEND=jax)")
    from . import parallel

    parallel.initialize(args.coordinator, args.num_processes, args.process_id)


def _add_data_flags(p):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", choices=sorted(TASKS), help="a built-in task (default reverse)")
    src.add_argument(
        "--data",
        type=Path,
        help="training data: 'source<TAB>target' lines; with --arch decoder plain "
        "text, one document per line; with --arch encoder 'text<TAB>label' lines",
    )
    p.add_argument(
        "--valid", type=Path, help="held-out data for --data, in its format (default: 5%% of --data held out)"
    )
    d = TASK_DATA_DEFAULTS
    g = p.add_argument_group("task data and lengths")
    g.add_argument("--min-len", type=int, help=f"shortest task string (default {d['min_len']})")
    g.add_argument(
        "--max-len",
        type=int,
        help=f"with --task: the longest task string; digits per operand for addition (default {d['max_len']}). "
        "With --data: the model's longest sequence in tokens (a source, or bos + target); longer "
        "training pairs are dropped and counted, a longer --valid line is an error (default: the "
        "data's longest)",
    )
    g.add_argument(
        "--truncate-long",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --data and --max-len: cut training pairs longer than --max-len to fit, instead of dropping them",
    )
    g.add_argument("--n-train", type=int, help=f"task training examples (default {d['n_train']})")
    g.add_argument(
        "--n-valid", type=int, help=f"task held-out examples, never seen in training (default {d['n_valid']})"
    )
    g = p.add_argument_group("tokenizer")
    g.add_argument(
        "--tokenizer",
        metavar="|".join(TOKENIZERS),
        help="char: one id per character (default); bpe: subword pieces learned from the training data "
        "with Hugging Face tokenizers (the [text] extra), stored in the checkpoint",
    )
    g.add_argument("--vocab-size", type=int, help="most ids of a BPE vocabulary (each, unless --joint-vocab)")
    g.add_argument(
        "--joint-vocab",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one BPE vocabulary for sources and targets (default: one each)",
    )


def _tokenizer_flags(args) -> dict | None:
    """The tokenizer spec the flags ask for (run_data.tokenizer_spec), or None where none was given."""
    if args.tokenizer is None and args.vocab_size is None and args.joint_vocab is None:
        return None
    return tokenizer_spec(args.tokenizer or "char", args.vocab_size, bool(args.joint_vocab))


def _task_sizes(args) -> dict:
    """The task-size flags given."""
    return {name: getattr(args, name) for name in TASK_DATA_DEFAULTS if getattr(args, name) is not None}


def _arch(args) -> str:
    """The model family: --arch, else the one the --config file's data are for, else encoder_decoder."""
    if getattr(args, "arch", None):
        return args.arch
    if getattr(args, "config", None):
        return config_file.arch_of_data(config_file.read_settings(args.config).data)
    return "encoder_decoder"


def _data_flags(args) -> dict:
    """The data and tokenizer flags given, as keys of a settings file's [data] table (config_file.DATA_KEYS)."""
    arch = _arch(args)
    kind = {"decoder": "text", "encoder": "labelled"}.get(arch)
    if kind and args.task:
        raise DataError(
            f"--arch {arch} trains on your own --data file "
            f"({'plain text, one document per line' if arch == 'decoder' else 'text<TAB>label lines'})"
        )
    sizes = _task_sizes(args)
    if kind:
        sizes.pop("max_len", None)  # the model's max_len (_model_flags)
    flags = {
        "kind": kind if args.data else None,
        "task": args.task,
        "train": str(args.data) if args.data else None,
        "valid": str(args.valid) if args.valid else None,
        **sizes,
        "truncate_long": args.truncate_long,
        "tokenizer": args.tokenizer,
        "vocab_size": args.vocab_size,
        "joint_vocab": args.joint_vocab,
        "eval_examples": getattr(args, "eval_examples", None),
    }
    return {name: value for name, value in flags.items() if value is not None}


def _data_spec(args, seed: int) -> dict:
    """A new run's data spec from --task/--data/--valid and the task sizes."""
    return config_file.data_spec(_data_flags(args), seed)[0]


def _add_checkpoint_flags(p):
    p.add_argument("--checkpoint", type=Path, required=True, help="a run folder or a .safetensors checkpoint file")
    p.add_argument(
        "--which",
        choices=sorted(checkpoint.FILE_NAMES),
        help="a run folder's best checkpoint (best by the run's --best-by held-out metric: best.safetensors) or its last "
        "(checkpoint.safetensors); default: best where the folder has one, else last",
    )


def _add_batch_size_flag(p):
    p.add_argument("--batch-size", type=int, default=64, help="sources decoded together (default 64)")


def _space_help() -> str:
    from .tuning import space

    default = "\n".join(f"  {name}: {entry}" for name, entry in space.DEFAULT_SPACE.items())
    return str(space.__doc__).split("\n", 2)[2].strip() + "\n\nThe default space:\n" + default


def _add_train_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a model on a built-in task or your own TSV data",
        description="Train a Transformer on a character task (--task) or TSV files (--data); with "
        "--arch decoder a language model on plain text, with --arch encoder a classifier "
        "on labelled text.",
    )
    p.add_argument(
        "--arch",
        choices=families.ARCHS,
        help="encoder_decoder: the paper's sequence-to-sequence model (default); decoder: a causal language "
        "model (GPT) on plain text; encoder: a classifier on text<TAB>label lines",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="model, training and data settings from a TOML file ([model], [train], [data]: a run "
        "folder's config.toml, a sweep's best.toml, or your own); flags given as well override it",
    )
    _add_data_flags(p)
    p.add_argument(
        "--eval-examples",
        type=int,
        help=f"held-out examples each evaluation decodes (default {config_file.DEFAULT_EVAL_EXAMPLES})",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="run folder for checkpoint, metrics.jsonl, curves.png, config.toml (default runs/<task>)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with its own settings and schedule",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run --out holds with a new one")
    p.add_argument(
        "--extend",
        action="store_true",
        help="with --resume and a larger --steps: train a finished run further (a cosine schedule "
        "restarts: warmup, then decay over the added steps; the others continue)",
    )
    _add_model_flags(p)
    _add_train_flags(p)
    _add_parallel_flags(p)
    p.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="also write every record's scalars as TensorBoard events to DIR (the [tensorboard] extra)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def _add_eval_parser(sub):
    p = sub.add_parser(
        "eval",
        help="exact match, character accuracy, BLEU and chrF of a checkpoint",
        description="Evaluate a checkpoint on held-out data: loss, token and character accuracy, "
        "corpus BLEU and chrF with their sacreBLEU signatures (the [text] extra); the last "
        "line is 'exact_match: <fraction>'. A language model: loss and perplexity (last "
        "line 'perplexity: <value>') on --data (plain text); a classifier: a confusion table "
        "and accuracy (last line 'accuracy: <fraction>') on --data (text<TAB>label).",
    )
    _add_checkpoint_flags(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--task",
        choices=sorted(TASKS),
        help="fresh strings of this task, less any seen in training (default: the run's own held-out set)",
    )
    src.add_argument("--data", type=Path, help="a TSV file of 'source<TAB>target' lines")
    p.add_argument("--n", type=int, default=None, help="evaluate at most this many examples")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the fresh --task strings")
    p.add_argument(
        "--output",
        type=Path,
        help="write the hypotheses (the decoded outputs) here, one per line, in the order of the examples",
    )
    _add_batch_size_flag(p)
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="read characters outside the model's vocabulary as the unknown token (default: refuse "
        "them); n_with_unknown counts the examples that hold one",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def _add_predict_parser(sub):
    p = sub.add_parser(
        "predict",
        help="decode the given strings, or a file of them",
        description="Write one prediction per source: the source strings given, or each line of --input, in order.",
    )
    _add_checkpoint_flags(p)
    p.add_argument("inputs", nargs="*", help="source strings (or give --input)")
    p.add_argument("--input", help="a UTF-8 file of sources, one per line ('-': standard input)")
    p.add_argument("--output", type=Path, help="write the predictions here, one per line (default: standard output)")
    _add_batch_size_flag(p)
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy; the paper uses 4, with alpha 0.6)")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="read characters outside the model's vocabulary as the unknown token (default: refuse them)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr (shown with --input)")


def _add_info_parser(sub):
    p = sub.add_parser(
        "info",
        help="what a run folder or checkpoint holds: settings, step, best metric, size",
        description="Show a run folder's or checkpoint file's step, best held-out metric and the metric "
        "that chose it, parameter count, tokenizer, model, training and data settings, and "
        "whether each checkpoint's SHA-256 checksums verify (a damaged file is an error).",
    )
    p.add_argument("path", type=Path, help="a run folder or a .safetensors checkpoint file")


def _add_sweep_parser(sub):
    p = sub.add_parser(
        "sweep",
        help="tune model size and training settings with Optuna (the [sweep] extra)",
        description="Run Optuna trials of `ft train` settings; each trial trains for --steps and scores "
        "the mean of a held-out metric (--objective) over its evaluations. Run it again "
        "with the same --study and --storage to add trials; point several processes at one "
        "storage to share a study (journal: files or a database server; not SQLite). "
        "The best trial's settings go to <out>/best.toml: ft train --config "
        "<out>/best.toml trains it again.",
        epilog=_space_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_flags(p)
    p.add_argument("--trials", type=int, default=10, help="trials to run in this process (default 10)")
    p.add_argument("--study", default="ft-sweep", help="the study's name in the storage (default ft-sweep)")
    p.add_argument(
        "--storage",
        help="an Optuna storage: journal:PATH (default journal:<out>/study.journal; safe for "
        "concurrent workers), sqlite:///PATH (one worker at a time), postgresql://...",
    )
    p.add_argument("--out", type=Path, help="folder for the trials' run folders (default runs/sweep-<study>)")
    p.add_argument(
        "--space", type=Path, help="a TOML file whose entries replace the default search space's (see below)"
    )
    p.add_argument("--steps", type=int, default=300, help="training steps per trial (default 300)")
    p.add_argument(
        "--evals", type=int, default=6, help="held-out evaluations per trial; the score is their mean (default 6)"
    )
    p.add_argument("--eval-examples", type=int, default=500, help="held-out examples per evaluation (default 500)")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="stop hopeless trials early (default median)")
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="exact_match",
        help="the held-out metric whose mean over a trial's evaluations scores it: maximised, the loss "
        "minimised (bleu and chrf need the [text] extra); part of the study (default exact_match)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data and of every trial's init and dropout; part of the study (default 0)",
    )
    p.add_argument(
        "--sampler-seed",
        type=int,
        help="seed of Optuna's sampler (default: --seed); give workers that share a study different ones",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def _add_sweep_report_parser(sub):
    p = sub.add_parser(
        "sweep-report",
        help="a study's best trials and plots",
        description="Write best_trials.md, trials.csv and PNG plots of a study into --out.",
    )
    p.add_argument("--study", default="ft-sweep", help="the study's name (default ft-sweep)")
    p.add_argument(
        "--storage",
        help="the study's Optuna storage URL, as given to ft sweep (default: ft sweep's "
        "default, journal:<out>/study.journal)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="ft sweep's --out, where the table and plots go too (default runs/sweep-<study>, as for ft sweep)",
    )


def _add_attention_parser(sub):
    p = sub.add_parser(
        "attention",
        help="draw every attention weight of one example (matplotlib: the [plot] extra)",
        description="Draw the attention maps of one forward pass: encoder self-attention, decoder "
        "causal self-attention and cross-attention, a heatmap per layer and head, labelled "
        "with the tokens. The target is the model's greedy output unless --target is given.",
    )
    _add_checkpoint_flags(p)
    p.add_argument("source", help="the source string")
    p.add_argument("--target", help="teacher-force this target instead of the model's greedy output")
    p.add_argument(
        "--kind",
        choices=("all", *ATTENTION_KINDS),
        default="all",
        help="which attention to draw (default all, one grid above the other)",
    )
    p.add_argument("--out", type=Path, default=Path("attention.png"), help="the PNG to write (default attention.png)")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="read characters outside the model's vocabulary as the unknown token (default: refuse them)",
    )


def _add_report_parser(sub):
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page about a run (matplotlib: the [plot] extra)",
        description="Write an HTML page with the run's configs, curves, sample predictions (greedy "
        "and beam), attention maps and checkpoint sizes; images are embedded, so the page "
        "needs no network and no other file.",
    )
    _add_checkpoint_flags(p)
    p.add_argument("--out", type=Path, help="the HTML file to write (default report.html in the run folder)")
    p.add_argument("--n", type=int, default=100, help="held-out examples to decode for the predictions (default 100)")


def build_parser() -> argparse.ArgumentParser:
    """The `ft` command's parser: the global --debug flag and one subcommand per subparser."""
    parser = argparse.ArgumentParser(
        prog="ft", description=str(__doc__).splitlines()[0] + " Backend: FT_BACKEND=numpy|jax."
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the full traceback instead of the one-line message "
        "(give it before the command: ft --debug predict ...)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_predict_parser(sub)
    _add_info_parser(sub)
    _add_sweep_parser(sub)
    _add_sweep_report_parser(sub)
    _add_attention_parser(sub)
    _add_report_parser(sub)
    _add_generate_parser(sub)
    _add_convert_parser(sub)
    return parser


def _new_run_settings(args, train_fields: dict) -> tuple[dict, dict, dict, int]:
    """(model fields, TrainConfig fields, data spec, eval_examples) of a new run: --config's file,
    with the flags given over it."""
    settings = config_file.read_settings(args.config) if args.config else None
    model = {**(settings.model if settings else {}), **_model_flags(args)}
    train = {**(settings.train if settings else {}), **train_fields}
    if "batch_size" in train_fields and "max_tokens" not in train_fields:
        train.pop("max_tokens", None)  # --batch-size asks for batches of that many examples, not of tokens
    data, flags = dict(settings.data if settings else {}), _data_flags(args)
    if "task" in flags or "train" in flags:  # the flags' data replace the file's, and its sizes where the kind differs
        file_kind = data.get("kind", "tsv" if "train" in data else "task")
        dropped = config_file.DATA_SOURCE_KEYS + (
            ()
            if file_kind == ("tsv" if "train" in flags else "task")
            else ("n_train", "n_valid", "min_len", "max_len", "truncate_long")
        )
        data = {key: value for key, value in data.items() if key not in dropped}
    if "seed" in train_fields:  # --seed seeds the data too
        data["seed"] = train_fields["seed"]
    data.update(flags)
    where = f"{args.config}: [data]" if settings else "the data flags"
    spec, eval_examples = config_file.data_spec(data, train.get("seed", TRAIN_DEFAULTS.seed), where)
    return model, train, spec, eval_examples


# --- ft generate: sample from a decoder-only run ---------------------------------------------------


def _add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a text with a decoder-only model (a run folder or checkpoint)",
        description="Sample a continuation of each prompt from a decoder-only language model: greedy "
        "with --temperature 0, else with temperature, top-k and top-p. Tokens per second "
        "go to stderr at the end.",
    )
    p.add_argument(
        "checkpoint", type=Path, help="a run folder (its best checkpoint, else its last) or a .safetensors file"
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--input", help="a file of prompts, one a line ('-' for standard input)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to sample after each prompt (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest tokens only")
    p.add_argument("--top-p", type=float, help="sample among the likeliest tokens whose probability reaches p")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")


def _generate(args) -> int:
    import time

    from . import sampling
    from .prng import key as make_key

    if bool(args.prompt) == (args.input is not None):
        raise ConfigError(
            "give the prompts with --prompt TEXT or as a file with --input FILE ('-' for standard "
            "input)" + (", not both" if args.prompt else "")
        )
    backend = default_backend()
    trained = load(args.checkpoint, None, backend)
    if trained.arch != "decoder":
        raise ConfigError(
            f"{trained.path} holds a model of the family {trained.arch!r}; ft generate needs a "
            "decoder-only language model (ft predict decodes an encoder-decoder)"
        )
    cfg, tokenizer = trained.cfg, trained.tokenizer
    prompts = read_lines(args.input) if args.input is not None else args.prompt
    bos = getattr(tokenizer, "bos_id", None)
    rows = [([bos] if bos is not None else []) + tokenizer.target.encode(text) for text in prompts]
    if min(map(len, rows)) == 0:
        raise ConfigError("an empty prompt, and the tokenizer has no beginning-of-sequence token to start it with")
    filler = cfg.pad_id if cfg.pad_id is not None else rows[0][0]  # padding after each prompt, never read
    width = max(map(len, rows))
    ids = [row + [filler] * (width - len(row)) for row in rows]
    eos = getattr(tokenizer, "eos_id", None)
    start = time.perf_counter()
    tokens = sampling.generate(
        trained.params,
        cfg,
        ids,
        max_new_tokens=args.max_new_tokens,
        key=make_key(args.seed),
        eos_id=-1 if eos is None else eos,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        prompt_lengths=[len(row) for row in rows],
    )
    tokens = backend.to_numpy(tokens)
    elapsed = time.perf_counter() - start
    n_new = 0
    for row, out in zip(rows, tokens):
        new = [int(t) for t in out[len(row) : len(row) + args.max_new_tokens]]
        n_new += next((i + 1 for i, t in enumerate(new) if t == eos), len(new))
        print(tokenizer.target.decode(new))
    print(f"{n_new} tokens in {elapsed:.2f} s: {n_new / max(elapsed, 1e-9):.1f} tokens/s", file=sys.stderr)
    return 0


# --- ft convert: Hugging Face folders in and out ---------------------------------------------------


def _add_convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="a Hugging Face GPT-2 or Llama folder to a run folder, or back",
        description="ft convert hf DIR --out RUN_DIR reads a Hugging Face folder (config.json, "
        "safetensors weights, tokenizer.json) into a run folder; ft convert --to hf "
        "RUN_OR_FILE --out DIR writes a decoder-only run as a folder transformers loads.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="hf DIR (to a run folder), or with --to hf: RUN_OR_FILE")
    p.add_argument("--to", choices=("hf",), help="write the run RUN_OR_FILE in this format")
    p.add_argument(
        "--out", type=Path, required=True, help="the run folder (from hf) or the Hugging Face folder (--to hf)"
    )
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="parameter dtype of the run (default float32)")
    p.add_argument("--shard-bytes", type=int, help="with --to hf: shards of at most this many bytes (default one file)")


def _convert(args) -> int:
    from . import hf

    if args.to is None:
        if len(args.paths) != 2 or args.paths[0] != "hf":
            raise ConfigError(
                "give the source as: ft convert hf DIR --out RUN_DIR (or ft convert --to hf RUN --out DIR)"
            )
        return _convert_from_hf(Path(args.paths[1]), args.out, args.dtype)
    if len(args.paths) != 1:
        raise ConfigError(
            "ft convert --to hf takes one run folder or checkpoint file: ft convert --to hf RUN --out DIR"
        )
    trained = load(args.paths[0], None, default_backend())
    if not isinstance(trained.cfg, DecoderConfig):
        raise ConfigError(
            f"{trained.path} holds a model of the family {trained.arch!r}; only decoder-only models "
            "convert to Hugging Face"
        )
    tokenizer = trained.tokenizer
    model = hf.HuggingFaceModel(trained.cfg, trained.params, tokenizer)
    folder = hf.to_huggingface(model, args.out, max_shard_bytes=args.shard_bytes)
    note = (
        ""
        if getattr(tokenizer, "kind", None) == "huggingface"
        else (
            f"; no {hf.TOKENIZER_NAME}: the run's tokenizer ({getattr(tokenizer, 'kind', type(tokenizer).__name__)}) is "
            "not a Hugging Face one"
        )
    )
    print(f"wrote {folder} ({model.architecture}){note}")
    return 0


def _convert_from_hf(folder: Path, out: Path, dtype: str) -> int:
    import numpy as np

    from backends import get_backend, tree_leaves

    from . import hf

    config = hf.read_config(folder)
    if not (folder / hf.TOKENIZER_NAME).is_file():
        raise ConfigError(
            f"{folder} has no {hf.TOKENIZER_NAME}: a run folder needs the model's tokenizer (save it "
            "beside the model with tokenizer.save_pretrained)"
        )
    cfg, params, tokenizer, architecture = hf.load_huggingface(folder, dtype, tokenizer_required=True)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"{folder}: tokenizer.json has {tokenizer.vocab_size} ids but the model only "
            f"{cfg.vocab_size} (config.json vocab_size)"
        )
    backend = get_backend("numpy")
    state = {"params": params, "opt_state": {}, "step": np.asarray(0, dtype=np.int32)}
    path = checkpoint.save(
        out,
        state,
        backend,
        cfg=cfg,
        tokenizer=tokenizer,
        train_config={},
        data_spec={"source": "huggingface", "architecture": architecture, "model_type": config.get("model_type")},
        key=backend.random.key(0),
    )
    n_params = sum(int(np.prod(leaf.shape)) for leaf in tree_leaves(params))
    print(
        f"wrote {path}: a {architecture} model of {n_params:,} parameters ({cfg.n_layers} layers, d_model "
        f"{cfg.d_model}, vocabulary {cfg.vocab_size})"
    )
    return 0


def _train(args) -> int:
    train_fields = _train_flags(args)
    if args.resume and args.config:
        raise ConfigError("--resume continues a run with its own settings (its config.toml); leave out --config")
    if args.resume:  # only what was given, to be checked against the run's own data
        data = {**({"task": args.task} if args.task else {}), **_task_sizes(args)}
        if args.arch not in (None, "encoder_decoder"):
            data.pop("max_len", None)  # the model's max_len
        if args.data:  # its kind is the run's own
            data.update(train=str(args.data))
        if args.valid:
            data.update(valid=str(args.valid))
        tokenizer = _tokenizer_flags(args)
        if tokenizer:
            data.update(tokenizer=tokenizer)
        if args.truncate_long:
            data.update(truncate_long=True)
        if args.eval_examples is not None:
            raise ConfigError("--eval-examples is a setting of the run; a resumed run keeps its own")
        model, train, eval_examples = _model_flags(args), train_fields, None
    else:
        model, fields, data, eval_examples = _new_run_settings(args, train_fields)
        train = TrainConfig(**fields)
    out = args.out or Path("runs") / (
        data.get("task") or (Path(data["train"]).stem if data.get("train") else "reverse")
    )
    if train_fields.get("max_tokens") is not None and train_fields.get("batch_size") is not None:
        raise ConfigError("--max-tokens sizes the batches by tokens instead of --batch-size: give one of them")
    if args.extend and not args.resume:
        raise ConfigError("--extend trains a finished run further: give it with --resume")
    _start_processes(args)
    callbacks = []
    if args.tensorboard:
        from . import parallel
        from .tensorboard import TensorBoardWriter, import_tensorboardx

        import_tensorboardx()  # on every process, so a missing extra fails everywhere alike
        if parallel.process_index() == 0:  # one event file per run, as with metrics.jsonl
            callbacks.append(TensorBoardWriter(args.tensorboard))
    try:
        result = fit(
            model or None,
            train,
            data or None,
            arch=None if args.resume else _arch(args),
            out_dir=out,
            resume=args.resume,
            overwrite=args.overwrite,
            extend=args.extend,
            progress=not args.no_progress,
            devices=args.devices,
            shard_params=args.shard_params,
            eval_examples=eval_examples,
            callbacks=callbacks,
        )
    finally:
        for callback in callbacks:
            callback.close()
    print(f"{result.stopped} at step {result.step} in {result.seconds:.1f} s; checkpoint {result.path}")
    if result.best_value is not None:
        print(
            f"best held-out {result.train_config.best_by}: {result.best_value:.4f} at step {result.best_step} "
            f"({checkpoint.checkpoint_path(out, 'best')})"
        )
    last_valid = [r for r in result.history if r["split"] == "valid"]
    if last_valid and "exact_match" in last_valid[-1]:
        print(f"held-out exact_match: {last_valid[-1]['exact_match']:.4f}")
    elif last_valid:
        print(f"held-out {families.describe_result(last_valid[-1])}")
    return 130 if result.stopped == "interrupted" else 0


def _eval_family(args, trained) -> int:
    """ft eval of a language model (perplexity) or a classifier (accuracy and a confusion table)."""
    arch, cfg, tokenizer, spec = trained.arch, trained.cfg, trained.tokenizer, trained.data_spec
    if args.task:
        raise DataError(f"--task is for encoder-decoder runs; this run is a {arch} model: give --data")
    if args.data:
        pairs = (
            [("", line) for line in read_lines(args.data) if line.strip()] if arch == "decoder" else read_tsv(args.data)
        )
    else:
        pairs = load_pairs(spec)[1]
    pairs = pairs[: args.n] if args.n else pairs
    if not pairs:
        raise DataError("no held-out examples to evaluate: give --data")
    result = held_out_metrics(trained.params, cfg, tokenizer, pairs, labels=trained.labels, batch_size=args.batch_size)
    if arch == "encoder":
        print(families.confusion_table(result["confusion"], trained.labels))
    for name in ("n_examples", "n_tokens", "loss", "token_accuracy"):
        if name in result:
            print(f"{name}: {result[name]}")
    last = "perplexity" if arch == "decoder" else "accuracy"
    print(f"{last}: {result[last]}")
    return 0


def _eval(args) -> int:
    backend = default_backend()
    trained = load(args.checkpoint, args.which, backend)
    if trained.arch != "encoder_decoder":
        return _eval_family(args, trained)
    cfg, tokenizer, spec = trained.cfg, trained.tokenizer, trained.data_spec
    if spec is None:  # every checkpoint records its data spec; a model made in Python may lack one
        raise ConfigError(f"{trained.path} records no data spec (what it trained on); evaluate it with ft.evaluate")
    if args.data:
        pairs = read_tsv(args.data)
    elif args.task:
        # A task run's string lengths; a TSV spec's max_len is the model's length in tokens instead.
        sizes = spec if spec["kind"] == "task" else {}
        min_len, max_len = (sizes.get(name, TASK_DATA_DEFAULTS[name]) for name in ("min_len", "max_len"))
        pairs = make_task_data(args.task, 0, args.n or 500, min_len, max_len, args.seed)[1]
        if spec["kind"] == "task" and spec["task"] == args.task:  # keep them held out: drop strings seen in training
            seen = {source for source, _ in load_pairs(spec)[0]}
            pairs = [pair for pair in pairs if pair[0] not in seen]
    else:  # the run's own held-out pairs, fitted to its max_len as in training
        pairs = fit_held_out(spec, tokenizer, cfg.max_len, load_pairs(spec)[1])
    pairs = pairs[: args.n] if args.n else pairs
    if args.data:  # an over-long line is an error naming it, before anything is decoded
        check_held_out_lengths(pairs, tokenizer, cfg.max_len, args.data)
    result = evaluate(
        trained.params,
        cfg,
        tokenizer,
        pairs,
        beam_size=args.beam,
        batch_size=args.batch_size,
        allow_unknown=args.allow_unknown,
        keep_predictions=True,
        progress=not args.no_progress,
    )
    if not metrics.sacrebleu_available():  # after the checks, so that an input error stays one line
        print(f"ft eval: note: {metrics.MISSING_NOTE}", file=sys.stderr)
    if args.output:
        _write_lines(args.output, result["predictions"])
    for name in (
        "n_examples",
        "n_with_unknown",
        "loss",
        "token_accuracy",
        "char_accuracy",
        "bleu",
        "bleu_signature",
        "chrf",
        "chrf_signature",
    ):
        if name in result:
            print(f"{name}: {result[name]}")
    print(f"exact_match: {result['exact_match']}")
    return 0


def _predict(args) -> int:
    backend = default_backend()
    trained = load(args.checkpoint, args.which, backend)
    cfg, tokenizer = trained.cfg, trained.tokenizer
    if args.input is not None:
        sources = read_lines(args.input)
        name = "standard input" if args.input == "-" else args.input
        check_sources(sources, tokenizer, cfg.max_len, f"{name}: line")
        unknown_lines = (
            []
            if args.allow_unknown
            else [number for number, source in enumerate(sources, 1) if tokenizer.source.unknown_symbols([source])]
        )
        if unknown_lines:  # named by line here; predict() below would list only the symbols
            listed = ", ".join(map(str, unknown_lines[:10])) + (
                f" and {len(unknown_lines) - 10} more" if len(unknown_lines) > 10 else ""
            )
            raise UnknownSymbolError(
                tokenizer.source.unknown_symbols(sources), tokenizer, f" (in {name}: line {listed})"
            )
    else:
        sources = args.inputs
        check_sources(sources, tokenizer, cfg.max_len, "source")
    params, arch = trained.params, trained.arch
    if arch == "encoder":
        outputs = classify(
            params,
            cfg,
            tokenizer,
            trained.labels,
            sources,
            batch_size=args.batch_size,
            allow_unknown=args.allow_unknown,
        )
    elif arch == "decoder":
        outputs = continue_texts(
            params, cfg, tokenizer, sources, batch_size=args.batch_size, allow_unknown=args.allow_unknown
        )
    else:
        outputs = predict(
            params,
            cfg,
            tokenizer,
            sources,
            beam_size=args.beam,
            batch_size=args.batch_size,
            allow_unknown=args.allow_unknown,
            progress=args.input is not None and not args.no_progress,
        )
    if args.output:
        _write_lines(args.output, outputs)
    else:
        for line in outputs:
            print(line)
    return 0


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _info(args) -> int:
    from .insight.info import info_lines

    for line in info_lines(args.path):
        print(line)
    return 0


def _sweep(args) -> int:
    from .tuning import SweepConfig, load_space, run_sweep
    from .tuning.sweep import BEST_NAME, summary_lines

    out = args.out or Path("runs") / f"sweep-{args.study}"
    if out.exists() and not out.is_dir():  # said before anything else, Optuna's import included
        raise ConfigError(f"{out} is a file: --out must be a folder (it holds the trials' run folders)")
    storage = args.storage or _default_storage(out)
    config = SweepConfig(
        data=_data_spec(args, seed=args.seed),
        steps=args.steps,
        n_evals=args.evals,
        eval_examples=args.eval_examples,
        seed=args.seed,
        objective=args.objective,
    )
    space = load_space(args.space)
    try:
        study = run_sweep(
            args.study,
            storage,
            config,
            n_trials=args.trials,
            out_dir=out,
            space=space,
            pruner=args.pruner,
            sampler_seed=args.sampler_seed,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            "interrupted: the trial that was running is marked failed; the study keeps the others. Run the same "
            "command to continue it",
            file=sys.stderr,
        )
        return 130
    for line in summary_lines(study):
        print(line)
    if (out / BEST_NAME).exists():
        print(f"best settings: {out / BEST_NAME} (ft train --config {out / BEST_NAME} trains that trial again)")
    return 0


def _default_storage(out: Path) -> str:
    """ft sweep's storage where --storage is not given: a journal file in its --out folder."""
    return f"journal:{out / 'study.journal'}"


def _sweep_report(args) -> int:
    from .tuning.report import best_trials_table, write_report
    from .tuning.sweep import SweepError, import_optuna, open_storage

    optuna = import_optuna()
    out = args.out or Path("runs") / f"sweep-{args.study}"
    storage = args.storage or _default_storage(out)
    if args.storage is None and not (out / "study.journal").exists():
        raise SweepError(
            f"{out / 'study.journal'} (ft sweep's default storage for --out {out}) does not exist; give "
            "the --out, or the --storage, that ft sweep was given"
        )
    try:
        study = optuna.load_study(study_name=args.study, storage=open_storage(storage))
    except KeyError:
        raise SweepError(f"there is no study {args.study!r} in {storage}") from None
    files = write_report(study, out)
    print(best_trials_table(study))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _require_encoder_decoder(trained: TrainedModel, command: str) -> None:
    if trained.arch != "encoder_decoder":
        raise DataError(
            f"{command} draws an encoder-decoder run (source, target and their attention); "
            f"{trained.path} holds a {trained.arch} model: use ft eval and ft predict for it"
        )


def _attention(args) -> int:
    from .insight import attention_maps, plots

    plots.require_matplotlib("ft attention")  # before loading anything, so a missing extra fails at once
    trained = load(args.checkpoint, args.which, default_backend())
    _require_encoder_decoder(trained, "ft attention")
    maps = attention_maps(
        trained.params,
        trained.cfg,
        trained.tokenizer,
        args.source,
        args.target,
        allow_unknown=args.allow_unknown,
    )
    kinds = tuple(ATTENTION_KINDS) if args.kind == "all" else (args.kind,)
    path = plots.save_png(plots.attention_figure(maps, kinds), args.out)
    print(f"source: {maps['source']}")
    print(f"target ({maps['target_from']}): {maps['target']}")
    print(f"wrote {path}: {', '.join(kinds)}; {maps[kinds[0]].shape[0]} layers x {maps[kinds[0]].shape[1]} heads each")
    return 0


def _report(args) -> int:
    from .insight.report import write_report

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    _require_encoder_decoder(load(args.checkpoint, args.which, get_backend("numpy")), "ft report")
    path = write_report(args.checkpoint, args.out, args.which, n_examples=args.n)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "predict" and bool(args.inputs) == (args.input is not None):
        parser.error(
            "ft predict: give the sources as arguments or as a file with --input FILE ('-' for standard "
            "input)" + (", not both" if args.inputs else "")
        )
    commands = {
        "train": _train,
        "eval": _eval,
        "predict": _predict,
        "info": _info,
        "sweep": _sweep,
        "sweep-report": _sweep_report,
        "attention": _attention,
        "report": _report,
        "generate": _generate,
        "convert": _convert,
    }
    command = commands[args.command]
    with warnings.catch_warnings():
        _show_checkpoint_warnings_as_one_line(args.command)
        try:
            try:  # FT_BACKEND: an unknown name is a ValueError, JAX not installed an ImportError
                default_backend()
            except (ValueError, ImportError) as err:
                return _fail(args, err, 2)
            return command(args)
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves and returns 130 itself)
            print(f"ft {args.command}: interrupted", file=sys.stderr)
            return 130
        except UserInputError as err:  # a flag, a setting, a file's contents, a checkpoint, a run folder
            return _fail(args, err, 2)
        except (TrainingDiverged, SaveFailed, CheckpointWriteError) as err:
            return _fail(args, err, 1)
        except OSError as err:  # an input file that is missing or unreadable (2); a full disk, a lost mount (1)
            return _fail(args, err, 2 if isinstance(err, INPUT_OS_ERRORS) else 1)


# What an OSError says about a path the user named, rather than about the machine.
INPUT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def _fail(args, err: BaseException, status: int) -> int:
    """One line on stderr and exit `status` (2: usage or input, 1: a runtime failure); with --debug,
    the traceback instead."""
    if args.debug:
        raise err
    print(f"ft {args.command}: error: {err}", file=sys.stderr)
    return status


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
