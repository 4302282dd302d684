"""The benchmark harness (benchmarks/): its FLOP formula, its environment guard, and one --quick run
end to end (output fields, types and the PNG; no timing assertions)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("benchmarks") is None:  # a non-editable install: the package lives in the checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import flops  # noqa: E402
from benchmarks.configs import CONFIGS  # noqa: E402
from benchmarks.env_guard import REEXEC_MARKER, SLOW_BLAS_ENV_VARS, without_slow_blas_vars  # noqa: E402

HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

RECORD_FIELDS = {
    "backend": str,
    "config": str,
    "measure": str,
    "reps": int,
    "median_s": float,
    "min_s": float,
    "max_s": float,
    "times_s": list,
    "first_call_s": float,
    "tokens_per_call": int,
    "tokens_per_s": float,
    "model_gflop": float,
    "gflops": float,
    "peak_gflops": float,
    "peak_fraction": float,
    "peak_mem_method": str,
}


# --- FLOPs ----------------------------------------------------------------------------------------


def _matmuls_of_forward(cfg, b, s, t):
    """Every matmul of one forward pass as (m, n, k), listed one by one as model.py computes them."""
    d, f, v, h = cfg.d_model, cfg.d_ff, cfg.tgt_vocab_size, cfg.n_heads
    dh = d // h
    out = []
    for _ in range(cfg.n_encoder_layers):
        out += [(b * s, d, d)] * 4  # q, k, v, o
        out += [(s, s, dh)] * (b * h) + [(s, dh, s)] * (b * h)  # scores, weighted sum, per (batch, head)
        out += [(b * s, f, d), (b * s, d, f)]
    for _ in range(cfg.n_decoder_layers):
        out += [(b * t, d, d)] * 4 + [(t, t, dh)] * (b * h) + [(t, dh, t)] * (b * h)  # self-attention
        out += [(b * t, d, d)] * 2 + [(b * s, d, d)] * 2 + [(t, s, dh)] * (b * h) + [(t, dh, s)] * (b * h)  # cross
        out += [(b * t, f, d), (b * t, d, f)]
    out.append((b * t, v, d))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_flops_count_every_matmul(name):
    bc = CONFIGS[name]
    cfg = bc.model_config()
    expected = sum(2 * m * n * k for m, n, k in _matmuls_of_forward(cfg, bc.batch, bc.src_len, bc.tgt_len))
    assert flops.forward_flops(cfg, bc.batch, bc.src_len, bc.tgt_len) == expected
    assert flops.train_flops(cfg, bc.batch, bc.src_len, bc.tgt_len) == 3 * expected


def test_tiny_forward_flops_value():
    bc = CONFIGS["tiny"]
    # 2 encoder layers of 838,860,800 + 2 decoder layers of 1,140,850,688 + the output projection.
    assert flops.forward_flops(bc.model_config(), bc.batch, bc.src_len, bc.tgt_len) == 3_976_200_192


def test_decode_flops_grow_linearly_in_steps_beyond_the_cache_term():
    bc = CONFIGS["tiny"]
    cfg = bc.model_config()
    f = [flops.greedy_decode_flops(cfg, bc.batch, bc.src_len, steps) for steps in (1, 2, 3)]
    # per-step cost grows with the cache length: the second difference is 2 steps x 4*B*D per layer
    assert f[2] - 2 * f[1] + f[0] == 2 * cfg.n_decoder_layers * 4 * bc.batch * cfg.d_model


# --- the environment guard ------------------------------------------------------------------------


def test_without_slow_blas_vars_removes_only_those():
    env = {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1", "OPENBLAS_NUM_THREADS": "2"}
    cleaned, removed = without_slow_blas_vars(env)
    assert cleaned == {"PATH": "/bin", "OPENBLAS_NUM_THREADS": "2"}
    assert removed == list(SLOW_BLAS_ENV_VARS)
    assert env["OPENBLAS_CORETYPE"] == "Haswell"  # the input is not modified
    assert without_slow_blas_vars({"PATH": "/bin"}) == ({"PATH": "/bin"}, [])


# --- one --quick run end to end -------------------------------------------------------------------


def _run_quick(tmp_path, backend_names):
    json_path, png_path = tmp_path / "results.json", tmp_path / "results.png"
    env = dict(os.environ)
    env.pop(REEXEC_MARKER, None)
    # A slow-BLAS variable in the parent: `python -m benchmarks` must re-execute itself without it.
    # (OPENBLAS_L2_SIZE only tunes block sizes, so even an unguarded NumPy would just be slower.)
    env.setdefault("OPENBLAS_L2_SIZE", "1048576")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--backends",
            *backend_names,
            "--json",
            str(json_path),
            "--plot",
            str(png_path),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result, json.loads(json_path.read_text()), png_path


def _check_records(payload, backend_names):
    records = payload["records"]
    assert {r["backend"] for r in records} == set(backend_names)
    for record in records:
        for field, kind in RECORD_FIELDS.items():
            if record["measure"] == "dropout" and field in ("gflops", "peak_fraction"):
                assert record[field] is None  # no matmuls, so no FLOP rate
                continue
            assert isinstance(record[field], kind), (field, record[field])
        assert record["config"] == "tiny"
        assert record["min_s"] <= record["median_s"] <= record["max_s"]
        assert len(record["times_s"]) == record["reps"] == 2
        assert record["peak_mem_bytes"] is None or isinstance(record["peak_mem_bytes"], int)
        if record["backend"] == "jax":
            assert isinstance(record["compile_s"], float)
        else:
            assert record["compile_s"] is None
    for backend_name in backend_names:
        measures = {r["measure"] for r in records if r["backend"] == backend_name}
        assert measures == {"forward", "train", "decode", "dropout"}
        assert payload["matmul_peak"][backend_name]["best_gflops"] > 0
        share = next(s for s in payload["dropout_shares"] if s["backend"] == backend_name)
        dropout = next(r for r in records if r["backend"] == backend_name and r["measure"] == "dropout")
        train = next(r for r in records if r["backend"] == backend_name and r["measure"] == "train")
        assert share["share"] == dropout["median_s"] / train["median_s"]
        assert (
            dropout["dropout_sites"] == 2 + 5 * CONFIGS["tiny"].n_layers
        )  # embeddings, 2 per encoder, 3 per decoder layer
    decode = next(r for r in records if r["measure"] == "decode")
    assert decode["decode_steps"] == 8 and decode["tokens_per_call"] == 8 * CONFIGS["tiny"].batch


def _check_environment(env):
    assert isinstance(env["cpu_count"], int)
    assert "threadpool_info" in env["numpy_blas"]
    guard = env["slow_blas_env_guard"]
    assert guard["reexecuted"] is True and "OPENBLAS_L2_SIZE" in guard["removed_env_vars"]
    assert guard["slow_blas_env_vars_present"] == []


def _check_png(path):
    if not HAS_MATPLOTLIB:  # the benchmark then skips the chart with a message
        return
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_numpy(tmp_path):
    result, payload, png_path = _run_quick(tmp_path, ["numpy"])
    _check_records(payload, ["numpy"])
    _check_environment(payload["environment"])
    assert payload["speedups"] == [] and payload["vs_torch"] == [] and payload["environment"]["peers"] == {}
    _check_png(png_path)
    assert "| backend | config | measure |" in result.stdout
    assert "### Dropout's share of the train step" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
def test_quick_run_numpy_and_jax(tmp_path):
    """Compiling the JAX train step takes tens of seconds on a small CPU, hence slow."""
    result, payload, png_path = _run_quick(tmp_path, ["numpy", "jax"])
    _check_records(payload, ["numpy", "jax"])
    _check_environment(payload["environment"])
    assert payload["environment"]["jax"]["devices"]
    assert {s["measure"] for s in payload["speedups"]} == {"forward", "train", "decode", "dropout"}
    assert all(isinstance(s["speedup"], float) for s in payload["speedups"])
    train = next(r for r in payload["records"] if r["backend"] == "jax" and r["measure"] == "train")
    assert train["grad_method"] == "autodiff"
    _check_png(png_path)
    assert "### JAX speedup over NumPy" in result.stdout


# --- --devices (the train step on many devices; the timings themselves are not run here) ----------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shard-params"], "--shard-params needs --devices"),
        (["--devices", "0"], "--devices must be positive"),
        (["--devices", "2", "--backends", "numpy"], "needs the JAX backend"),
        (["--devices", "2", "--backends", "numpy", "jax"], "needs the JAX backend"),
        (["--devices", "2", "--measure", "forward"], "train step only"),
        (["--devices", "2", "--peers", "torch"], "without --devices"),
    ],
)
def test_devices_flag_errors(argv, message):
    from benchmarks.run import parse_args, resolve_settings

    with pytest.raises(SystemExit, match=message):
        resolve_settings(parse_args(argv))


def test_devices_flag_settings():
    from benchmarks.run import parse_args, resolve_settings

    settings = resolve_settings(parse_args(["--configs", "tiny", "--devices", "1", "2", "8", "--shard-params"]))
    assert settings.devices == (1, 2, 8) and settings.shard_params
    assert settings.backends == ("jax",) and settings.measures == ("train",) and not settings.with_train_vjp
    plain = resolve_settings(parse_args(["--quick"]))
    assert plain.devices == () and not plain.shard_params


def test_devices_check_names_what_is_missing():
    import backends
    from benchmarks.run import check_devices

    with pytest.raises(SystemExit, match="needs the JAX backend"):
        check_devices(backends.get_backend("numpy"), (1, 2))
    if HAS_JAX:
        with pytest.raises(SystemExit, match="4096 devices were asked for"):
            check_devices(backends.get_backend("jax"), (1, 4096))


def test_devices_table():
    from benchmarks import report

    base = {"config": "tiny", "median_s": 0.1, "min_s": 0.09, "max_s": 0.2, "compile_s": 3.0, "tokens_per_s": 20480.0}
    records = [
        dict(base, devices=1, shard_params=False, tokens_per_s_per_device=20480.0),
        dict(base, devices=8, shard_params=True, tokens_per_s_per_device=2560.0),
        dict(base, measure="forward"),
    ]  # not a --devices record: left out
    lines = report.devices_table(records).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| tiny | 1 | one device | 100.0 | 90.0–200.0 | 3.0 | 20,480 | 20,480 |"
    assert "| 8 | sharded |" in lines[3] and lines[3].endswith("| 2,560 |")
    assert report.devices_table([records[2]]) == ""


# --- peers (other libraries' runs of the same model; the ratios, from made-up records) -------------


def _fake_record(backend, measure, median_s, config="tiny"):
    return {"backend": backend, "config": config, "measure": measure, "median_s": median_s}


PEER_RECORDS = [
    _fake_record("numpy", "forward", 0.1),
    _fake_record("numpy", "train", 0.5),
    _fake_record("numpy", "dropout", 0.05),
    _fake_record("jax", "forward", 0.05),
    _fake_record("jax", "train", 0.2),
    _fake_record("jax", "train_vjp", 0.3),
    _fake_record("numpy", "forward", 2.0, config="base"),  # a config the peer did not run
    _fake_record("torch", "forward", 0.2),
    _fake_record("torch", "train", 0.4),
]


def test_vs_peer_is_our_median_over_the_peers():
    from benchmarks import report

    ratios = {(s["backend"], s["config"], s["measure"]): s for s in report.vs_peer(PEER_RECORDS, "torch")}
    assert set(ratios) == {
        ("numpy", "tiny", "forward"),
        ("numpy", "tiny", "train"),
        ("jax", "tiny", "forward"),
        ("jax", "tiny", "train"),
        ("jax", "tiny", "train_vjp"),
    }  # no dropout, no base, no torch
    assert ratios[("numpy", "tiny", "forward")]["ratio"] == 0.1 / 0.2
    assert ratios[("jax", "tiny", "train_vjp")]["peer_median_s"] == 0.4  # the VJP step against the peer's step
    assert ratios[("jax", "tiny", "train_vjp")]["ratio"] == 0.3 / 0.4
    assert report.vs_peer([r for r in PEER_RECORDS if r["backend"] != "torch"], "torch") == []


def test_peer_table():
    from benchmarks import report

    lines = report.peer_table(PEER_RECORDS, "torch").splitlines()
    assert lines[0] == "| config | measure | PyTorch eager median ms | numpy | jax | jax VJPs |"
    assert lines[2] == "| tiny | forward | 200.0 | 0.50x | 0.25x | – |"
    assert lines[3] == "| tiny | train | 400.0 | 1.25x | 0.50x | 0.75x |"
    assert len(lines) == 4
    assert report.peer_table(PEER_RECORDS[:-2], "torch") == ""  # no peer ran: no table
    faster = report.peer_table([_fake_record("jax", "decode", 0.0047), _fake_record("torch", "decode", 1.0)], "torch")
    assert faster.splitlines()[2] == "| tiny | decode | 1,000.0 | 0.0047x |"


def test_report_and_json_show_the_peer(tmp_path):
    from benchmarks import report

    env = {
        "peers": {
            "torch": {
                "torch_version": "2.0",
                "num_threads": 2,
                "same_model": {"tiny": {"n_params": 1000, "our_n_params": 1000, "max_abs_logit_diff_vs_ours": 3e-6}},
            }
        }
    }
    text = report.markdown_report([], env, {})
    assert "- peer torch: torch_version 2.0, num_threads 2" in text
    assert "- peer torch, tiny: 1,000 parameters (ours 1,000); eval logits within 3.0e-06 of ours" in text
    records = [
        dict(
            r,
            min_s=r["median_s"],
            max_s=r["median_s"],
            compile_s=None,
            tokens_per_s=1.0,
            model_gflop=1.0,
            gflops=1.0,
            peak_fraction=0.5,
            peak_mem_bytes=None,
            peak_mem_method="maxrss_delta",
        )
        for r in PEER_RECORDS
    ]
    assert "### Against PyTorch eager" in report.markdown_report(records, env, {})
    json_path = tmp_path / "results.json"
    report.write_json(json_path, records, env, {}, {})
    assert json.loads(json_path.read_text())["vs_torch"] == report.vs_peer(records, "torch")
    png = report.plot(tmp_path / "results.png", records)
    _check_png(tmp_path / "results.png")
    assert png is None or png == tmp_path / "results.png"


def test_peers_flag_without_the_library_is_one_clear_error(monkeypatch):
    from benchmarks import peers
    from benchmarks.run import parse_args, resolve_settings

    monkeypatch.setitem(peers.PEER_MODULES, "torch", "a_module_that_is_not_installed")
    with pytest.raises(SystemExit, match=r"--peers torch: PyTorch is not installed: run `uv run --group peers"):
        resolve_settings(parse_args(["--peers", "torch"]))
    assert resolve_settings(parse_args(["--quick"])).peers == ()
    monkeypatch.setitem(peers.PEER_MODULES, "torch", "json")  # any installed module: the check passes
    assert resolve_settings(parse_args(["--peers", "torch", "torch"])).peers == ("torch",)


# --- big, --compute-dtype and --peak-tflops (for a GPU: only the settings and the shapes are checked here) ---


def test_big_is_not_a_default_config_and_compute_dtype_settings():
    from benchmarks.configs import DEFAULT_CONFIGS
    from benchmarks.run import parse_args, resolve_settings

    assert "big" in CONFIGS and "big" not in DEFAULT_CONFIGS
    assert resolve_settings(parse_args([])).configs == DEFAULT_CONFIGS
    settings = resolve_settings(
        parse_args(["--backends", "jax", "--configs", "big", "--compute-dtype", "bfloat16", "--peak-tflops", "989"])
    )
    assert settings.compute_dtype == "bfloat16" and settings.peak_tflops == 989.0
    assert not settings.with_train_vjp  # the hand-written VJPs run in float32 only


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compute-dtype", "bfloat16"], "needs --backends jax"),
        (["--compute-dtype", "bfloat16", "--backends", "numpy"], "needs --backends jax"),
        (["--peak-tflops", "0"], "must be positive"),
    ],
)
def test_compute_dtype_and_peak_flag_errors(argv, message):
    from benchmarks.run import parse_args, resolve_settings

    with pytest.raises(SystemExit, match=message):
        resolve_settings(parse_args(argv))


@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
def test_big_train_step_builds_in_bfloat16():
    """The big config's train step traced for shapes only (jax.eval_shape): nothing runs on the CPU."""
    import dataclasses

    import jax

    import backends
    import functional_transformer as ft
    from functional_transformer import train

    bc = dataclasses.replace(CONFIGS["big"], compute_dtype="bfloat16")
    cfg, tcfg = bc.model_config(), ft.TrainConfig()
    optimizer = train.make_optimizer(tcfg, cfg)
    jax_backend = backends.get_backend("jax")
    key = jax_backend.random.key(0)
    state = jax.eval_shape(lambda k: train.init_state(k, cfg, optimizer), key)
    batch = {
        name: jax.ShapeDtypeStruct((bc.batch, bc.src_len if name == "src" else bc.tgt_len), "int32")
        for name in ("src", "tgt_in", "tgt_out")
    }
    new_state, metrics = jax.eval_shape(train.make_train_step(cfg, tcfg, optimizer, jax_backend), state, batch, key)
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(state["params"])) > 250e6
    assert {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(new_state["params"])} == {"float32"}
    assert str(metrics["loss"].dtype) == "float32"
