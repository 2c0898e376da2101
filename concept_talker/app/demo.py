"""`concept-talker demo`: the tutor in a browser page (Gradio).

    concept-talker demo [--model DIR_OR_HUB_ID] [--host 127.0.0.1] [--port 7860]

A person records a question from the microphone or uploads a file, may type an instruction ("Speak slowly.",
"Repeat after me.") and give a 1-5 s reference voice, and hears the reply as it streams, with the reply text, what
the model heard (its own transcript of the question) and the timings. The page says which model is loaded; with no
`--model` it is the embedded default, offline. Turns are queued and answered one at a time, each to its own page.

`build_demo(model_dir)` returns the `gr.Blocks`, so a Hugging Face Space can run it as its `app.py` (see `app.py`
at the repository root). Loading the model and answering a turn are `chat`'s helpers (`concept_talker/app/chat.py`).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading

import numpy as np

from concept_talker.app.chat import (
    answer,
    check_question,
    describe_timings,
    load_chat_model,
    reply_settings,
    reply_text,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry, no version check

logger = logging.getLogger(__name__)

INSTRUCTION_EXAMPLES = ["Speak slowly.", "Speak quickly.", "Repeat after me."]
TRANSCRIPT_MAX_TOKENS = 48


class InputProblem(ValueError):
    """Something about what the person gave that the page tells them, instead of answering."""


def read_clip(path: str | None, what: str) -> tuple[np.ndarray, int]:
    """An uploaded or recorded clip as (float32 samples, rate in Hz); `InputProblem` if it cannot be read."""
    from modeling_concept_talker.audio import load_audio

    if not path:
        raise InputProblem(f"No {what}: record one with the microphone or upload an audio file, then press Answer.")
    try:
        audio, rate = load_audio(path)
    except (ValueError, OSError) as err:
        raise InputProblem(f"Could not read the {what} as audio: upload a WAV, FLAC, OGG or MP3 file.") from err
    return audio, rate


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as 16-bit PCM (Gradio rescales float audio to its peak; int16 it plays as is)."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """16-bit mono WAV bytes of float samples in [-1, 1] (what a streaming `gr.Audio` plays, chunk by chunk)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, to_int16(samples), sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class Tutor:
    """The loaded model and one spoken turn of the page at a time.

    Args:
        model_dir: checkpoint folder, Hub id or preset name; None for `chat`'s default (the embedded model).
        tokenizer, lyra_dir: as `concept-talker chat`'s options.
        settings: `reply_settings` keywords (`max_new_tokens`, `max_audio_seconds`, ...).
    """

    def __init__(self, model_dir: str | None = None, tokenizer: str | None = None, lyra_dir: str | None = None,
                 **settings):
        loaded, self.note = load_chat_model(model_dir, tokenizer=tokenizer, lyra_dir=lyra_dir)
        self.model, self.processor = loaded.model, loaded.processor
        self.description, self.trained = loaded.description, loaded.trained
        self.settings = reply_settings(self.model, **settings)
        self.max_question_seconds = float(self.model.config.max_audio_seconds)
        # One turn uses the model at a time. The page's queue already runs one turn at once; this also covers a turn
        # whose page went away, which finishes its (short) reply in the background while the next one starts.
        self.lock = threading.Lock()

    def model_markdown(self) -> str:
        from concept_talker.loading import REPO_ROOT

        description = self.description.replace(f"{REPO_ROOT}{os.sep}", "")  # checkpoints/tiny-lyra, not /home/...
        lines = [f"**Model loaded:** {description}."]
        if self.note:
            lines.append(f"**Note:** {self.note}.")
        return "\n\n".join(lines)

    def transcript(self, audio: np.ndarray, rate: int) -> str:
        """What the model heard: its greedy answer to the question's audio with the alignment prompt ("Transcribe
        the audio."), as the evaluation's transcript CER reads it. A model with random weights has none."""
        import torch

        from modeling_concept_talker import build_prompt
        from modeling_concept_talker.generation import greedy_text
        from concept_talker.data.collators import TRANSCRIBE_TASK

        if not self.trained:
            return "(none: the model's weights are random)"
        try:
            batch = self.processor(text=build_prompt(task=TRANSCRIBE_TASK), audio=audio, sampling_rate=rate)
            with self.lock, torch.inference_mode():
                tokens = greedy_text(self.model, batch, TRANSCRIPT_MAX_TOKENS)[0]
        except Exception as err:  # noqa: BLE001 - the reply stands without it
            logger.exception("the transcript of the question failed")
            return f"(not available: {type(err).__name__}: {err})"
        return self.processor.decode(tokens, skip_special_tokens=True).strip()

    def respond(self, question: str | None, instruction: str | None, voice: str | None, stream_audio: bool = True):
        """The page's turn: yields `(reply audio, reply text, transcript, timings, status)` as the reply grows.

        With `stream_audio`, the reply audio of each update is the next chunk (16-bit WAV bytes), for a streaming
        `gr.Audio`; without, it is None until the last update, which holds the whole reply as `(rate, int16 samples)`.
        Bad input (no audio, silence, an unreadable or too long file, a bad voice clip or instruction) gives one
        update whose status says what to do, and a toast; nothing raises to the page.
        """
        import gradio as gr

        try:
            yield from self._respond(question, (instruction or "").strip() or None, voice, stream_audio)
        except InputProblem as err:
            gr.Warning(str(err))
            yield None, "", "", "", f"⚠️ {err}"
        except Exception as err:  # noqa: BLE001 - the page shows a message, the log keeps the traceback
            logger.exception("the demo's turn failed")
            message = f"Something went wrong while answering ({type(err).__name__}: {err}). Try another recording."
            gr.Warning(message)
            yield None, "", "", "", f"⚠️ {message}"

    def _respond(self, question, instruction, voice_path, stream_audio):
        from modeling_concept_talker.generation import AudioIteratorStreamer
        from modeling_concept_talker.processing_concept_talker import check_instruction

        audio, rate = read_clip(question, "question")
        voice = voice_rate = None
        try:
            check_question(audio, rate, self.max_question_seconds)
            check_instruction(instruction)
            if voice_path:
                voice, voice_rate = read_clip(voice_path, "reference voice")
                self.processor.prepare_voice(voice, voice_rate, name="reference voice")  # checks the clip
        except ValueError as err:
            if isinstance(err, InputProblem):
                raise
            raise InputProblem(str(err)) from err
        yield None, "", "", "", "Answering..."

        streamer = AudioIteratorStreamer(timeout=60.0)
        outcome = {}

        def work():
            try:
                with self.lock:
                    outcome["reply"] = answer(self.model, self.processor, audio, rate, instruction, voice, voice_rate,
                                              stream=True, streamer=streamer, **self.settings)
            except BaseException as err:  # noqa: BLE001 - handed to the page's thread
                outcome["error"] = err
            finally:
                streamer.end()

        worker = threading.Thread(target=work, name="concept-talker-demo-turn", daemon=True)
        worker.start()
        try:
            for chunk in streamer:
                partial = self.processor.decode(chunk.text_tokens, skip_special_tokens=True).strip()
                sound = wav_bytes(chunk.samples, chunk.sampling_rate) if stream_audio else None
                yield sound, partial, "", "", "Speaking..."
        finally:
            streamer.close()  # the page went away: generation stops at its next chunk
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        reply = outcome["reply"]
        if reply is None:
            raise RuntimeError("the reply stopped before its end")
        timings = reply.timings
        text = reply_text(self.processor, reply)
        heard = self.transcript(audio, rate)
        summary = (f"{describe_timings(timings)}; {timings['audio_s']:.2f} s of reply audio "
                   f"for a {len(audio) / rate:.2f} s question")
        summary = summary[0].upper() + summary[1:]
        whole = None if stream_audio else (reply.sampling_rate, to_int16(reply.waveforms[0]))
        yield whole, text, heard, summary, "Done."


