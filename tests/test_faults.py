"""Fault injection: `ft train` killed (SIGKILL) at random moments and in the middle of a save, and a
save that fails half-way. The run folder must always hold a loadable checkpoint, and resuming must
reach exactly the params of an uninterrupted run.

Bounded: a tiny model, a fixed number of kills (fewer on JAX, where each process compiles its step
first), a timeout on every process, and every process killed or waited for before the test ends.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from functional_transformer import checkpoint, checkpoint_format, cli, runs
from functional_transformer.backend_choice import default_backend
from functional_transformer.train import SaveFailed

REPO = Path(__file__).resolve().parent.parent
ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
STEPS = 40
# d_model 64 makes a checkpoint of about 1.3 MB, so a save takes long enough to be caught in the act.
ARGS = [
    "train",
    "--task",
    "reverse",
    "--n-train",
    "300",
    "--n-valid",
    "5",
    "--max-len",
    "4",
    "--d-model",
    "64",
    "--n-heads",
    "2",
    "--d-ff",
    "64",
    "--layers",
    "1",
    "--steps",
    str(STEPS),
    "--save-every",
    "1",
    "--eval-every",
    "1000",
    "--batch-size",
    "8",
    "--no-progress",
]


def flat_params(path):
    loaded = checkpoint.load(path, default_backend())
    backend = default_backend()
    return loaded, {k: np.asarray(backend.to_numpy(v)) for k, v in backend.tree_items(loaded.state["params"])}


# `ft train` with every fsync announced on stderr and slowed to 20 ms, like a slow disk: the test can
# then kill it while a checkpoint's temporary file is written but not yet renamed into place.
SLOW_DISK = """
import os, sys, time
from functional_transformer import cli
real_fsync = os.fsync
def slow_fsync(fd):
    print("fsync", file=sys.stderr, flush=True)
    time.sleep(0.02)
    return real_fsync(fd)
os.fsync = slow_fsync
sys.exit(cli.main(sys.argv[1:]))
"""


def start(out, resume):
    argv = [sys.executable, "-c", SLOW_DISK, *ARGS, "--out", str(out), *(["--resume"] if resume else [])]
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_training(proc, timeout=120):
    """Block until the process has taken the folder's lock and is about to train."""
    t0 = time.monotonic()
    line = proc.stderr.readline()
    assert "writing to" in line or "resuming" in line, line
    assert time.monotonic() - t0 < timeout


def kill_mid_save(proc, out, nth):
    """SIGKILL the process inside its nth fsync, while that save's temporary file is not yet renamed.
    Each save fsyncs its temporary file, renames it, then fsyncs the folder: odd fsyncs are the files'."""
    seen = 0
    for line in proc.stderr:
        seen += line.strip() == "fsync"
        if seen == nth:
            proc.send_signal(signal.SIGKILL)
            return any(out.glob(".checkpoint.safetensors.*.tmp"))
    return False


def test_sigkill_at_random_moments_never_loses_the_run_and_resume_is_exact(tmp_path):
    reference = tmp_path / "reference"
    assert cli.main([*ARGS, "--out", str(reference)]) == 0
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    n_kills = 2 if ON_JAX else 6
    mid_save_kills = 0
    steps_at_kill = []
    for i in range(n_kills):
        proc = start(out, resume=(out / checkpoint.CHECKPOINT_NAME).exists())
        try:
            wait_until_training(proc)
            if i % 2:  # in the middle of a save
                mid_save_kills += kill_mid_save(proc, out, nth=2 * int(rng.integers(1, 5)) - 1)
            else:  # at a random moment
                time.sleep(float(rng.uniform(0.05, 0.6)))
                proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
        if (out / checkpoint.CHECKPOINT_NAME).exists():
            loaded, _ = flat_params(out)  # always loadable: every save is atomic
            steps_at_kill.append(int(default_backend().to_numpy(loaded.state["step"])))
    assert mid_save_kills == n_kills // 2, "a kill meant for the middle of a save missed it"
    assert steps_at_kill and steps_at_kill[-1] < STEPS, steps_at_kill

    final = start(out, resume=True)
    try:
        _, err = final.communicate(timeout=300)
    finally:
        final.kill()
    assert final.returncode == 0, err
    assert not list(out.glob(".*.tmp"))  # the killed saves' temporary files were cleaned up
    resumed, got = flat_params(out)
    _, want = flat_params(reference)
    assert resumed.step == STEPS
    assert got.keys() == want.keys()
    for name in want:  # bit for bit: the same operations on the same inputs
        assert np.array_equal(got[name], want[name]), name


def test_a_save_that_fails_half_way_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd):
        # The third checkpoint write fails like a full disk, after its bytes went to the temporary file.
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".checkpoint.safetensors."):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint_format.os, "fsync", failing_fsync)
    argv = [
        *ARGS[: ARGS.index("--steps")],
        "--steps",
        "10",
        "--save-every",
        "2",
        "--eval-every",
        "1000",
        "--batch-size",
        "8",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 1  # a runtime failure, not a usage error
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("ft train: error: training stopped")
    assert (
        f"training stopped at step 6: could not save {out / checkpoint.CHECKPOINT_NAME}: No space left on device" in err
    )
    assert f"The last checkpoint saved before ({out / checkpoint.CHECKPOINT_NAME}) is intact" in err
    loaded, _ = flat_params(out)
    assert int(default_backend().to_numpy(loaded.state["step"])) == 4
    assert not list(out.glob(".*.tmp"))


def test_from_python_a_failed_save_is_a_save_failed_error(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_format.os, "fsync", full_disk)
    with pytest.raises(SaveFailed, match=r"stopped at step 1: .* \(none was saved yet\) is intact"):
        runs.fit(
            {"d_model": 16, "n_heads": 2, "d_ff": 16, "n_encoder_layers": 1, "n_decoder_layers": 1},
            {"steps": 2, "save_every": 1, "batch_size": 4},
            runs.task_data("reverse", n_train=20, n_valid=2, max_len=3),
            out_dir=tmp_path / "run",
            progress=False,
            verbose=False,
        )
    assert not list((tmp_path / "run").glob("*.safetensors")) and not list((tmp_path / "run").glob(".*.tmp"))
