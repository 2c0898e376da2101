"""Throughput of the synthetic-data pipeline: TTS rendering, codec encoding, and the whole `synth` build.

    python -m benchmarks.synth_bench                        # 1,667 rows = 5,001 utterances, tiny codec, 2 processes
    python -m benchmarks.synth_bench --rows 300 --json benchmarks/results/synth.json

An utterance is one rendered clip; each row holds three (question, reply, reference). The stages are timed on their
own, in one process with one torch thread, over `--stage-rows` rows (no `datasets` overhead); the build is timed
end to end (`build_synthetic_dataset`: planning, rendering, encoding, Arrow shards, final save) with `--num-proc`
workers. The report is JSON on stdout (and in `--json`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import torch

TARGET_UTTERANCES = 5000
TARGET_SECONDS = 600.0


def _rates(utterances: int, audio_seconds: float, seconds: float) -> dict:
    return {
        "utterances": utterances,
        "audio_seconds": round(audio_seconds, 1),
        "seconds": round(seconds, 2),
        "utterances_per_s": round(utterances / seconds, 2),
        "audio_seconds_per_s": round(audio_seconds / seconds, 1),
    }


def bench_stages(rows: list[dict], codec_spec: str, batch_rows: int = 16) -> dict:
    """Render, then encode, `rows` in this process with one torch thread; time each stage."""
    from concept_talker.data.dataset import AUDIO_KINDS, EncodeAudio, process_codec
    from concept_talker.data.synth import RenderRows

    codec = process_codec(codec_spec)
    render = RenderRows("espeak", codec.sampling_rate)
    encode = EncodeAudio(codec_spec, None, AUDIO_KINDS)
    batches = [rows[i : i + batch_rows] for i in range(0, len(rows), batch_rows)]
    columns = [{key: [row[key] for row in batch] for key in batch[0]} for batch in batches]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        render({key: values[:1] for key, values in columns[0].items()})  # load the library and voices once
        start = time.perf_counter()
        rendered = [render(batch) for batch in columns]
        render_seconds = time.perf_counter() - start
        encode({key: values[:1] for key, values in rendered[0].items()})  # build the codec once
        start = time.perf_counter()
        for batch in rendered:
            encode(batch)
        encode_seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    utterances = len(rows) * len(AUDIO_KINDS)
    audio_seconds = sum(sum(batch[f"{kind}_seconds"]) for batch in rendered for kind in AUDIO_KINDS)
    return {
        "render": _rates(utterances, audio_seconds, render_seconds),
        "encode": _rates(utterances, audio_seconds, encode_seconds),
        "mean_utterance_seconds": round(audio_seconds / utterances, 3),
    }


def bench_build(rows: int, codec_spec: str, num_proc: int, out_dir: str) -> dict:
    """`build_synthetic_dataset` end to end, codes only (no waveforms stored)."""
    from concept_talker.data.dataset import AUDIO_KINDS
    from concept_talker.data.synth import SynthConfig, build_synthetic_dataset

    config = SynthConfig(num_rows=rows, codec=codec_spec, audio_columns=())
    start = time.perf_counter()
    dataset = build_synthetic_dataset(config, out_dir, num_proc=num_proc, overwrite=True)
    seconds = time.perf_counter() - start
    audio_seconds = sum(
        float(sum(split[f"{kind}_seconds"])) for split in dataset.values() for kind in AUDIO_KINDS
    )
    result = _rates(rows * len(AUDIO_KINDS), audio_seconds, seconds)
    result.update(rows=rows, rows_per_s=round(rows / seconds, 2), num_proc=num_proc)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=-(-TARGET_UTTERANCES // 3),
                        help="rows for the end-to-end build (3 utterances each; 0 skips it)")
    parser.add_argument("--stage-rows", type=int, default=100, help="rows for the per-stage timings")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="worker processes for the build")
    parser.add_argument("--codec", default="tiny", help="codec spec (see concept_talker.data.codecs.resolve_codec)")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--keep", help="keep the built dataset in this folder (default: a temporary folder)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import disable_progress_bars

    from concept_talker.data.codecs import describe_codec
    from concept_talker.data.dataset import process_codec
    from concept_talker.data.synth import SynthConfig, plan_split
    from concept_talker.data.tts import load_tts

    disable_progress_bars()
    tts = load_tts("espeak")
    codec = process_codec(args.codec)
    voices = tts.default_voice_splits()["train"]
    rows = plan_split(SynthConfig(num_rows=args.stage_rows, seed=123), "train", args.stage_rows, voices)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "codec": {k: v for k, v in describe_codec(codec, args.codec).items() if k != "fingerprint"},
        "tts": {k: v for k, v in tts.describe().items() if k != "library"},
        "stages_one_process": bench_stages(rows, args.codec),
    }
    stages = report["stages_one_process"]
    render_time = 1 / stages["render"]["utterances_per_s"]
    encode_time = 1 / stages["encode"]["utterances_per_s"]
    report["dominant_stage"] = "encode" if encode_time > render_time else "render"
    report["encode_share_of_compute"] = round(encode_time / (encode_time + render_time), 3)
    if args.rows > 0:
        out_dir = args.keep or tempfile.mkdtemp(prefix="synth-bench-")
        try:
            report["build"] = bench_build(args.rows, args.codec, args.num_proc, os.path.join(out_dir, "dataset"))
        finally:
            if not args.keep:
                shutil.rmtree(out_dir, ignore_errors=True)
        build = report["build"]
        seconds_for_target = TARGET_UTTERANCES / build["utterances_per_s"]
        report["target"] = {
            "utterances": TARGET_UTTERANCES,
            "seconds_allowed": TARGET_SECONDS,
            "seconds_at_build_rate": round(seconds_for_target, 1),
            "met": seconds_for_target <= TARGET_SECONDS,
            "seconds_for_5000_rows_at_build_rate": round(5000 / build["rows_per_s"], 1),
        }
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
