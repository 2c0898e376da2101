"""The `speech-to-speech` pipeline: a spoken question in, the tutor's spoken reply (audio and text) out.

    from transformers import pipeline

    tutor = pipeline("speech-to-speech", model="ORG/NAME", trust_remote_code=True)
    reply = tutor("question.wav", instruction="Speak slowly.", thinker_max_new_tokens=64)
    reply["text"], reply["audio"], reply["sampling_rate"]   # str, float32 [samples], Hz

This file ships as remote code next to the weights: `save_pretrained` writes `custom_pipelines` into config.json, which
tells `pipeline(..., trust_remote_code=True)` to load `ConceptTalkerPipeline` from here, so it works where
concept-talker is not installed. transformers has no built-in speech-to-speech task; a custom task may take any name
that is not a built-in one, and "speech-to-speech" says what it does.
"""

from __future__ import annotations

import io
import os
from dataclasses import fields

import numpy as np
import torch
from transformers import Pipeline

from .generation import SpokenGenerationConfig
from .processing_concept_talker import DEFAULT_SYSTEM_PROMPT, build_prompt, warn_if_unfamiliar_instruction

PIPELINE_TASK = "speech-to-speech"
GENERATION_SETTINGS = frozenset(f.name for f in fields(SpokenGenerationConfig))


