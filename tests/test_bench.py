"""`concept-talker bench` runs end to end (on the tiny preset, one run) and writes the keys the README reports.

The figures themselves are measured by `make bench` on the 0.5b preset; this only guards the command: every kernel
this CPU runs is measured and named, with int8 weights too, against the plain `generate()` baseline; the
static-cache + torch.compile baseline is checked on its own (it compiles, and writes the same tokens).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from benchmarks.engines import CompiledForward, kernels_to_measure
from benchmarks.thinker_decode import time_generate
from concept_talker.cli import main


def test_bench_writes_its_report_and_plot(tmp_path, capsys):
    import time

    from benchmarks import thinker_decode

    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    threads = torch.get_num_threads()
    assert main(["bench", "--preset", "tiny", "--runs", "1", "--no-compile", "--json", str(report),
                 "--plot", str(plot), "--threads", str(threads + 1), "--clock", "cpu"]) == 0
    # It measured as told, and left the process's threads and clock as it found them.
    assert torch.get_num_threads() == threads and thinker_decode._clock is time.perf_counter
    results = json.loads(report.read_text())
    assert (results["clock"], results["threads"]) == ("cpu", 1)  # CPU time counts one thread's work
    for key in ("first_audio_ms_p50", "first_audio_ms_p95", "rtf", "thinker_roofline_fraction",
                "baseline_first_audio_ms_p50", "peak_rss_mb", "talker_frames_per_s", "speedup_first_audio"):
        assert results[key] > 0, key
    assert results["reply_tokens_made"] == results["reply_tokens"] == 40  # the fixed reply, every token of it
    assert results["reply_audio_s"] > 2  # ... spoken (a random thinker's own "\n\n..." has no sounds)
    kernels = kernels_to_measure("all")
    assert results["kernels_measured"] == kernels and results["cpu"]
    for kernel in kernels:
        entry = results["by_kernel"][kernel]
        assert entry["ran"]["thinker"].split("-")[0] == kernel  # e.g. "avx512-bf16" for avx512, or "torch"
        assert entry["thinker_kernel"] == entry["ran"]["thinker"]
        assert entry["int8"]["int8_over_bf16_tok_s"] > 0 and entry["int8"]["first_audio_ms_p50"] > 0
        assert set(entry["meets"]) >= {"first_audio_ms_p50", "rtf", "thinker_roofline_fraction", "int8_over_bf16_tok_s"}
    assert results["kernel"] == results["by_kernel"][kernels[0]]["ran"]["thinker"]
    streaming, baseline = results["runs"][f"streaming/{kernels[0]}"][0], results["runs"]["baseline"][0]
    assert streaming["first_audio_s"] < streaming["total_s"]  # the first chunk came before the reply was done
    assert baseline["first_audio_s"] == baseline["total_s"]  # the baseline has nothing to play until the end
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "first audio p50" in capsys.readouterr().out


def test_compiled_baseline_writes_the_same_tokens():
    """transformers' static cache + torch.compile path, as the bench drives it, on a small thinker."""
    config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    thinker = AutoModelForCausalLM.from_config(config).eval()
    prompt = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    plain = time_generate(thinker, prompt, 6)
    compiled = CompiledForward(thinker)
    with compiled:
        assert thinker.forward is compiled.compiled
        fast = time_generate(thinker, prompt, 6, **compiled.generate_kwargs)
    assert "forward" not in vars(thinker)  # the class's own forward again
    assert fast["tokens"] == plain["tokens"]


def test_bench_refuses_zero_runs(tmp_path):
    try:
        main(["bench", "--runs", "0"])
    except SystemExit as exit:
        assert "--runs must be at least 1" in str(exit)
    else:
        raise AssertionError("expected SystemExit")


def test_bench_refuses_an_unknown_kernel():
    try:
        kernels_to_measure("avx512,neon")
    except SystemExit as exit:
        assert "--kernel takes" in str(exit)
    else:
        raise AssertionError("expected SystemExit")


def test_thinker_copy_probe_switches_to_the_prefix_after_the_bare_steps():
    from benchmarks.thinker_copy import batch, run

    ids, n = batch(torch.Generator().manual_seed(0), rows=2, vocab=50, prefix=5)
    assert ids.shape == (2, 5 + 2 * n + 3) and torch.equal(ids[:, 6 : 6 + n], ids[:, 7 + n : 7 + 2 * n])
    report = run(vocab=50, prefix=5, steps=4, bare_steps=2, every=2, log=lambda line: None)
    assert [point["prefix"] for point in report["curve"]] == [0, 5]
    assert all(0.0 <= point["copy_accuracy"] <= 1.0 for point in report["curve"])
    # the embedding scale the tiny presets start from; the default is transformers' 0.02
    from benchmarks.thinker_copy import tiny_lyra_thinker

    assert tiny_lyra_thinker(500, 0.1).get_input_embeddings().weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert tiny_lyra_thinker(500).get_input_embeddings().weight.std().item() == pytest.approx(0.02, rel=0.05)
