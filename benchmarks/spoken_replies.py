"""Does a checkpoint say what it writes? Whisper's hearing of its spoken replies to a few questions, against the reply
text the same turn wrote (greedy, the checkpoint's own reply settings).

The questions are spoken by espeak-ng (its default voice, as `concept-talker chat --say` speaks them); the judge is
`concept_talker.evaluation.asr.WhisperRecognizer` (Whisper base by default, Whisper's English normaliser on both sides). This checks
the talking alone: whether the reply answers the question is the evaluation's business (`eval_results.json`).

    python -m benchmarks.spoken_replies --model checkpoints/tiny-lyra --json benchmarks/results/spoken_replies.json
"""

from __future__ import annotations

import argparse

import torch

# The README's question first, then ten more of the tutoring skills (none of them is a training item by design:
# they are typed here, not drawn from the data).
QUESTIONS = (
    "What does brave mean?",
    "How do you spell yellow?",
    "What is two plus eight?",
    "Repeat after me. The cat sat on the mat.",
    "What is the capital of France?",
    "How do you pronounce calendar?",
    "What is a baby dog called?",
    "Is this right? She go to school.",
    "Tell me the answer to five plus four.",
    "What does happy mean?",
    "Can you spell house for me?",
)


def spoken_replies(model_spec: str, questions=QUESTIONS, judge: str | None = None, max_new_tokens: int = 48,
                   repetition_penalty: float | None = None) -> dict:
    """Reply text, what the judge heard, and their WER for each question; the WER over all of them. With
    `repetition_penalty`, the thinker writes under that penalty (`thinker_repetition_penalty`) instead of the
    checkpoint's own setting."""
    from modeling_concept_talker import build_prompt
    from concept_talker.evaluation.asr import WhisperRecognizer
    from concept_talker.loading import load_model
    from concept_talker.data.tts import load_tts, render

    loaded = load_model(model_spec)
    model, processor = loaded.model, loaded.processor
    voice = load_tts("espeak")
    recognizer = WhisperRecognizer(judge)
    rows = []
    for question in questions:
        wave = render(voice, question, processor.sampling_rate)
        batch = processor(text=build_prompt(), audio=wave, sampling_rate=processor.sampling_rate)
        with torch.inference_mode():
            settings = {} if repetition_penalty is None else {"thinker_repetition_penalty": repetition_penalty}
            reply = model.generate(**batch, thinker_max_new_tokens=max_new_tokens, **settings)
        text = processor.decode(reply.sequences[0], skip_special_tokens=True).strip()
        heard = recognizer.transcribe(reply.waveforms[0], reply.sampling_rate)
        rows.append({"question": question, "reply": text, "heard": heard,
                     "wer": recognizer.word_error_rate([text], [heard])})
    return {
        "model": loaded.description,
        "judge": recognizer.describe(),
        "thinker_repetition_penalty": repetition_penalty,
        "wer": recognizer.word_error_rate([r["reply"] for r in rows], [r["heard"] for r in rows]),
        "replies": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/tiny-lyra", help="checkpoint folder, Hub id or preset")
    parser.add_argument("--judge", default=None, help="Whisper id or folder (default: Whisper base, offline copy)")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="the thinker's repetition penalty (default: the checkpoint's own setting)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = spoken_replies(args.model, judge=args.judge, repetition_penalty=args.repetition_penalty)
    for row in results["replies"]:
        print(f"{row['wer']:.2f}  {row['reply']!r} -> heard {row['heard']!r}")
    print(f"WER of the spoken replies against their text: {results['wer']:.3f} ({results['judge']})")
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