def custom_pipelines_entry() -> dict:
    """What a checkpoint's config.json holds under `custom_pipelines` so that `pipeline()` finds this class."""
    return {
        PIPELINE_TASK: {
            "impl": f"{__name__.rpartition('.')[-1]}.ConceptTalkerPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }


def read_audio_input(inputs, sampling_rate: int | None = None) -> tuple[object, int]:
    """The pipeline's input as (samples, rate in Hz).

    Accepts a path to an audio file (WAV, FLAC, OGG), the bytes of one, a numpy array or torch tensor with
    `sampling_rate`, or a dict `{"array": samples, "sampling_rate": rate}` (`"raw"` is read as `"array"`, and a
    `"path"` alone is read from disk), as transformers' audio pipelines and `datasets` give them.
    """
    if isinstance(inputs, dict):
        known = {"array", "raw", "sampling_rate", "path"}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise ValueError(
                f"The audio dict has unexpected key(s) {unknown}: pass {{'array': samples, 'sampling_rate': rate}}."
            )
        array = inputs.get("array", inputs.get("raw"))
        if array is None:
            if inputs.get("path"):
                return read_audio_input(inputs["path"])
            raise ValueError("The audio dict has no samples: pass {'array': samples, 'sampling_rate': rate}.")
        rate = inputs.get("sampling_rate", sampling_rate)
        if rate is None:
            raise ValueError("The audio dict has no 'sampling_rate': add the rate of the samples in Hz, e.g. 16000.")
        return array, rate
    if isinstance(inputs, str | os.PathLike):
        path = os.fspath(inputs)
        if not os.path.isfile(path):
            raise ValueError(f"No such audio file: {path!r}. Pass a WAV/FLAC file, or samples with sampling_rate=...")
        return _read_file(path)
    if isinstance(inputs, bytes | bytearray):
        return _read_file(io.BytesIO(bytes(inputs)))
    if isinstance(inputs, np.ndarray | torch.Tensor):
        if sampling_rate is None:
            raise ValueError(
                "Audio samples need their rate: call tutor(samples, sampling_rate=16000), or pass "
                "{'array': samples, 'sampling_rate': 16000}."
            )
        return inputs, sampling_rate
    raise TypeError(
        f"Cannot read audio from a {type(inputs).__name__}: pass a file path, the bytes of an audio file, a numpy "
        "array with sampling_rate=..., or {'array': samples, 'sampling_rate': rate}."
    )


def _read_file(source) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as err:
        raise ImportError(
            "Reading audio files needs soundfile (pip install soundfile); or pass the samples as a numpy array "
            "with sampling_rate=..."
        ) from err
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=False)
    except RuntimeError as err:
        name = source if isinstance(source, str) else "the given bytes"
        raise ValueError(f"Could not read {name!r} as audio ({err}): pass a WAV, FLAC or OGG file.") from err
    return data, int(rate)


class ConceptTalkerPipeline(Pipeline):
    """Answer a spoken question with a spoken reply.

    Call it with one input (or a list of inputs, answered one by one):

    Args:
        inputs: a path to an audio file, its bytes, a numpy array / torch tensor (with `sampling_rate`), or a dict
            `{"array": samples, "sampling_rate": rate}`. Any rate, mono or stereo: the processor resamples to the
            codec's rate.
        sampling_rate (`int`, *optional*): rate of array inputs, Hz.
        instruction (`str`, *optional*): a tutor instruction given as text with the audio ("Speak slowly.").
        system_prompt (`str`, *optional*): the tutor's standing instruction.
        history (`list[tuple[str, str]]`, *optional*): earlier (user text, assistant text) turns.
        generate_kwargs (`dict`, *optional*), or the same settings as keywords: the model's spoken-generation
            settings (`thinker_max_new_tokens`, `thinker_do_sample`, `talker_temperature`, `max_audio_seconds`,
            `seed`, ...; see `SpokenGenerationConfig`).
        return_timings (`bool`): also return the reply's timings (first audio, total, real-time factor).

    Returns:
        `{"text": str, "audio": float32 numpy [samples], "sampling_rate": int}` (+ `"timings"`).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def _sanitize_parameters(
        self,
        sampling_rate=None,
        instruction=None,
        system_prompt=None,
        history=None,
        generate_kwargs=None,
        return_timings=None,
        **settings,
    ):
        preprocess, forward, postprocess = {}, {}, {}
        for name, value in (("sampling_rate", sampling_rate), ("instruction", instruction),
                            ("system_prompt", system_prompt), ("history", history)):
            if value is not None:
                preprocess[name] = value
        generation = {**(generate_kwargs or {}), **settings}
        unknown = sorted(set(generation) - GENERATION_SETTINGS)
        if unknown:
            raise TypeError(
                f"Unknown argument(s) {unknown} for the speech-to-speech pipeline. It takes sampling_rate, "
                f"instruction, system_prompt, history, return_timings and the generation settings "
                f"{', '.join(sorted(GENERATION_SETTINGS))}."
            )
        if generation:
            forward["generate_kwargs"] = generation
        if return_timings is not None:
            postprocess["return_timings"] = bool(return_timings)
        return preprocess, forward, postprocess

    def preprocess(self, inputs, sampling_rate=None, instruction=None, system_prompt=None, history=None):
        audio, rate = read_audio_input(inputs, sampling_rate)
        prompt = build_prompt(instruction, history=history, system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT)
        warn_if_unfamiliar_instruction(self.model.config, instruction)
        return self.processor(text=prompt, audio=audio, sampling_rate=rate)

    def _forward(self, model_inputs, generate_kwargs=None):
        reply = self.model.generate(**model_inputs, tokenizer=self.processor.tokenizer, **(generate_kwargs or {}))
        return {
            "sequences": reply.sequences,
            "audio": np.asarray(reply.waveforms[0], dtype=np.float32),
            "sampling_rate": int(reply.sampling_rate),
            "timings": dict(reply.timings),
        }

    def postprocess(self, model_outputs, return_timings=False):
        text = self.processor.decode(model_outputs["sequences"][0], skip_special_tokens=True).strip()
        output = {"text": text, "audio": model_outputs["audio"], "sampling_rate": model_outputs["sampling_rate"]}
        if return_timings:
            output["timings"] = model_outputs["timings"]
        return output


def register_pipeline() -> None:
    """Make `pipeline("speech-to-speech", model=<model object>, processor=...)` work in this process."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_TASK, pipeline_class=ConceptTalkerPipeline, pt_model=AutoModel, type="multimodal"
        )


register_pipeline()

__all__ = ["ConceptTalkerPipeline", "PIPELINE_TASK", "custom_pipelines_entry", "read_audio_input"]
