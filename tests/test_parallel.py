"""Many devices (functional_transformer/parallel.py): the same trajectory at 1, 2 and 8 devices,
data parallel and with sharded params, both gradient methods, dropout on; checkpoints from a
sharded run load on one device and on NumPy. The multi-device runs happen in a subprocess
(tests/parallel_worker.py) with 8 simulated CPU devices, since XLA_FLAGS must be set before JAX
starts; they run in the JAX suite (the NumPy suite checks the NumPy backend's errors)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKEND_NAME, HAS_JAX

import backends
import functional_transformer as ft
from functional_transformer import parallel

ROOT = Path(__file__).resolve().parent.parent
jax_suite = pytest.mark.skipif(BACKEND_NAME != "jax" or not HAS_JAX, reason="multi-device runs belong to the JAX suite")


def run_worker(tmp_path, runs, checkpoint_dir=None) -> dict:
    env = dict(os.environ, FT_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = tmp_path / "runs.npz"
    cmd = [sys.executable, str(ROOT / "tests" / "parallel_worker.py"), str(out), json.dumps(runs)]
    subprocess.run(cmd + ([str(checkpoint_dir)] if checkpoint_dir else []), env=env, cwd=ROOT, check=True, timeout=600)
    with np.load(out) as f:
        return dict(f)


def assert_same_run(got: dict, want: dict, a: str, b: str):
    np.testing.assert_allclose(got[f"{a}/loss"], want[f"{b}/loss"], rtol=1e-5)
    # Left out: the attention key biases. A key bias adds the same q.b_k to every score of a query,
    # which softmax ignores, so its true gradient is 0 and what it gets is float32 rounding noise,
    # whose sign depends on the summation order (so on the device count); Adam scales that noise
    # to steps of about the learning rate. They cannot move the loss, which is checked above.
    params = [k.split("/", 1)[1] for k in want if k.startswith(b + "/params") and not k.endswith("['b_k']")]
    assert params
    off = [name for name in params if not np.allclose(got[f"{a}/{name}"], want[f"{b}/{name}"], rtol=1e-5, atol=1e-6)]
    assert not off, f"{a} differs from {b} in {off}"


@jax_suite
@pytest.mark.parametrize("grad_method", ["vjp", "autodiff"])
def test_same_trajectory_at_1_2_and_8_devices(tmp_path, grad_method):
    runs = [[1, False, grad_method], [2, False, grad_method], [8, True, grad_method]]
    got = run_worker(tmp_path, runs, tmp_path / "ckpt")
    one = f"1-dp-{grad_method}"
    assert len(got[f"{one}/loss"]) == 20
    for other in (f"2-dp-{grad_method}", f"8-fsdp-{grad_method}"):
        assert_same_run(got, got, other, one)
        assert got[f"{other}/exact_match"] == got[f"{one}/exact_match"]
    # Data parallel: every device holds whole matrices; sharded: each holds 1/8 of every matrix
    # here (all of this model's matrices have an axis that 8 divides).
    assert got[f"2-dp-{grad_method}/n_devices"] == 2 and set(got[f"2-dp-{grad_method}/matrix_fraction"]) == {1.0}
    assert got[f"8-fsdp-{grad_method}/n_devices"] == 8
    np.testing.assert_array_equal(got[f"8-fsdp-{grad_method}/matrix_fraction"], 1 / 8)
    # The sharded run's checkpoint (gathered to the host) loads on one device and on NumPy.
    for backend in ("numpy", "jax"):
        model = ft.load(tmp_path / "ckpt", which="last", backend=backends.get_backend(backend))
        for path, x in _flat(model.params).items():
            np.testing.assert_array_equal(np.asarray(x), got[f"8-fsdp-{grad_method}/params{path}"])


@jax_suite
def test_max_tokens_batches_give_the_same_trajectory_on_8_devices(tmp_path):
    # 128 tokens of rows padded to 8 (max_len 8): 16 rows per batch, split 2 to each device.
    got = run_worker(tmp_path, [[1, False, "vjp", 128], [8, False, "vjp", 128]])
    assert len(got["1-dp-vjp-tok128/loss"]) == 20
    assert_same_run(got, got, "8-dp-vjp-tok128", "1-dp-vjp-tok128")


@jax_suite
@pytest.mark.slow
def test_same_trajectory_full_matrix(tmp_path):
    """Every count with both layouts and both gradient methods against one device."""
    runs = [[n, shard, gm] for gm in ("vjp", "autodiff") for n in (1, 2, 8) for shard in (False, True)]
    got = run_worker(tmp_path, runs)
    for n, shard, gm in runs:
        assert_same_run(got, got, f"{n}-{'fsdp' if shard else 'dp'}-{gm}", f"1-dp-{gm}")


def _flat(tree):
    import jax

    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_leaf_spec_splits_the_larger_divisible_axis():
    pytest.importorskip("jax")
    from jax.sharding import PartitionSpec as P

    assert parallel.leaf_spec((16, 64), 8, True) == P(None, "data")
    assert parallel.leaf_spec((64, 16), 8, True) == P("data", None)
    assert parallel.leaf_spec((12, 16), 8, True) == P(None, "data")
    assert parallel.leaf_spec((12, 6), 8, True) == P()  # nothing divides: replicated
    assert parallel.leaf_spec((64,), 8, True) == P()  # vectors stay whole
    assert parallel.leaf_spec((16, 64), 8, False) == P()


def test_numpy_backend_refuses_many_devices():
    with pytest.raises(parallel.ParallelError, match="JAX backend"):
        parallel.make_mesh(2, backends.get_backend("numpy"))
    assert parallel.make_mesh(1, backends.get_backend("numpy")) is None


@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
def test_uneven_batch_and_too_many_devices_are_clear_errors():
    import jax

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1] * 1), (parallel.AXIS,))
    parallel.check_batch_size(16, mesh)
    with pytest.raises(parallel.ParallelError, match="batch_size 10 does not split evenly over 4 devices"):
        parallel.check_batch_size(10, type("M", (), {"devices": np.zeros(4)})())
    with pytest.raises(parallel.ParallelError, match="devices were asked for"):
        parallel.make_mesh(len(jax.devices()) + 1, backends.get_backend("jax"))
    with pytest.raises(parallel.ParallelError, match="positive integer or 'all'"):
        parallel.make_mesh(0, backends.get_backend("jax"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "2"], None),  # the backend's own answer: below
        (["--devices", "0"], "a positive device count or 'all', got '0'"),
        (["--coordinator", "localhost:1234"], "needs all of --coordinator, --num-processes and --process-id"),
    ],
)
def test_cli_parallel_flag_errors_are_one_line(tmp_path, capsys, argv, message):
    from functional_transformer import cli

    code = None
    try:
        code = cli.main(["train", "--steps", "1", "--n-train", "32", "--out", str(tmp_path / "run"), *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    if message is None:
        want = "needs the JAX backend" if BACKEND_NAME == "numpy" else "devices were asked for but JAX sees 1"
        assert want in err
    else:
        assert message in err


TINY_RUN = [
    "--steps",
    "6",
    "--batch-size",
    "16",
    "--log-every",
    "2",
    "--eval-every",
    "6",
    "--n-train",
    "256",
    "--n-valid",
    "8",
    "--max-len",
    "6",
    "--d-model",
    "16",
    "--n-heads",
    "2",
    "--d-ff",
    "32",
    "--layers",
    "1",
]


def _train_losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


@jax_suite
@pytest.mark.slow
def test_two_processes_train_like_one_device(tmp_path):
    """Two processes with 2 CPU devices each (jax.distributed, gloo), params sharded over all 4:
    the same losses as one device; only process 0 writes."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, FT_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functional_transformer",
                "train",
                *TINY_RUN,
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--devices",
                "all",
                "--shard-params",
                "--out",
                str(tmp_path / f"p{i}"),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    subprocess.run(
        [
            sys.executable,
            "-m",
            "functional_transformer",
            "train",
            *TINY_RUN,
            "--no-progress",
            "--out",
            str(tmp_path / "one"),
        ],
        env=dict(os.environ, FT_BACKEND="jax"),
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    np.testing.assert_allclose(_train_losses(tmp_path / "p0"), _train_losses(tmp_path / "one"), rtol=1e-5)
    assert (
        not (tmp_path / "p1" / "metrics.jsonl").exists() and not (tmp_path / "p1" / "checkpoint.safetensors").exists()
    )
    # Evaluation is the same on every process (the progress lines print it on each).
    # (less each progress line's elapsed seconds, which two processes need not share)
    evals = [
        [re.sub(r" \[\d+ s\]$", "", line) for line in out.splitlines() if line.startswith("eval @")] for out in outputs
    ]
    assert evals[0] and evals[0] == evals[1]
