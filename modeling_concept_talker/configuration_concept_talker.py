"""Configuration of Concept-Talker: a composite config around a Qwen2 thinker and a neural audio codec.

The parts nest as in Qwen2.5-Omni: each role has its own config, stored inside the parent config.

    ConceptTalkerConfig
    ├── ear_config       WhisperConfig | None    the ear: a frozen pretrained speech encoder (None: the codec's
    │                                            own latents are the ear)
    ├── thinker_config   Qwen2Config             the LLM that reads concepts and writes the reply text
    ├── codec_config     EncodecConfig | MimiConfig | LyraCodecConfig
    │                                            frozen codec: audio <-> discrete codes [codebooks, frames]
    ├── adapter_config   ConceptAdapterConfig    Perceiver: the ear's frames -> a few concept vectors per window
    └── talker_config    TalkerConfig            small causal transformer: the reply's phonemes on a timeline and
                                                 the thinker's states -> audio codes
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .phonemes import DEFAULT_SYMBOLS

# Bumped whenever a saved config can no longer be read by this code without a change of meaning.
CONFIG_FORMAT_VERSION = 4
# The concept-talker release that first wrote each format version (for error messages).
CONFIG_FORMAT_RELEASES = {1: "0.1.0", 2: "0.2.0", 3: "0.3.0", 4: "0.4.0"}
# When the format changes, CONFIG_MIGRATIONS[v] turns a saved version-v config dict into a version v + 1 dict, so that
# older checkpoints keep loading; a version with no path up to CONFIG_FORMAT_VERSION fails with a message saying which
# release reads it.


def _v1_voice_from_content_concepts(config_dict: dict) -> dict:
    """Version 2 reads a reference voice with style queries of its own; version-1 checkpoints pooled the content
    concepts and have no style queries, so they keep doing that."""
    config_dict["adapter_config"] = {**config_dict.get("adapter_config", {}), "style_queries": False}
    return config_dict


def _v3_talker_decoder_weights(config_dict: dict) -> dict:
    """Version 4's talker decoder is transformers' Llama decoder; version-3 checkpoints hold the talker's own decoder
    (fused [q; k; v] and [gate; up] matrices), whose weights `checkpointing.split_fused_talker_weights` renames and
    splits when they load. The config reads the same: nothing changes here. (The version says it to older code, which
    refuses a version-4 checkpoint instead of loading it with a random talker decoder.)"""
    return config_dict


# Version 3 talkers read the reply's phonemes on a timeline; a version-2 talker (read R thinker states, write W
# frames) has other weights and other inputs, so version 2 has no migration: its error names the release that reads it.
CONFIG_MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_voice_from_content_concepts,
                                                        3: _v3_talker_decoder_weights}


class ConfigFormatError(ValueError):
    """A saved config whose format version this code cannot read; the message says what can."""


def migrate_config_dict(config_dict: dict) -> dict:
    """Bring a saved `ConceptTalkerConfig` dict to `CONFIG_FORMAT_VERSION`, or raise a `ConfigFormatError`.

    A dict without `config_format_version` was not written by `save_pretrained` (a preset, or written by hand) and is
    read as the current format.
    """
    version = config_dict.get("config_format_version", CONFIG_FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigFormatError(
            f"config_format_version must be a whole number, got {version!r}: the config.json was edited or damaged; "
            f"this code writes version {CONFIG_FORMAT_VERSION}."
        )
    if version > CONFIG_FORMAT_VERSION:
        raise ConfigFormatError(
            f"This checkpoint's config has format version {version}, but this code reads versions up to "
            f"{CONFIG_FORMAT_VERSION}. Load it with the code saved next to its weights "
            "(AutoModel.from_pretrained(..., trust_remote_code=True)), or upgrade: pip install -U concept-talker."
        )
    if version == CONFIG_FORMAT_VERSION:
        return config_dict
    config_dict = dict(config_dict)
    start = version
    while version < CONFIG_FORMAT_VERSION:
        if version not in CONFIG_MIGRATIONS:
            release = CONFIG_FORMAT_RELEASES.get(start)
            needs = f"concept-talker=={release}" if release else f"a concept-talker release that writes format {start}"
            raise ConfigFormatError(
                f"This checkpoint's config has format version {start}, which this code (format "
                f"{CONFIG_FORMAT_VERSION}) cannot convert: there is no migration from version {version}. Load it with "
                f"{needs} (pip install '{needs}'), or with the code saved next to its weights "
                "(AutoModel.from_pretrained(..., trust_remote_code=True))."
            )
        config_dict = CONFIG_MIGRATIONS[version](dict(config_dict))
        version += 1
        config_dict["config_format_version"] = version
    return config_dict

AUDIO_START_TOKEN = "<|audio_start|>"
AUDIO_TOKEN = "<|audio_pad|>"
AUDIO_END_TOKEN = "<|audio_end|>"
AUDIO_SPECIAL_TOKENS = (AUDIO_START_TOKEN, AUDIO_TOKEN, AUDIO_END_TOKEN)

# How the concept adapter's concepts are read as tokens (`ConceptAdapterConfig.readout`).
CONCEPT_READOUTS = ("thinker", "sound")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The thinker built when a config gives none: the `tiny` preset's (2 layers x 64, Qwen2.5's vocabulary, ~10M
# parameters), so that a config missing its thinker can never build an LLM that exhausts the machine's memory
# (Qwen2Config's own defaults are a 4096-wide, 32-layer model of about 7B parameters plus its embeddings).
SMALL_THINKER_DEFAULTS = {
    "vocab_size": 151936,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
}
# The thinker architectures Concept-Talker runs: its tokenizer (Qwen2.5's, with the audio tokens at 151665-151667),
# the fast decode runner and LoRA targets are Qwen2's.
THINKER_MODEL_TYPES = ("qwen2",)


# The fields of the parts' configs that `ConceptTalkerConfig` fills in from the other parts (and checks against them).
SIZES_FROM_OTHER_PARTS = {
    "adapter_config": ("feature_size", "window_frames", "thinker_hidden_size", "num_style_concepts",
                       "voice_feature_size", "voice_window_frames"),
    "talker_config": ("thinker_hidden_size", "num_codebooks", "codebook_size"),
}


class ConceptAdapterConfig(PreTrainedConfig):
    r"""The concept adapter ([`ConceptTalkerAdapterModel`]): a Perceiver that reads fixed windows of the ear's frames.

    Each window of `window_seconds` of audio (the ear's frames: Whisper encoder states, or a codec's quantised
    latents) is read by `concepts_per_window` queries through `num_layers` blocks of cross-attention (queries ->
    frames), self-attention (queries <-> queries) and an MLP. Each query starts from the window's frames pooled over
    its own share of the window (so the i-th concept is about the i-th stretch of time) plus a learnt vector. Windows
    are independent, so the adapter streams: a window's concepts are final as soon as the window is complete.

    The sizes it takes from the other parts are fields too, filled in by [`ConceptTalkerConfig`] when left unset
    (and checked against those parts when set), so that the adapter builds from this config alone.

    Args:
        window_seconds (`float`): window length in seconds; `window_seconds * ear frame rate` must be whole.
        concepts_per_window (`int`): concept tokens per window (4 per 1 s window = 4 concepts/s).
        hidden_size (`int`): width of the Perceiver.
        num_layers (`int`), num_attention_heads (`int`), intermediate_size (`int`): Perceiver depth and width.
        dropout (`float`): dropout inside the Perceiver blocks.
        style_queries (`bool`): read a reference voice with `talker_config.num_style_concepts` queries of its own
            (windows averaged); False pools the content concepts instead (how version-1 checkpoints read a voice).
        feature_size (`int`, *optional*): width of the ear's frames (Whisper base 512; a codec's quantised latents:
            EnCodec 128, Mimi 512, Lyra 64). Filled in from the ear, or the codec when it is the ear.
        window_frames (`int`, *optional*): the ear's frames in one window (`window_seconds` x the ear's frame rate).
        thinker_hidden_size (`int`, *optional*): width of the concepts, the thinker's embedding width.
        num_style_concepts (`int`, *optional*): style queries (`talker_config.num_style_concepts`, or 0 when
            `style_queries` is False; 0: no style queries).
        voice_feature_size (`int`, *optional*): width of a reference voice's frames where they are not the ear's and
            get an input of their own (the codec's latents when the ear is a speech encoder, and there are style
            queries); 0: a voice is read through the speech input.
        voice_window_frames (`int`, *optional*): codec frames in one window (`window_seconds` x the codec's frame
            rate): a reference voice is read from its codec latents. Used where `voice_feature_size` > 0.
        readout (`str`): how a concept is read as a token. `"thinker"`: by its cosine with the thinker's token
            embeddings, and the thinker reads the concept itself. `"sound"`: by its cosine with a fixed table of how
            each token sounds (`phonemes.token_sound_table`, held by the adapter), and the thinker reads the embedding
            of the token it reads as (no gradient reaches the adapter from the thinker: it learns from its slots'
            tokens). A from-scratch thinker's embeddings carry nothing of a word's sound, so words heard rarely are
            read better by sound.
        sound_vocabulary_size (`int`): tokens in the sound table (set by `set_token_sounds`; 0 until then).
    """

    model_type = "concept_talker_adapter"

    window_seconds: float = 1.0
    concepts_per_window: int = 4
    hidden_size: int = 512
    num_layers: int = 2
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    style_queries: bool = True
    feature_size: int | None = None
    window_frames: int | None = None
    thinker_hidden_size: int | None = None
    num_style_concepts: int | None = None
    voice_feature_size: int | None = None
    voice_window_frames: int | None = None
    readout: str = "thinker"
    sound_vocabulary_size: int = 0


class TalkerConfig(PreTrainedConfig):
    r"""The talker ([`ConceptTalkerTalkerModel`]): a small causal transformer (transformers' Llama decoder) that writes
    audio codes from the reply's phonemes and thinker states.

    It reads the reply as symbols (espeak-ng phonemes, word spaces, punctuation; `phonemes.py`) laid out on a
    timeline by their lengths in frames (`schedule.py`): true lengths in training, its own predictions when
    generating. Each symbol carries the thinker's state of the reply token it comes from. All codebooks are
    predicted at each audio step, with MusicGen's delay pattern (codebook k lags k steps).

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer size (full multi-head
            attention, no biases, SiLU-gated MLP; `rope_theta`, `rms_norm_eps` as in Llama).
        thinker_hidden_size (`int`, *optional*): width of the thinker's hidden states and token embeddings, which the
            talker reads; must equal the thinker's `hidden_size` (filled in from it when left unset).
        num_codebooks (`int`, *optional*): codebooks predicted; must equal the codec's `codec_num_codebooks`
            (filled in from it when left unset).
        codebook_size (`int`, *optional*): entries per codebook; must equal the codec's (filled in when unset).
        phoneme_symbols (`str`): the symbols the talker knows, one character each (`phonemes.DEFAULT_SYMBOLS`);
            the first is the one unknown symbols are read as.
        phoneme_language (`str`): espeak-ng language of the reply's phonemes (`en-us`).
        progress_cap (`int`): an audio step is told how many frames of its symbol have passed and remain, up to
            this many.
        num_style_concepts (`int`): concept vectors of a reference voice the talker attends to (0 disables); without
            a clip, the talker speaks in a learnt house voice in their place.
        voice_pitch (`bool`): the reference clip's measured pitch (its median F0, by YIN) joins its style concepts as
            one more position. A voice's pitch is what most sets it apart, and a measured one holds for voices the
            model never heard.
        voice_every_step (`bool`): the mean of the voice's style positions is also added to every audio step.
        prompt_states (`int`): thinker states of the prompt's last positions the talker reads before the reply's
            (0 reads none). They hold what the user typed with the spoken turn ("Speak slowly."), which sets the
            symbols' predicted lengths.
        duration_loss_weight (`float`): weight of the symbol-length loss (squared error of `log(1 + frames)`) in
            the audio loss.
        max_position_embeddings (`int`): longest talker sequence (prefix + symbols + audio steps) it is built for.
        dropout (`float`): attention dropout in training (the decoder's `attention_dropout`). Talkers before
            format version 4 also dropped out each block's residual branches; no preset trained with dropout.
        detach_thinker_states (`bool`): stop the talker's loss from flowing back into the thinker.
        history_dropout (`float`): in training, the fraction of audio steps whose input codes are hidden (replaced by
            the filler id), so the talker leans on the timeline and the voice rather than only on the codes so far.
    """

    model_type = "concept_talker_talker"

    hidden_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    intermediate_size: int = 1024
    thinker_hidden_size: int | None = None
    num_codebooks: int | None = None
    codebook_size: int | None = None
    phoneme_symbols: str = DEFAULT_SYMBOLS
    phoneme_language: str = "en-us"
    progress_cap: int = 15
    num_style_concepts: int = 0
    voice_pitch: bool = False
    voice_every_step: bool = False
    prompt_states: int = 0
    duration_loss_weight: float = 1.0
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dropout: float = 0.0
    detach_thinker_states: bool = True
    history_dropout: float = 0.0


class LyraCodecConfig(PreTrainedConfig):
    r"""The Lyra v2 SoundStream codec (TFLite models run with `ai-edge-litert`).

    The number of quantizers used is `ConceptTalkerConfig.codec_num_codebooks` (1..46; 8 = 1.6 kbps, 16 = 3.2 kbps).

    Args:
        model_dir (`str`): folder holding `soundstream_encoder.tflite`, `quantizer.tflite` and `lyragan.tflite`.
    """

    model_type = "lyra_soundstream"

    model_dir: str | None = None
    sampling_rate: int = 16000
    hop_length: int = 320
    codebook_size: int = 16
    max_num_quantizers: int = 46
    latent_dim: int = 64

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.hop_length


AutoConfig.register(LyraCodecConfig.model_type, LyraCodecConfig, exist_ok=True)


class ConceptTalkerConfig(PreTrainedConfig):
    r"""Configuration of [`ConceptTalkerForConditionalGeneration`].

    Args:
        thinker_config (`dict` or `Qwen2Config`): the thinker LLM, a Qwen2 model (default: a small one, the `tiny`
            preset's 2 layers x 64 with Qwen2.5's vocabulary; real models give theirs, e.g. from Qwen2.5-0.5B).
        ear_config (`dict` or `WhisperConfig`, *optional*): the ear, Whisper's encoder (frozen); None makes the
            codec's quantised latents the ear (how version-2 checkpoints heard).
        ear_context_windows (`int`): 0 encodes the whole question when the user has finished speaking; n > 0 encodes
            each adapter window as it completes, with n earlier windows of context (see `ear.py`).
        codec_config (`dict` or `EncodecConfig`/`MimiConfig`/`LyraCodecConfig`): the audio codec (default EnCodec 24 kHz).
        adapter_config (`dict` or [`ConceptAdapterConfig`]): the concept adapter.
        talker_config (`dict` or [`TalkerConfig`]): the talker.
        codec_num_codebooks (`int`): how many of the codec's residual codebooks are used (EnCodec: 8 = 6 kbps).
        lora_r (`int`): LoRA rank on the thinker (0: no LoRA, the thinker's own weights are what trains).
        lora_alpha (`int`), lora_dropout (`float`), lora_target_modules (`list[str]`): LoRA settings.
        audio_start_token_id, audio_token_id, audio_end_token_id (`int`): ids of `<|audio_start|>`,
            `<|audio_pad|>` (one per concept slot) and `<|audio_end|>` in the thinker's vocabulary.
        concept_blank_token_id (`int`): the token a concept slot stands for when no token was spoken in its stretch
            of time. Concepts are trained to be the thinker's embeddings of the tokens spoken in their stretch
            (`concept_labels`), or of this token.
        concept_loss_weight (`float`): weight of that slot-by-slot loss (cross-entropy through the thinker's
            embeddings, plus the squared distance to the embedding) in the total loss.
        concept_logit_scale (`float`): a concept reads as each token by its cosine similarity with the token's
            embedding, times this. A concept that reads as the blank token is left out of what the thinker reads.
        max_audio_seconds (`float`): longest user audio accepted.
        reply_end_token_ids (`list[int]`): thinker tokens that end a reply (default `<|im_end|>`, `<|endoftext|>`).
        audio_loss_weight (`float`): weight of the talker's loss in the total loss.
        thinker_embedding_std (`float`, *optional*): standard deviation of a from-scratch thinker's token embeddings
            (tied to its output layer) of the tokens it trains on, drawn by the training run before its first stage
            (`init_thinker_embeddings`); None: the thinker config's `initializer_range` throughout. The tiny
            presets take 0.1: a 128-wide thinker copying sequences of 8,000 random tokens begins to copy at step
            200 instead of 600 and copies 0.81 of them at step 800 instead of 0.22 (`benchmarks/thinker_copy.py`);
            copying is what transcribing and "repeat after me" ask of it. Unused when a pretrained thinker is loaded.
        thinker_name_or_path, codec_name_or_path, ear_name_or_path (`str`, *optional*): where the pretrained
            thinker, codec and ear came from (Hub id, or a folder; a relative folder is taken relative to the
            checkpoint); a checkpoint that stores only trainable weights reloads the rest from them.
        saved_weights (`str`): what a saved checkpoint holds: `"full"` (every weight) or `"trainable"` (concept
            adapter, talker and LoRA weights, plus the codec's unless `codec_name_or_path` points to it).
        trained_instructions (`list[str]`, *optional*): the typed instructions of the training data ("Speak
            slowly.", "Repeat after me.", ...), recorded by `concept-talker train`; an instruction with other words
            gets a warning that the model will most likely ignore it. None: not recorded, not checked.
    """

    model_type = "concept_talker"
    sub_configs_defaults = {
        "thinker_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2", init_kwargs=SMALL_THINKER_DEFAULTS),
        "codec_config": SubConfigSpec(config_class=AutoConfig, model_type="encodec"),
        "adapter_config": ConceptAdapterConfig,
        "talker_config": TalkerConfig,
        "ear_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
    }

    thinker_config: dict | PreTrainedConfig | None = None
    ear_config: dict | PreTrainedConfig | None = None
    ear_context_windows: int = 0
    codec_config: dict | PreTrainedConfig | None = None
    adapter_config: dict | PreTrainedConfig | None = None
    talker_config: dict | PreTrainedConfig | None = None
    codec_num_codebooks: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    audio_start_token_id: int = 151665
    audio_token_id: int = 151666
    audio_end_token_id: int = 151667
    concept_blank_token_id: int = 151668
    concept_loss_weight: float = 1.0
    concept_logit_scale: float = 16.0
    max_audio_seconds: float = 30.0
    reply_end_token_ids: list[int] | None = None
    audio_loss_weight: float = 1.0
    thinker_embedding_std: float | None = None
    initializer_range: float = 0.02
    thinker_name_or_path: str | None = None
    codec_name_or_path: str | None = None
    ear_name_or_path: str | None = None
    saved_weights: str = "full"
    trained_instructions: list[str] | None = None
    config_format_version: int = CONFIG_FORMAT_VERSION
    tie_word_embeddings: bool = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Read `config.json` from a checkpoint folder or Hub repository.

        A local folder without `config.json` is refused at once (transformers would read it as an empty config,
        i.e. a model of default size, instead of the one whose weights lie there).
        """
        folder = os.path.normpath(os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or ""))
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
            present = sorted(os.listdir(folder))
            raise OSError(
                f"{folder} has no config.json, so it cannot be loaded as a Concept-Talker checkpoint (it holds: "
                f"{', '.join(present[:8]) or 'nothing'}{', ...' if len(present) > 8 else ''}). Give the folder that "
                "save_pretrained wrote (config.json next to model.safetensors), or copy the checkpoint's config.json "
                "into it."
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Read a saved config, migrating an older format version first (see `migrate_config_dict`)."""
        return super().from_dict(migrate_config_dict(config_dict), **kwargs)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.lora_target_modules is None:
            self.lora_target_modules = list(DEFAULT_LORA_TARGETS)
        if self.reply_end_token_ids is None:
            self.reply_end_token_ids = [151645, 151643]  # Qwen2.5's <|im_end|> and <|endoftext|>
        self.validate_parts()

    def get_text_config(self, decoder=None, encoder=None):
        """The thinker's config: the part that reads and writes text (transformers' generation loop sizes its cache
        from it, so `generate_text` works as for any causal LM)."""
        return self.thinker_config

    # ---- codec facts, whatever the codec -------------------------------------------------------------
    @property
    def codec_type(self) -> str:
        return self.codec_config.model_type

    @property
    def sampling_rate(self) -> int:
        """Sampling rate of the codec, Hz: reply audio comes out at it, reference voices are read at it."""
        return int(self.codec_config.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Codec frames per second (EnCodec 75, Mimi 12.5, Lyra 50)."""
        return float(self.codec_config.frame_rate)

    @property
    def hop_length(self) -> int:
        """Audio samples per codec frame."""
        return int(round(self.sampling_rate / self.frame_rate))

    @property
    def codebook_size(self) -> int:
        return int(self.codec_config.codebook_size)

    @property
    def codec_max_codebooks(self) -> int:
        if self.codec_type == "lyra_soundstream":
            return int(self.codec_config.max_num_quantizers)
        return int(self.codec_config.num_quantizers)

    @property
    def codec_latent_dim(self) -> int:
        """Width of the codec's quantised latents (`AudioCodec.embed_codes`): EnCodec 128, Mimi 512, Lyra 64."""
        if self.codec_type == "lyra_soundstream":
            return int(self.codec_config.latent_dim)
        if self.codec_type == "mimi":
            return int(self.codec_config.hidden_size)
        return int(self.codec_config.codebook_dim)

    # ---- the ear's facts: what the user's audio becomes before the concept adapter ---------------------------
    @property
    def ear_type(self) -> str:
        """`"whisper"` (a pretrained speech encoder) or `"codec"` (the codec's quantised latents)."""
        return "codec" if self.ear_config is None else self.ear_config.model_type

    @property
    def input_sampling_rate(self) -> int:
        """Sampling rate of the user's audio as the model takes it, Hz (Whisper: 16 kHz; else the codec's)."""
        return 16000 if self.ear_type == "whisper" else self.sampling_rate

    @property
    def input_frame_rate(self) -> float:
        """The ear's frames per second (Whisper: 50; else the codec's frame rate)."""
        return 50.0 if self.ear_type == "whisper" else self.frame_rate

    @property
    def input_feature_size(self) -> int:
        """Width of the ear's frames (Whisper: its `d_model`, 512 for base; else the codec's latent width)."""
        return int(self.ear_config.d_model) if self.ear_type == "whisper" else self.codec_latent_dim

    @property
    def input_hop_length(self) -> int:
        """Audio samples per ear frame, at `input_sampling_rate`."""
        return int(round(self.input_sampling_rate / self.input_frame_rate))

    @property
    def window_frames(self) -> int:
        """Ear frames in one concept-adapter window."""
        return int(round(self.adapter_config.window_seconds * self.input_frame_rate))

    @property
    def concepts_per_second(self) -> float:
        return self.adapter_config.concepts_per_window / self.adapter_config.window_seconds

    def validate_parts(self) -> None:
        """Check that the parts agree with each other; raise a `ValueError` that says what to change."""
        if self.thinker_config.model_type not in THINKER_MODEL_TYPES:
            raise ValueError(
                f"thinker_config has model_type={self.thinker_config.model_type!r}; Concept-Talker's thinker is a "
                "Qwen2 model (model_type 'qwen2': Qwen2.5's tokenizer, with the audio tokens at ids 151665-151667, the "
                "fast decode runner and the LoRA targets are Qwen2's). Use a Qwen2 or Qwen2.5 thinker, e.g. "
                "from_pretrained_parts(thinker='Qwen/Qwen2.5-0.5B')."
            )
        if self.codec_type not in ("encodec", "mimi", "lyra_soundstream"):
            raise ValueError(
                f"codec_config has model_type={self.codec_type!r}; Concept-Talker supports 'encodec' (default), "
                "'mimi' and 'lyra_soundstream'."
            )
        if not 1 <= self.codec_num_codebooks <= self.codec_max_codebooks:
            raise ValueError(
                f"codec_num_codebooks={self.codec_num_codebooks}, but the {self.codec_type} codec has "
                f"{self.codec_max_codebooks} codebooks: choose a number from 1 to {self.codec_max_codebooks}."
            )
        if self.ear_type not in ("codec", "whisper"):
            raise ValueError(
                f"ear_config has model_type={self.ear_type!r}; the ear is Whisper's encoder (model_type 'whisper') or, "
                "with ear_config=None, the codec."
            )
        if self.ear_context_windows < 0 or self.ear_context_windows != int(self.ear_context_windows):
            raise ValueError(f"ear_context_windows must be 0 (the whole question at once) or a positive whole number "
                             f"of windows, got {self.ear_context_windows!r}.")
        frames = self.adapter_config.window_seconds * self.input_frame_rate
        if frames < 1 or abs(frames - round(frames)) > 1e-6:
            raise ValueError(
                f"adapter_config.window_seconds={self.adapter_config.window_seconds} is {frames:g} frames of the "
                f"{self.input_frame_rate:g} Hz ear; it must be a whole number of frames (e.g. window_seconds="
                f"{max(1, math.ceil(frames)) / self.input_frame_rate:g})."
            )
        talker = self.talker_config
        if talker.thinker_hidden_size is None:
            talker.thinker_hidden_size = self.thinker_config.hidden_size
        if talker.thinker_hidden_size != self.thinker_config.hidden_size:
            raise ValueError(
                f"The talker reads {talker.thinker_hidden_size}-wide thinker states but the thinker is "
                f"{self.thinker_config.hidden_size} wide: set talker_config.thinker_hidden_size="
                f"{self.thinker_config.hidden_size}, or leave it unset to follow the thinker."
            )
        if talker.num_codebooks is None:
            talker.num_codebooks = self.codec_num_codebooks
        if talker.codebook_size is None:
            talker.codebook_size = self.codebook_size
        if talker.num_codebooks != self.codec_num_codebooks:
            raise ValueError(
                f"The talker predicts {talker.num_codebooks} codebooks but the codec is set to use "
                f"{self.codec_num_codebooks} (codec_num_codebooks): set talker_config.num_codebooks="
                f"{self.codec_num_codebooks}, or leave it unset to follow the codec."
            )
        if talker.codebook_size != self.codebook_size:
            raise ValueError(
                f"The talker's codebooks have {talker.codebook_size} entries but the {self.codec_type} codec's have "
                f"{self.codebook_size}: set talker_config.codebook_size={self.codebook_size}, or leave it unset."
            )
        if len(set(talker.phoneme_symbols)) != len(talker.phoneme_symbols) or len(talker.phoneme_symbols) < 8:
            raise ValueError(
                "talker_config.phoneme_symbols must be a string of distinct symbols (at least the separators and "
                "some phonemes); leave it unset for espeak-ng's English phonemes."
            )
        if talker.progress_cap < 1:
            raise ValueError(f"talker_config.progress_cap must be at least 1, got {talker.progress_cap}.")
        if talker.prompt_states < 0 or talker.num_style_concepts < 0:
            raise ValueError(
                f"talker_config.prompt_states={talker.prompt_states} and num_style_concepts="
                f"{talker.num_style_concepts} must be 0 (off) or positive."
            )
        if (talker.voice_pitch or talker.voice_every_step) and not talker.num_style_concepts:
            raise ValueError(
                "talker_config.voice_pitch and voice_every_step shape how the talker reads a reference voice, which "
                "needs num_style_concepts > 0: set num_style_concepts (e.g. 4), or turn them off."
            )
        if talker.hidden_size % talker.num_attention_heads:
            raise ValueError(
                f"talker_config.hidden_size={talker.hidden_size} is not divisible by "
                f"num_attention_heads={talker.num_attention_heads}."
            )
        adapter = self.adapter_config
        if adapter.readout not in CONCEPT_READOUTS:
            raise ValueError(f"adapter_config.readout must be one of {list(CONCEPT_READOUTS)}, got {adapter.readout!r}.")
        if adapter.hidden_size % adapter.num_attention_heads:
            raise ValueError(
                f"adapter_config.hidden_size={adapter.hidden_size} is not divisible by "
                f"num_attention_heads={adapter.num_attention_heads}."
            )
        self._fill_in_adapter_sizes()
        vocab = self.thinker_config.vocab_size
        for name in ("audio_start_token_id", "audio_token_id", "audio_end_token_id", "concept_blank_token_id"):
            if not 0 <= getattr(self, name) < vocab:
                raise ValueError(
                    f"{name}={getattr(self, name)} is outside the thinker's vocabulary of {vocab} ids: give the "
                    "audio tokens ids inside it (the Qwen2.5 embedding table has unused rows from 151665)."
                )
        if self.max_audio_seconds <= 0:
            raise ValueError(f"max_audio_seconds must be positive, got {self.max_audio_seconds}.")

    def _fill_in_adapter_sizes(self) -> None:
        """Set the adapter's sizes that come from the other parts where they are unset; raise a `ValueError` where a
        set one disagrees with its part."""
        adapter, window = self.adapter_config, self.adapter_config.window_seconds
        style = self.talker_config.num_style_concepts if adapter.style_queries else 0
        # A reference voice is read from its codec latents; they need an input of their own when the ear is not the
        # codec (a speech encoder's frames are other frames).
        voice_input = style > 0 and self.ear_type != "codec"
        sizes = {
            "feature_size": (self.input_feature_size, f"the {self.ear_type} ear's frames are that wide"),
            "window_frames": (self.window_frames, f"a {window:g} s window holds that many frames of the "
                                                  f"{self.input_frame_rate:g} Hz ear"),
            "thinker_hidden_size": (self.thinker_config.hidden_size, "the thinker is that wide"),
            "num_style_concepts": (style, "the talker reads that many style concepts" if adapter.style_queries
                                   else "style_queries is False"),
            "voice_feature_size": (self.codec_latent_dim if voice_input else 0,
                                   "the codec's latents are that wide" if voice_input else
                                   "there are no style queries to read a voice" if not style else
                                   "the ear is the codec, so a voice is read through the speech input"),
            "voice_window_frames": (int(round(window * self.frame_rate)),
                                    f"a {window:g} s window holds that many frames of the {self.frame_rate:g} Hz codec"),
        }
        for name in SIZES_FROM_OTHER_PARTS["adapter_config"]:
            size, reason = sizes[name]
            if getattr(adapter, name) is None:
                setattr(adapter, name, size)
            elif getattr(adapter, name) != size:
                raise ValueError(
                    f"adapter_config.{name}={getattr(adapter, name)}, but it must be {size}: {reason}. Set it to "
                    f"{size}, or leave it unset to follow the other parts."
                )


__all__ = ["ConceptTalkerConfig", "ConceptAdapterConfig", "TalkerConfig", "LyraCodecConfig"]

ConceptTalkerConfig.register_for_auto_class()
