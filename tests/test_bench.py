"""`concept-talker bench` runs end to end (on the tiny preset, one run) and writes the keys the README reports.

The figures themselves are measured by `make bench` on the 0.5b preset; this only guards the command.
"""

from __future__ import annotations

import json

from trainers.cli import main


def test_bench_writes_its_report_and_plot(tmp_path, capsys):
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--preset", "tiny", "--runs", "1", "--json", str(report), "--plot", str(plot)]) == 0
    results = json.loads(report.read_text())
    for key in ("first_audio_ms_p50", "first_audio_ms_p95", "rtf", "thinker_roofline_fraction",
                "baseline_first_audio_ms_p50", "peak_rss_mb", "talker_frames_per_s", "speedup_first_audio"):
        assert results[key] > 0, key
    assert 0 < results["reply_tokens_made"] <= results["reply_tokens"] == 40
    streaming, baseline = results["runs"]["streaming"][0], results["runs"]["baseline"][0]
    assert streaming["first_audio_s"] < streaming["total_s"]  # the first chunk came before the reply was done
    assert baseline["first_audio_s"] == baseline["total_s"]  # the baseline has nothing to play until the end
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "first audio p50" in capsys.readouterr().out


def test_bench_refuses_zero_runs(tmp_path):
    try:
        main(["bench", "--runs", "0"])
    except SystemExit as exit:
        assert "--runs must be at least 1" in str(exit)
    else:
        raise AssertionError("expected SystemExit")
