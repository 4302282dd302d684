"""Tests of the run report (functional_transformer.insight.report, `ft report`): the page's content
(everywhere matplotlib is), that it is self-contained (no script, no external reference, every image
an embedded PNG), that it loads in a real headless browser with every image decoded (where Chromium
is installed), the pieces it is made of (parameter counts, the learning-rate curve, the samples
picked), checkpoints from the other backend, and the one-line errors.
"""

import base64
import dataclasses
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import requires_jax

import backends
import functional_transformer as ft
from functional_transformer import checkpoint, cli
from functional_transformer.insight import report
from functional_transformer.train import make_schedule

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is the [plot] extra, not installed here")
ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
slow_on_jax = pytest.mark.slow if ON_JAX else (lambda test: test)
TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1}
DATA = ft.task_data("reverse", n_train=200, n_valid=12, min_len=1, max_len=5)
TRAIN = ft.TrainConfig(steps=12, batch_size=8, warmup_steps=3, log_every=2, eval_every=6, save_every=6)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chromium-headless-shell")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run folder (best and last checkpoints, metrics.jsonl) on the FT_BACKEND backend."""
    out = tmp_path_factory.mktemp("report") / "run"
    ft.fit(TINY, TRAIN, DATA, out_dir=out, progress=False, verbose=False)
    return out


@pytest.fixture(scope="module")
def page(run_dir):
    if not HAS_MATPLOTLIB:
        pytest.skip("matplotlib is the [plot] extra, not installed here")
    return report.build_report(run_dir, n_examples=12)


def images(page: str) -> list[bytes]:
    """The decoded bytes of every <img>; each must be an embedded base64 PNG."""
    sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert len(sources) == page.count("<img ")
    decoded = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        decoded.append(base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True))
    return decoded


# ---------------------------------------------------------------------------------------------
# The page's content


def test_the_page_shows_configs_curves_samples_attention_and_checkpoint(page, run_dir):
    for heading in ("Configuration", "Curves", "Held-out evaluations", "Sample predictions", "Attention", "Checkpoint"):
        assert f">{heading}</h" in page
    loaded = checkpoint.load(checkpoint.resolve(run_dir), backends.get_backend("numpy"))
    for name, value in [*loaded.cfg.to_dict().items(), *dataclasses.asdict(loaded.train_config).items()]:
        assert f"<th>{html.escape(name)}</th><td>{html.escape(str(value))}</td>" in page
    valid = [r for r in ft.runs.read_history(run_dir) if r["split"] == "valid"]
    assert len(valid) == 2
    for record in valid:
        assert f'<td class="num">{record["exact_match"]:.4f}</td>' in page
    assert "best.safetensors" in page and "checkpoint.safetensors" in page and "read for this page" in page
    assert f"written on the {loaded.written_on} backend" in page


def test_the_page_is_self_contained(page):
    assert "<script" not in page.lower() and "<link" not in page.lower() and "<iframe" not in page.lower()
    assert not re.search(r"(src|href)\s*=\s*(?![\"']?data:)", page)  # no reference to any other file or server
    assert "url(" not in page  # nor from the style sheet
    pngs = images(page)
    n_attention = page.count("<h3>&#x27;")  # one heading per example drawn
    assert n_attention >= 1 and len(pngs) == 1 + n_attention  # the curves, then one figure per example
    assert all(png.startswith(PNG_MAGIC) for png in pngs)


def test_the_samples_table_shows_greedy_and_beam_with_the_target(page, run_dir):
    held_out = ft.runs.load_pairs(DATA)[1]
    model = ft.load(run_dir)
    greedy = ft.predict(model, [s for s, _ in held_out])
    right = sum(g == t for g, (_, t) in zip(greedy, held_out))
    assert f"greedy decoding got {right}/12 exactly right" in page
    table = page[page.index(">Sample predictions<") : page.index(">Attention<")]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert 1 <= len(rows) <= 16
    for row in rows:
        source, target, by_greedy, by_beam = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert (html.unescape(source), html.unescape(target)) in held_out
        for cell in (by_greedy, by_beam):
            assert cell.endswith(" ✓") == (cell[:-2] == target) and cell.endswith((" ✓", " ✗"))


# ---------------------------------------------------------------------------------------------
# Its pieces


def test_parameter_counts_cover_every_leaf_once(backend):
    cfg = ft.TransformerConfig(
        src_vocab_size=11,
        tgt_vocab_size=13,
        d_model=8,
        n_heads=2,
        d_ff=16,
        n_encoder_layers=2,
        n_decoder_layers=3,
        max_len=9,
        norm_first=True,
    )
    params = ft.init(backend.random.key(0), cfg)
    rows = report.parameter_counts(params)
    names = [r["component"] for r in rows]
    assert names == [
        "src_embed",
        "tgt_embed",
        "encoder.layer_0",
        "encoder.layer_1",
        "encoder.final_ln",
        "decoder.layer_0",
        "decoder.layer_1",
        "decoder.layer_2",
        "decoder.final_ln",
        "out_proj",
        "total",
    ]
    leaves = backend.tree_leaves(params)
    assert rows[-1]["parameters"] == sum(int(np.prod(leaf.shape)) for leaf in leaves)
    assert rows[-1]["bytes"] == 4 * rows[-1]["parameters"]  # float32
    assert rows[names.index("out_proj")]["parameters"] == 8 * 13 + 13
    assert rows[names.index("encoder.final_ln")]["parameters"] == 2 * 8


