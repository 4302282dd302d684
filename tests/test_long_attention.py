"""The long-sequence study (benchmarks/studies/long_attention.py) at a tiny length: one point per kernel in
this process and one through the subprocess a real run uses, the skip of full attention where its
weights would not fit, and the table."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.studies import long_attention


def test_a_point_measures_time_memory_and_the_same_loss_for_both_kernels(capsys):
    """The child's entry point: a record on the last line of stdout, the kernels training the same
    model to rounding (the loss of the second step, after one identical Adam update)."""
    records = {}
    for kernel in long_attention.KERNELS:
        long_attention.main(["--point", kernel, "16", "--reps", "1"])
        records[kernel] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for record in records.values():
        assert record["wall_s"] > 0 and record["cpu_s"] >= 0 and record["peak_rss_bytes"] > 10 * 2**20
        on_jax = os.environ.get("FT_BACKEND", "numpy") == "jax"
        assert (record["xla_bytes"] is not None) == on_jax
    assert records["full"]["loss"] == pytest.approx(records["blockwise"]["loss"], rel=1e-5)


def test_run_point_runs_a_subprocess_and_reports_its_failure():
    backend = os.environ.get("FT_BACKEND", "numpy")
    record = long_attention.run_point(backend, "blockwise", 8, 1, timeout_s=300)
    assert record["length"] == 8 and record["wall_s"] > 0, record
    failed = long_attention.run_point(backend, "sparse", 8, 1, timeout_s=300)
    assert "error" in failed and "exit" in failed["error"]


def test_full_attention_is_skipped_where_its_weights_exceed_the_limit(capsys):
    # 6 attention layers x 4 heads x T^2 float32: 25.8 GB at T = 16,384, so only blockwise runs there;
    # --kernels full with a limit below T = 16's 24 KiB skips the only point, so nothing is spawned.
    assert long_attention.full_weights_bytes(16384) == 6 * 4 * 16384**2 * 4
    long_attention.main(["--backends", "numpy", "--lengths", "16", "--kernels", "full", "--full-limit-gb", "1e-6"])
    out = capsys.readouterr().out
    assert "| numpy | 16 | weights alone 0.0 GiB | – | – | not run |" in out


def test_table_puts_full_beside_blockwise_with_the_time_ratio():
    records = [
        {"backend": "jax", "kernel": "full", "length": 512, "wall_s": 2.0, "cpu_s": 1.0, "peak_rss_bytes": 2**30},
        {"backend": "jax", "kernel": "blockwise", "length": 512, "wall_s": 1.0, "cpu_s": 1.0, "peak_rss_bytes": 2**29},
    ]
    for record in records:
        record["xla_bytes"] = 2**28
    row = long_attention.table(records).splitlines()[-1]
    assert row.startswith("| jax | 512 | 2.00 s (1.00 s) | 1.00 GiB | 0.25 GiB | 1.00 s (1.00 s) | 0.50 GiB")
    assert row.endswith("| 0.50x |")
