"""`concept-talker eval-speech`: is what the model says understandable? WER through an offline recogniser.

    concept-talker eval-speech --model runs/tiny-lyra/final --data runs/tiny-lyra/data --json speech.json

On the test split (held-out voices and items), for each spoken question:

    ceiling_wer   the reference reply's audio (TTS, then the codec's round trip: the dataset's reply codes decoded)
                  -> recogniser -> WER against the reference reply text. The best the codec allows.
    wer           the model speaking the same reference reply text (its thinker reads the reference tokens, its
                  talker writes the audio) -> recogniser -> WER against that text. Same sentences as the ceiling.
    free_wer      the model's own spoken reply (its thinker chooses the words) -> WER against the words it wrote.
    garbage_wer   the model's spoken replies played backwards: a control that must stay near 100%.

The recogniser is pocketsphinx with a trigram language model of the dataset's reply sentences (`--lm corpus`,
default), a unigram over their words (`--lm unigram`) or its general English model (`--lm general`); the
results say which. Needs a codec with real weights (Lyra, or EnCodec's pretrained model) to mean anything.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

LANGUAGE_MODELS = ("corpus", "unigram", "general")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a trained checkpoint folder (e.g. runs/tiny-lyra/final)")
    parser.add_argument("--data", required=True, help="a dataset made with concept-talker synth (its test split is used)")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--max-examples", type=int, default=100, help="test rows to use")
    parser.add_argument("--lm", choices=LANGUAGE_MODELS, default="corpus", help="the recogniser's language model")
    parser.add_argument("--lyra-dir", help="the Lyra SoundStream folder on this machine (for Lyra checkpoints)")
    parser.add_argument("--split", default="test", help="dataset split (default: test, held-out voices and items)")


def build_recognizer(kind: str, sentences: list[str]):
    from trainers.asr import PocketsphinxRecognizer

    if kind == "corpus":
        return PocketsphinxRecognizer.from_corpus(sentences, order=3)
    if kind == "unigram":
        return PocketsphinxRecognizer.from_vocabulary({w for s in sentences for w in s.split()})
    return PocketsphinxRecognizer()


def language_model_description(kind: str) -> str:
    return {
        "corpus": "pocketsphinx, trigram LM of the dataset's reply sentences (all splits)",
        "unigram": "pocketsphinx, flat unigram LM over the dataset's reply words",
        "general": "pocketsphinx, its general English LM",
    }[kind]


def speech_intelligibility(model, processor, rows: list[dict], recognizer, voice: bool = False, seed: int = 0) -> dict:
    """WERs of the ceiling, the model on the reference texts, the model's free replies, and the garbage control."""
    from trainers.asr import word_error_rate
    from trainers.collators import codes_tensor
    from trainers.evaluation import spoken_turn_inputs
    from trainers.tutor_metrics import reference_codes

    codec, k = model.codec, model.config.codec_num_codebooks
    rate = codec.sampling_rate
    references, ceiling_heard, forced_heard, free_texts, free_heard, backwards_heard = [], [], [], [], [], []
    # The talker samples with the checkpoint's own settings (its generation_config.json), as `chat` does.
    settings = dict(thinker_max_new_tokens=64, max_audio_seconds=15.0, seed=seed)
    for row in rows:
        reference = row["reply_text"]
        references.append(reference)
        reference_audio = codec.decode(codes_tensor(row["reply_codes"], "reply_codes", k)[None])[0].numpy()
        ceiling_heard.append(recognizer.transcribe(reference_audio, rate))

        inputs = spoken_turn_inputs(processor, [row], k, "reply")
        if voice:
            inputs["style_embeds"] = model.get_voice_concepts(reference_codes(model, row))
        reply_ids = processor.tokenizer(reference + "<|im_end|>", add_special_tokens=False).input_ids
        forced = model.generate(**inputs, reply_token_ids=[reply_ids], **settings)
        forced_heard.append(recognizer.transcribe(forced.waveforms[0], rate) if len(forced.waveforms[0]) else "")

        free = model.generate(**inputs, **settings)
        free_texts.append(processor.decode(free.sequences[0], skip_special_tokens=True).strip())
        wave = free.waveforms[0]
        free_heard.append(recognizer.transcribe(wave, rate) if len(wave) else "")
        backwards_heard.append(recognizer.transcribe(wave[::-1].copy(), rate) if len(wave) else "")

    spoken = [i for i, text in enumerate(free_texts) if text.strip()]  # free replies with words to score
    written = [free_texts[i] for i in spoken]
    return {
        "ceiling_wer": word_error_rate(references, ceiling_heard),
        "wer": word_error_rate(references, forced_heard),
        "free_wer": word_error_rate(written, [free_heard[i] for i in spoken]) if spoken else None,
        "garbage_wer": word_error_rate(written, [backwards_heard[i] for i in spoken]) if spoken else None,
        "speech_examples": [
            {"reference": r, "ceiling_heard": c, "model_heard": f, "free_reply": t, "free_heard": h}
            for r, c, f, t, h in list(zip(references, ceiling_heard, forced_heard, free_texts, free_heard))[:6]
        ],
    }


def talker_sampling(model) -> dict:
    """How the talker samples when not told otherwise (the checkpoint's defaults): what the figures were made with."""
    from modeling_concept_talker.generation import SpokenGenerationConfig

    settings = SpokenGenerationConfig.for_model(model, {})
    return {"talker_do_sample": settings.talker_do_sample, "talker_temperature": settings.talker_temperature,
            "talker_top_k": settings.talker_top_k}


def run(args) -> int:
    from datasets import load_from_disk

    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor

    kwargs = {"codec_model_dir": args.lyra_dir} if args.lyra_dir else {}
    model = ConceptTalkerForConditionalGeneration.from_pretrained(args.model, **kwargs).eval()
    processor = ConceptTalkerProcessor.from_pretrained(args.model)
    dataset = load_from_disk(args.data)
    if args.split not in dataset:
        raise SystemExit(f"{args.data} has no '{args.split}' split.")
    split = dataset[args.split]
    rows = [split[i] for i in range(min(len(split), args.max_examples))]
    sentences = sorted({text for name in dataset for text in dataset[name]["reply_text"]})
    recognizer = build_recognizer(args.lm, sentences)
    voice = model.config.talker_config.num_style_concepts > 0 and "reference_codes" in split.column_names
    with torch.inference_mode():
        results = speech_intelligibility(model, processor, rows, recognizer, voice=voice)
    results.update({"examples_scored": len(rows), "recognizer": language_model_description(args.lm),
                    "codec": model.config.codec_type, "model": os.path.abspath(args.model), "split": args.split,
                    "talker_sampling": talker_sampling(model)})
    directory = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(directory, exist_ok=True)
    with open(args.json + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(args.json + ".tmp", args.json)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))
    if model.config.codec_type != "lyra_soundstream":
        print("Note: this model's codec is not Lyra; unless it holds pretrained EnCodec weights its audio is not speech.")
    return 0
