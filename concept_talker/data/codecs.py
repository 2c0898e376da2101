"""Find the audio codec a command asks for, and describe it so data made with one codec is never read with another.

    codec = resolve_codec("tiny")                              # a preset's codec (random weights, always the same)
    codec = resolve_codec("../shared/assets/lyra-soundstream", num_codebooks=16)   # Lyra SoundStream TFLite files
    codec = resolve_codec("checkpoints/my-tutor")              # the codec inside a Concept-Talker checkpoint
    codec = resolve_codec("facebook/encodec_24khz", num_codebooks=8)   # EnCodec or Mimi: a Hub id or local folder
    codec = resolve_codec("data/tutor-synth")                  # the codec a synthetic dataset was made with
    info = describe_codec(codec, "tiny")                       # type, rates, codebooks, source, weight fingerprint
    check_codec_matches(info, other_codec)                     # ValueError unless `other_codec` makes the same codes
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from modeling_concept_talker.codec import AudioCodec, EncodecCodec, MimiCodec, build_codec
from modeling_concept_talker.lyra import LYRA_FILES, is_lyra_model_dir

PRESET_CODEC_SEED = 0  # a preset's random codec is built under this seed, so every process gets the same weights
# EnCodec 8 = 6 kbps; Mimi 8; Lyra 8 = 1.6 kbps, as the tiny-lyra preset (on espeak speech the offline recogniser
# reaches its ceiling there, see ECOSYSTEM.md).
DEFAULT_NUM_CODEBOOKS = {"encodec": 8, "mimi": 8, "lyra_soundstream": 8}
SYNTH_INFO_FILE = "synth_info.json"


def resolve_codec(spec, num_codebooks: int | None = None) -> AudioCodec:
    """The `AudioCodec` named by `spec`, frozen and in eval mode.

    Args:
        spec: one of
            - an `AudioCodec` (returned as is);
            - a preset name (`tiny`, `0.5b`) or preset JSON file: that preset's codec with random weights, built
              under a fixed seed so that every process (and every later run) gets the same weights;
            - a folder holding the Lyra SoundStream TFLite files (`soundstream_encoder.tflite`, `quantizer.tflite`,
              `lyragan.tflite`);
            - a Concept-Talker checkpoint folder (`config.json` with `model_type: concept_talker`): its codec;
            - a dataset folder written by `concept-talker synth` (`synth_info.json`): the codec it was made with;
            - an EnCodec or Mimi model: a local folder or a Hub id (`facebook/encodec_24khz`, `kyutai/mimi`).
        num_codebooks: residual codebooks to use (default: the preset's or checkpoint's; EnCodec 8 = 6 kbps,
            Mimi 8, Lyra 8 = 1.6 kbps).
    """
    if isinstance(spec, AudioCodec):
        if num_codebooks is not None and num_codebooks != spec.num_codebooks:
            raise ValueError(f"The codec given uses {spec.num_codebooks} codebooks, not num_codebooks={num_codebooks}.")
        return spec.eval()
    spec = str(spec)
    codec = _resolve(spec, num_codebooks)
    return codec.eval().requires_grad_(False)


def _resolve(spec: str, num_codebooks: int | None) -> AudioCodec:
    from configuration import load_preset, preset_names

    if spec in preset_names() or (spec.endswith(".json") and os.path.isfile(spec)):
        overrides = {} if num_codebooks is None else {"codec_num_codebooks": num_codebooks}
        config = load_preset(spec, **overrides)
        if config.codec_type == "lyra_soundstream" and not config.codec_config.model_dir:
            raise ValueError(
                f"The {spec!r} preset's codec is Lyra SoundStream, whose model files are not part of the preset: pass "
                f"the folder holding {', '.join(LYRA_FILES)} as the codec instead (e.g. --codec "
                f"../shared/assets/lyra-soundstream --num-codebooks {config.codec_num_codebooks})."
            )
        # Seeded and on one thread: the random init's reductions (weight norm) round differently on two threads than
        # on one, which made a dataset synthesised at one thread count refuse the codec of a run at another.
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PRESET_CODEC_SEED)
            torch.set_num_threads(1)
            try:
                return build_codec(config)
            finally:
                torch.set_num_threads(threads)
    if os.path.isdir(spec):
        if is_lyra_model_dir(spec):
            return _lyra_codec(spec, num_codebooks)
        if os.path.isfile(os.path.join(spec, SYNTH_INFO_FILE)):
            return _dataset_codec(spec, num_codebooks)
        config_path = os.path.join(spec, "config.json")
        if not os.path.isfile(config_path):
            raise ValueError(
                f"{spec} is a folder but holds no codec: expected the Lyra files ({', '.join(LYRA_FILES)}), a "
                "config.json (a Concept-Talker checkpoint, or an EnCodec or Mimi model), or a synthetic dataset."
            )
        with open(config_path) as f:
            model_type = json.load(f).get("model_type")
        if model_type == "concept_talker":
            return _checkpoint_codec(spec, num_codebooks)
        return _pretrained_codec(spec, num_codebooks)
    if os.path.exists(spec):
        raise ValueError(f"{spec} is a file, not a codec: pass a preset name, a model folder or a Hub id.")
    return _pretrained_codec(spec, num_codebooks)


def _check_num_codebooks(num_codebooks: int, maximum: int, what: str) -> int:
    if not 1 <= num_codebooks <= maximum:
        raise ValueError(f"num_codebooks={num_codebooks}, but {what} has {maximum} codebooks: choose 1 to {maximum}.")
    return num_codebooks


def _lyra_codec(folder: str, num_codebooks: int | None) -> AudioCodec:
    from modeling_concept_talker.configuration_concept_talker import LyraCodecConfig

    try:
        from modeling_concept_talker.lyra import LyraCodec
    except ImportError as err:
        raise ImportError(
            "This version of modeling_concept_talker has no LyraCodec; update the package to use the Lyra codec."
        ) from err
    num_codebooks = num_codebooks or DEFAULT_NUM_CODEBOOKS["lyra_soundstream"]
    config = LyraCodecConfig(model_dir=os.path.abspath(folder))
    _check_num_codebooks(num_codebooks, config.max_num_quantizers, "the Lyra codec")
    return LyraCodec(config, num_codebooks)


def _pretrained_codec(name_or_path: str, num_codebooks: int | None) -> AudioCodec:
    from transformers import AutoConfig, EncodecModel, MimiModel

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"Could not find the codec {name_or_path!r}: it is not a preset (tiny, 0.5b), not a local folder, and "
            f"loading it as a model failed ({type(err).__name__}: {str(err).splitlines()[0]}). Pass a preset name, a "
            "folder, or a Hub id such as facebook/encodec_24khz on a machine with Hub access."
        ) from err
    model_type = config.model_type
    if model_type not in ("encodec", "mimi"):
        raise ValueError(f"{name_or_path} holds a {model_type!r} model; the codec must be EnCodec, Mimi or Lyra.")
    num_codebooks = num_codebooks or DEFAULT_NUM_CODEBOOKS[model_type]
    _check_num_codebooks(num_codebooks, int(config.num_quantizers), name_or_path)
    if model_type == "encodec":
        codec = EncodecCodec(config, num_codebooks)
        codec.model = EncodecModel.from_pretrained(name_or_path)
    else:
        codec = MimiCodec(config, num_codebooks)
        codec.model = MimiModel.from_pretrained(name_or_path)
    return codec


def _checkpoint_codec(folder: str, num_codebooks: int | None) -> AudioCodec:
    """The codec of a saved Concept-Talker: built from its config, weights read from its safetensors (`codec.*`),
    or, for a trainable-only checkpoint that does not store them, from its `codec_name_or_path` (a relative folder
    is taken relative to the checkpoint). A Lyra codec comes from `codec_config.model_dir`."""
    from safetensors import safe_open

    from modeling_concept_talker import ConceptTalkerConfig

    config = ConceptTalkerConfig.from_pretrained(folder)
    if num_codebooks is not None and num_codebooks != config.codec_num_codebooks:
        raise ValueError(
            f"The checkpoint {folder} uses {config.codec_num_codebooks} codebooks (its talker predicts that many); "
            f"drop num_codebooks={num_codebooks} or pass the codec itself."
        )
    if config.codec_type == "lyra_soundstream":
        model_dir = config.codec_config.model_dir
        if not model_dir or not is_lyra_model_dir(model_dir):
            raise ValueError(
                f"The checkpoint {folder} uses the Lyra codec from {model_dir!r}, which is not on this machine: pass "
                f"the folder holding {', '.join(LYRA_FILES)} as the codec, with num_codebooks="
                f"{config.codec_num_codebooks}."
            )
        return _lyra_codec(model_dir, config.codec_num_codebooks)
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")]
    state = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key.startswith("codec."):
                    state[key[len("codec.") :]] = f.get_tensor(key)
    if not state:
        reference = config.codec_name_or_path
        if reference and not os.path.isabs(reference) and os.path.isdir(os.path.join(folder, reference)):
            reference = os.path.join(folder, reference)
        if reference:
            return resolve_codec(reference, config.codec_num_codebooks)
        raise ValueError(
            f"The checkpoint {folder} stores no codec weights and names no codec_name_or_path: pass the codec it was "
            "trained with instead."
        )
    codec = build_codec(config)
    codec.load_state_dict(state, strict=True)
    return codec


def _dataset_codec(folder: str, num_codebooks: int | None) -> AudioCodec:
    """The codec a synthetic dataset was made with, checked against the fingerprint it recorded."""
    with open(os.path.join(folder, SYNTH_INFO_FILE)) as f:
        recorded = json.load(f)["codec"]
    if num_codebooks is not None and num_codebooks != recorded["num_codebooks"]:
        raise ValueError(
            f"The dataset {folder} holds codes of {recorded['num_codebooks']} codebooks, not {num_codebooks}."
        )
    codec = resolve_codec(recorded["source"], recorded["num_codebooks"])
    check_codec_matches(recorded, codec)
    return codec


# ---------------------------------------------------------------------------------------------------------------
# Describing and comparing codecs
# ---------------------------------------------------------------------------------------------------------------


def codec_type(codec: AudioCodec) -> str:
    """`encodec`, `mimi` or `lyra_soundstream` (the config `model_type`); the class name for anything else."""
    names = {"EncodecCodec": "encodec", "MimiCodec": "mimi", "LyraCodec": "lyra_soundstream"}
    return names.get(type(codec).__name__, type(codec).__name__)


def codec_fingerprint(codec: AudioCodec, source: str | None = None) -> str:
    """SHA-256 of the codec's weights (tensor names, dtypes, shapes and bytes, in name order) and number of
    codebooks; for a codec without torch weights (Lyra), of its model files. Two codecs with the same fingerprint
    give the same codes."""
    digest = hashlib.sha256()
    digest.update(f"{codec_type(codec)}|{codec.num_codebooks}|{codec.codebook_size}|{codec.hop_length}".encode())
    state = codec.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    if not state:
        folder = source if source and is_lyra_model_dir(source) else _model_dir(codec)
        if folder is None:
            return "unknown"
        for name in LYRA_FILES:
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(f.read())
    return "sha256:" + digest.hexdigest()


def _model_dir(codec: AudioCodec) -> str | None:
    for owner in (codec, getattr(codec, "config", None)):
        folder = getattr(owner, "model_dir", None)
        if folder and is_lyra_model_dir(folder):
            return str(folder)
    return None


def describe_codec(codec: AudioCodec, source) -> dict:
    """What a dataset records about the codec that made its codes.

    Returns a dict: `type`, `source` (the spec it was resolved from: preset name, folder or Hub id, made absolute
    for folders), `sampling_rate` (Hz), `frame_rate` (frames/s), `hop_length` (samples/frame), `num_codebooks`,
    `codebook_size`, `fingerprint` (see `codec_fingerprint`), and `random_weights` (a preset's random codec).
    """
    from configuration import preset_names

    source = str(source) if not isinstance(source, AudioCodec) else type(source).__name__
    # A preset's codec has random weights, except Lyra's (a real model, and never a preset's codec here).
    is_random = (source in preset_names() or source.endswith(".json")) and codec_type(codec) != "lyra_soundstream"
    if os.path.exists(source):
        source = os.path.abspath(source)
    return {
        "type": codec_type(codec),
        "source": source,
        "sampling_rate": int(codec.sampling_rate),
        "frame_rate": float(codec.frame_rate),
        "hop_length": int(codec.hop_length),
        "num_codebooks": int(codec.num_codebooks),
        "codebook_size": int(codec.codebook_size),
        "fingerprint": codec_fingerprint(codec, source),
        "random_weights": bool(is_random),
    }


def check_codec_matches(recorded: dict, codec: AudioCodec, what: str = "this dataset") -> None:
    """Raise a `ValueError` unless `codec` is the codec described by `recorded` (from `describe_codec`)."""
    current = {
        "type": codec_type(codec),
        "sampling_rate": int(codec.sampling_rate),
        "hop_length": int(codec.hop_length),
        "num_codebooks": int(codec.num_codebooks),
        "codebook_size": int(codec.codebook_size),
    }
    different = [f"{k}: {recorded.get(k)} vs {v}" for k, v in current.items() if recorded.get(k) != v]
    fingerprint = recorded.get("fingerprint")
    if not different and fingerprint and fingerprint != "unknown":
        current_fingerprint = codec_fingerprint(codec, recorded.get("source"))
        if current_fingerprint != "unknown" and current_fingerprint != fingerprint:
            different.append("weights differ (fingerprint)")
    if different:
        raise ValueError(
            f"The codes in {what} were made by another codec ({recorded.get('type')} from "
            f"{recorded.get('source')!r}); they differ in {'; '.join(different)}. Use that codec "
            f"(resolve_codec({recorded.get('source')!r})) or rebuild the data with yours."
        )


# ---------------------------------------------------------------------------------------------------------------
# The ear: a Whisper model's encoder, whose frames a dataset stores for each question
# ---------------------------------------------------------------------------------------------------------------


def resolve_ear(spec: str, context_windows: int = 0, window_seconds: float = 1.0):
    """A `WhisperEar` with the encoder weights of the Whisper model `spec` (Hub id or folder), frozen.

    `context_windows` and `window_seconds` say how it encodes a clip (see `modeling_concept_talker.ear`); they must
    be those of the model that will read the frames.
    """
    from transformers import AutoConfig, WhisperModel

    from modeling_concept_talker.ear import WhisperEar

    try:
        config = AutoConfig.from_pretrained(spec)
    except OSError as err:
        raise ValueError(f"Could not load the ear {spec!r}: {err}. Give a Whisper model's folder or Hub id "
                         "(offline here: ../shared/assets/whisper-base).") from err
    if config.model_type != "whisper":
        raise ValueError(f"The ear {spec!r} is a {config.model_type!r} model; it must be a Whisper model.")
    ear = WhisperEar(config, window_seconds, context_windows)
    ear.encoder.load_state_dict(WhisperModel.from_pretrained(spec, dtype=torch.float32).get_encoder().state_dict())
    return ear.eval().requires_grad_(False)


def ear_fingerprint(ear) -> str:
    """SHA-256 of the ear's encoder weights and of how it encodes (context windows, window length)."""
    digest = hashlib.sha256()
    digest.update(f"whisper|{ear.context_windows}|{ear.window_samples}".encode())
    state = ear.encoder.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().float().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def describe_ear(ear, source) -> dict:
    """What a dataset records about the ear whose frames it stores: `type`, `source`, `width`, `frame_rate`,
    `context_windows`, `window_seconds`, `fingerprint`."""
    source = str(source)
    if os.path.exists(source):
        source = os.path.abspath(source)
    return {
        "type": "whisper",
        "source": source,
        "width": int(ear.feature_size),
        "frame_rate": float(ear.frame_rate),
        "context_windows": int(ear.context_windows),
        "window_seconds": ear.window_samples / ear.sampling_rate,
        "fingerprint": ear_fingerprint(ear),
    }


def check_ear_matches(recorded: dict | None, model, what: str = "this dataset") -> None:
    """Raise a `ValueError` unless the ear frames of `what` (described by `recorded`, from `describe_ear`; None
    when it stores none) are what `model`'s ear makes."""
    if model.ear is None:
        return  # the model hears through its codec: the dataset's codes are checked with the codec
    if recorded is None:
        raise ValueError(
            f"{what} stores no ear frames (question_features), but the model hears through Whisper's encoder: "
            "rebuild it with concept-talker synth --ear <the model's Whisper> (or train a model without an ear)."
        )
    current = {"width": model.ear.feature_size, "context_windows": model.ear.context_windows,
               "window_seconds": model.ear.window_samples / model.ear.sampling_rate}
    different = [f"{k}: {recorded.get(k)} vs {v}" for k, v in current.items() if recorded.get(k) != v]
    if not different and recorded.get("fingerprint") != ear_fingerprint(model.ear):
        different.append("encoder weights differ (fingerprint)")
    if different:
        raise ValueError(
            f"The ear frames in {what} were made by another ear ({recorded.get('source')!r}); they differ in "
            f"{'; '.join(different)}. Load the model with that Whisper (ear_name_or_path=...) or rebuild the data."
        )


__all__ = ["check_codec_matches", "check_ear_matches", "codec_fingerprint", "codec_type", "describe_codec",
           "describe_ear", "ear_fingerprint", "resolve_codec", "resolve_ear"]