@pytest.mark.parametrize("schedule", ["cosine", "transformer", "constant"])
def test_learning_rates_are_the_runs_own_schedule(schedule):
    cfg = ft.TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, d_model=16, n_heads=2)
    tcfg = ft.TrainConfig(steps=50, warmup_steps=10, schedule=schedule)
    steps, rates = report.learning_rates(tcfg, cfg)
    assert list(steps) == list(range(1, 51))
    one_by_one = [float(make_schedule(tcfg, cfg)(count)) for count in range(50)]
    np.testing.assert_allclose(rates, one_by_one, rtol=1e-15)  # as the optimizer calls it, one count at a time
    if schedule == "cosine":
        assert int(steps[np.argmax(rates)]) == 11 and rates.max() == pytest.approx(tcfg.learning_rate)
        assert rates[-1] < 1e-2 * tcfg.learning_rate  # decayed to 0 at the end of step 50


def test_an_extended_runs_rates_start_where_its_schedule_restarted():
    cfg = ft.TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, d_model=16, n_heads=2)
    steps, rates = report.learning_rates(ft.TrainConfig(steps=80, warmup_steps=10, schedule_start=50), cfg)
    assert steps[0] == 51 and len(steps) == 30 and rates[0] == 0.0


def test_samples_put_wrong_answers_first_and_attention_picks_first_longest_wrong():
    rows = [
        {"source": s, "target": t, "greedy": g, "beam": b}
        for s, t, g, b in [
            ("ab", "ba", "ba", "ba"),
            ("abcd", "dcba", "dcba", "dcba"),
            ("abc", "cba", "cbb", "cba"),
            ("b", "b", "b", "x"),
        ]
    ]
    assert [r["source"] for r in report.pick_samples(rows, n_wrong=8, n_right=1)] == ["abc", "b", "ab"]
    assert report.pick_attention_sources(rows) == ["ab", "abcd", "abc"]
    assert report.pick_attention_sources(rows, n=1) == ["ab"]
    assert report.pick_attention_sources([]) == []


# ---------------------------------------------------------------------------------------------
# Other runs and other backends


@needs_matplotlib
@slow_on_jax
def test_a_run_without_held_out_data_gets_a_note_not_a_crash(tmp_path):
    pairs = [("ab", "ba"), ("abc", "cba"), ("ca", "ac")] * 10
    out = tmp_path / "pairs"
    ft.fit(
        TINY,
        ft.TrainConfig(steps=3, batch_size=4, log_every=1),
        (pairs, []),
        out_dir=out,
        progress=False,
        verbose=False,
    )
    page = report.build_report(out)
    assert "No held-out examples to decode: this run&#x27;s data (&#x27;pairs&#x27;) was given in memory" in page
    assert "No examples to draw" in page
    assert len(images(page)) == 1  # the curves


@requires_jax
@needs_matplotlib
def test_a_checkpoint_from_one_backend_reports_on_the_other(run_dir, numpy_backend, jax_backend):
    """run_dir was trained on FT_BACKEND; the page is made on the other backend."""
    other = numpy_backend if ON_JAX else jax_backend
    page = report.build_report(run_dir, backend=other, n_examples=4, n_attention=1)
    written = "jax" if ON_JAX else "numpy"
    assert f"written on the {written} backend, read on {other.name} for this page" in page
    assert len(images(page)) == 2


# ---------------------------------------------------------------------------------------------
# ft report


@needs_matplotlib
def test_ft_report_writes_the_page_into_the_run_folder_by_default(run_dir, tmp_path, capsys):
    out = tmp_path / "pages" / "r.html"
    assert cli.main(["report", "--checkpoint", str(run_dir), "--n", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert cli.main(["report", "--checkpoint", str(run_dir), "--which", "last", "--n", "4"]) == 0
    written = run_dir / "report.html"
    assert written.exists() and f"{run_dir / 'checkpoint.safetensors'}" in written.read_text(encoding="utf-8")
    written.unlink()


def test_ft_report_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    assert cli.main(["report", "--checkpoint", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["report", "--checkpoint", str(run_dir), "--n", "0"]) == 2
    assert capsys.readouterr().err == "ft report: error: --n must be at least 1, got 0\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as where the [plot] extra is not installed
    assert cli.main(["report", "--checkpoint", str(run_dir), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ft report: error: ft report draws with matplotlib") and err.count("\n") == 1
    assert "pip install 'functional-transformer[plot]'" in err and not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------------------------------
# In a real browser

# Added to a copy of the page under test (the page itself has no script): record every error,
# including images that fail to load (error events do not bubble, so listen in the capture phase),
# and once the page has loaded write what was seen into the DOM, which --dump-dom prints.
PROBE = """<script>
window.ftErrors = [];
window.addEventListener("error", e => window.ftErrors.push(e.message || ("failed to load " + e.target.tagName)), true);
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "ft-probe";
  out.textContent = JSON.stringify({errors: window.ftErrors, images: imgs.length,
                                    widths: imgs.map(i => i.complete ? i.naturalWidth : -1)});
  document.body.appendChild(out);
});
</script>"""


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.mark.skipif(
    find_browser() is None,
    reason=f"no headless browser installed (looked for {', '.join(BROWSERS)}; on Debian: apt-get install chromium, as .ci/run does)",
)
def test_the_page_loads_in_a_headless_browser_with_every_image_decoded(page, tmp_path):
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    command = [
        find_browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="ft-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading; stderr: {proc.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["errors"] == []
    assert seen["images"] == len(images(page)) >= 2
    assert all(width > 100 for width in seen["widths"]), seen["widths"]  # decoded, at their real size