def streaming_output_available() -> bool:
    """A streaming `gr.Audio` output encodes its chunks with ffmpeg; without it the reply plays when complete."""
    return shutil.which("ffmpeg") is not None


def build_demo(model_dir: str | None = None, *, tokenizer: str | None = None, lyra_dir: str | None = None,
               max_new_tokens: int = 64, max_audio_seconds: float = 20.0, tutor: Tutor | None = None):
    """The tutor page: a `gr.Blocks` to `launch()` (or for a Space to serve as its `app.py`).

    Args:
        model_dir: checkpoint folder, Hub id or preset name; None for the embedded default model.
        tokenizer, lyra_dir, max_new_tokens, max_audio_seconds: as `concept-talker demo`'s options.
        tutor: an already loaded `Tutor` (the other arguments are then ignored).
    """
    import gradio as gr

    tutor = tutor or Tutor(model_dir, tokenizer=tokenizer, lyra_dir=lyra_dir, max_new_tokens=max_new_tokens,
                           max_audio_seconds=max_audio_seconds)
    streaming = streaming_output_available()
    with gr.Blocks(title="Concept-Talker tutor", analytics_enabled=False) as demo:
        gr.Markdown("# Concept-Talker: a spoken English tutor\n"
                    "Ask a question out loud (or upload a recording) and hear the tutor answer.")
        gr.Markdown(tutor.model_markdown(), elem_id="model-info")
        with gr.Row():
            with gr.Column():
                question = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="question",
                                    label=f"Your question (record or upload, up to {tutor.max_question_seconds:g} s)")
                instruction = gr.Textbox(label="Instruction (optional)", elem_id="instruction",
                                         placeholder="Speak slowly.")
                gr.Examples([[text] for text in INSTRUCTION_EXAMPLES], inputs=[instruction], label="Instructions")
                voice = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="voice",
                                 label="Reference voice (optional: 1-5 s of the voice to answer in)")
                button = gr.Button("Answer", variant="primary", elem_id="answer")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                reply_audio = gr.Audio(label="Reply" if streaming else "Reply (plays when complete: no ffmpeg here)",
                                       streaming=streaming, autoplay=True, interactive=False, elem_id="reply-audio")
                text = gr.Textbox(label="Reply text", elem_id="reply-text", interactive=False)
                heard = gr.Textbox(label="What the model heard (its transcript of your question)", elem_id="heard",
                                   interactive=False)
                timings = gr.Textbox(label="Timings", elem_id="timings", interactive=False)

        def respond(question, instruction, voice):
            yield from tutor.respond(question, instruction, voice, stream_audio=streaming)

        # One model, one turn at a time: the queue answers each page in its turn, with its own reply.
        button.click(respond, inputs=[question, instruction, voice], outputs=[reply_audio, text, heard, timings, status],
                     api_name="answer", concurrency_limit=1)
    demo.queue(max_size=32)
    return demo
