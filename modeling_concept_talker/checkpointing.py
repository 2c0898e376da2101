"""Checkpoint plumbing of `ConceptTalkerForConditionalGeneration`, in one place: building from pretrained parts,
saving (every weight, or only the trained ones with references to the base thinker, codec and ear), loading both
kinds from a folder or the Hub (a base thinker inside the checkpoint's `thinker/` folder), reading talker weights
saved before format version 4 (`split_fused_talker_weights`), refusing pickled weights unless asked, and naming a
damaged safetensors file. The model class mixes `CheckpointMixin` in.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from .configuration_concept_talker import ConceptTalkerConfig


# A weight of the talker's own decoder, saved before format version 4: `{prefix}blocks.{layer}.{name}.weight`.
_FUSED_TALKER_WEIGHT = re.compile(r"blocks\.(\d+)\.(attention\.qkv_proj|attention\.o_proj|gate_up_proj|down_proj|"
                                  r"attention_norm|mlp_norm)\.weight")
# Its parts in the Llama decoder's layer `decoder.layers.{layer}.` (rows of the fused matrices in this order).
_DECODER_LAYER_NAMES = {
    "attention.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attention.o_proj": ("self_attn.o_proj",),
    "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "down_proj": ("mlp.down_proj",),
    "attention_norm": ("input_layernorm",),
    "mlp_norm": ("post_attention_layernorm",),
}


def _holds_fused_talker_weights(names, prefix: str = "talker.") -> bool:
    """Whether weight `names` hold a talker saved before format version 4."""
    return any(name.startswith(prefix) and _FUSED_TALKER_WEIGHT.fullmatch(name[len(prefix):]) for name in names)


def split_fused_talker_weights(state_dict: dict, prefix: str = "talker.") -> bool:
    """Rename and split, in `state_dict`, the talker weights of a checkpoint saved before format version 4 (its own
    decoder) into those of its Llama decoder; other keys are left as they are.

    `{prefix}blocks.{i}.attention.qkv_proj.weight` `[3 width, width]` becomes `{prefix}decoder.layers.{i}.self_attn.`
    `{q,k,v}_proj.weight` (its row thirds, in that order), `blocks.{i}.gate_up_proj.weight` `[2 intermediate, width]`
    becomes `mlp.{gate,up}_proj.weight` (its row halves), `attention.o_proj`, `down_proj`, `attention_norm` and
    `mlp_norm` become `self_attn.o_proj`, `mlp.down_proj`, `input_layernorm` and `post_attention_layernorm`, and
    `{prefix}norm.weight` becomes `{prefix}decoder.norm.weight`. The split tensors are views of the saved ones.

    Returns:
        whether it found any such weight.
    """
    found = False
    for key in [k for k in state_dict if k.startswith(prefix)]:
        match = _FUSED_TALKER_WEIGHT.fullmatch(key[len(prefix):])
        if match is None:
            continue
        layer, name = match.groups()
        parts = _DECODER_LAYER_NAMES[name]
        for part, tensor in zip(parts, state_dict.pop(key).chunk(len(parts), dim=0)):
            state_dict[f"{prefix}decoder.layers.{layer}.{part}.weight"] = tensor
        found = True
    if prefix + "norm.weight" in state_dict:
        state_dict[prefix + "decoder.norm.weight"] = state_dict.pop(prefix + "norm.weight")
        found = True
    return found


class CheckpointMixin:
    """`from_pretrained_parts`, `save_pretrained` / `save_merged` / `save_base_thinker`, `from_pretrained` and what
    they share. Mixed into the model class ahead of `PreTrainedModel`, whose methods these extend."""

    def base_thinker_state_dict(self) -> dict[str, torch.Tensor]:
        """The thinker's own weights under plain Qwen2 names: LoRA adapters left out, not merged."""
        state = {}
        for name, tensor in self.thinker.state_dict().items():
            if "lora_" not in name:
                state[name.replace(".base_layer.", ".")] = tensor
        return state

    def save_base_thinker(self, save_directory) -> None:
        """Save the thinker without its LoRA adapters as a plain causal-LM checkpoint (e.g. the thinker that the
        tiny recipe's text stage trains, which later checkpoints refer to)."""
        self.thinker.save_pretrained(save_directory, state_dict=self.base_thinker_state_dict())

    # ---- building from pretrained parts -------------------------------------------------------------------
    @classmethod
    def from_pretrained_parts(
        cls,
        thinker: str = "Qwen/Qwen2.5-0.5B",
        codec: str = "facebook/encodec_24khz",
        speech_encoder: str | None = "openai/whisper-small",
        lora_r: int = 16,
        lora_alpha: int | None = None,
        dtype: torch.dtype | None = None,
        **config_kwargs,
    ) -> PreTrainedModel:  # the model class this is mixed into
        """Build a Concept-Talker around a pretrained thinker, codec and ear (Hub ids or local folders).

        The concept adapter and the talker start from random weights; LoRA adapters are added to the thinker.

        Args:
            thinker: a Qwen2-architecture causal LM (`Qwen/Qwen2.5-0.5B`, or a folder from `save_pretrained`).
            codec: an EnCodec or Mimi model (`facebook/encodec_24khz`, `kyutai/mimi`), or a folder holding the Lyra
                SoundStream TFLite models.
            speech_encoder: the ear, a Whisper model whose encoder is used (`openai/whisper-small`,
                `openai/whisper-base`, or a folder); None hears through the codec's latents instead.
            lora_r, lora_alpha: LoRA rank and scale (alpha defaults to 2 r); `lora_r=0` adds no adapters.
            dtype: dtype of the thinker's weights (e.g. `torch.bfloat16`).
            config_kwargs: any other `ConceptTalkerConfig` field (`adapter_config`, `talker_config`,
                `codec_num_codebooks`, `ear_context_windows`, ...).
        """
        from transformers import AutoConfig

        from .configuration_concept_talker import LyraCodecConfig
        from .lyra import is_lyra_model_dir

        thinker_model = AutoModelForCausalLM.from_pretrained(thinker, dtype=dtype or torch.float32)
        if is_lyra_model_dir(codec):
            codec_config = LyraCodecConfig(model_dir=str(codec))
        else:
            codec_config = AutoConfig.from_pretrained(codec)
        ear_config = None
        if speech_encoder is not None:
            ear_config = AutoConfig.from_pretrained(speech_encoder)
            if ear_config.model_type != "whisper":
                raise ValueError(f"speech_encoder={speech_encoder!r} is a {ear_config.model_type!r} model; the ear is a "
                                 "Whisper model (openai/whisper-base, openai/whisper-small, ...), or None.")
        config = ConceptTalkerConfig(
            thinker_config=thinker_model.config.to_dict(),
            codec_config=codec_config.to_dict(),
            ear_config=None if ear_config is None else ear_config.to_dict(),
            lora_r=lora_r,
            lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_r,
            thinker_name_or_path=str(thinker),
            codec_name_or_path=str(codec),
            ear_name_or_path=None if speech_encoder is None else str(speech_encoder),
            **config_kwargs,
        )
        return cls._assemble(config, thinker_model, str(codec), speech_encoder)

    @classmethod
    def _assemble(cls, config: ConceptTalkerConfig, thinker_model, codec_name_or_path: str | None,
                  ear_name_or_path: str | None = None, ear_kwargs: dict | None = None):
        """A model of `config` whose thinker is `thinker_model` and whose codec and ear are loaded from their
        references; LoRA adapters (per `config.lora_r`) are added after the pretrained weights are in place."""
        lora_r = config.lora_r
        config.lora_r = 0
        model = cls(config)
        model.thinker = thinker_model
        if codec_name_or_path and config.codec_type != "lyra_soundstream":
            model.codec.model = _load_codec_model(codec_name_or_path, config.codec_type).requires_grad_(False).eval()
        if ear_name_or_path and model.ear is not None:
            model.load_ear(ear_name_or_path, **(ear_kwargs or {}))
        if lora_r > 0:
            model.add_lora(lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
        model.set_trainable()
        return model

    def load_ear(self, name_or_path: str, **kwargs) -> None:
        """Put the encoder weights of the Whisper model at `name_or_path` (Hub id or folder; a Hub id is read from
        `$CONCEPT_TALKER_WHISPER_DIR` or this project's offline copy where there is one, see `ear.local_whisper`) into
        the ear."""
        from transformers import WhisperModel

        from .ear import local_whisper

        if self.ear is None:
            raise ValueError("This model hears through its codec (no ear_config): it has no speech encoder to load.")
        name_or_path = local_whisper(name_or_path)
        try:
            whisper = WhisperModel.from_pretrained(name_or_path, dtype=torch.float32, **kwargs)
        except OSError as err:
            raise OSError(
                f"Could not load the ear (Whisper) from {name_or_path!r}: {err}\nPass ear_name_or_path=... with a Hub "
                "id (openai/whisper-base) or a folder that holds it, or set CONCEPT_TALKER_WHISPER_DIR to that folder "
                "(offline here: ../shared/assets/whisper-base)."
            ) from err
        encoder = whisper.get_encoder()
        if encoder.config.d_model != self.ear.feature_size or len(encoder.layers) != len(self.ear.encoder.layers):
            raise ValueError(
                f"The Whisper model at {name_or_path!r} (d_model {encoder.config.d_model}, {len(encoder.layers)} layers) "
                f"is not the ear this checkpoint was trained with (d_model {self.ear.feature_size}, "
                f"{len(self.ear.encoder.layers)} layers): give the same Whisper size."
            )
        self.ear.encoder.load_state_dict(encoder.state_dict())
        self.ear.requires_grad_(False)

    def load_state_dict(self, state_dict, *args, **kwargs):
        """`nn.Module.load_state_dict`, reading talker weights saved before format version 4 too (renamed and split
        by `split_fused_talker_weights` in a copy of `state_dict`): the Trainer resumes from its checkpoints so."""
        if _holds_fused_talker_weights(state_dict):
            metadata = getattr(state_dict, "_metadata", None)
            state_dict = OrderedDict(state_dict)
            split_fused_talker_weights(state_dict)
            if metadata is not None:
                state_dict._metadata = metadata
        return super().load_state_dict(state_dict, *args, **kwargs)

    def trainable_state_keys(self) -> set[str]:
        """Weights a trainable-only checkpoint holds: concept adapter, talker, LoRA, and the codec's and the ear's
        own weights unless `config.codec_name_or_path` / `config.ear_name_or_path` can reload them."""
        keys = set()
        for name in self.state_dict():
            if name.startswith(("concept_adapter.", "talker.")) or "lora_" in name:
                keys.add(name)
            elif name.startswith("codec.") and not self.config.codec_name_or_path:
                keys.add(name)
            elif name.startswith("ear.") and not self.config.ear_name_or_path:
                keys.add(name)
        return keys

    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, trainable_only: bool | None = None,
                        **kwargs):
        """Save the config, the weights (safetensors) and the remote code (model, processor and pipeline files).

        The config names the `speech-to-speech` pipeline under `custom_pipelines`, so
        `pipeline(model=folder_or_repo, trust_remote_code=True)` works without this package.

        Args:
            trainable_only: save only the trained parts (see `trainable_state_keys`) with references to the base
                thinker and codec. Default: yes when the config names the base thinker (`thinker_name_or_path`)
                and the thinker has LoRA adapters, else every weight. Use `save_merged` for an export.
            push_to_hub: transformers' upload of the saved folder (config, weights, remote code). A complete Hub
                repository (processor, base thinker, model card, evaluation results) is what
                `concept_talker.hub.push_model` or `concept-talker push` uploads.
        """
        from .pipeline_concept_talker import custom_pipelines_entry

        if trainable_only is None:
            trainable_only = bool(self.config.thinker_name_or_path) and self.has_lora
        if trainable_only and not self.config.thinker_name_or_path:
            raise ValueError(
                "A trainable-only checkpoint needs a reference to the base thinker: set "
                "config.thinker_name_or_path (a Hub id or folder), or save every weight (trainable_only=False)."
            )
        state_dict = state_dict if state_dict is not None else self.state_dict()
        if trainable_only:
            keep = self.trainable_state_keys()
            state_dict = {k: v for k, v in state_dict.items() if k in keep}
        previous = self.config.saved_weights
        self.config.saved_weights = "trainable" if trainable_only else "full"
        self.config.custom_pipelines = custom_pipelines_entry()
        try:
            saved = super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        finally:
            self.config.saved_weights = previous
        return saved

    def save_merged(self, save_directory, **kwargs):
        """Export: every weight, LoRA folded into the thinker (`lora_r=0` in the saved config). The model in memory
        keeps its adapters."""
        import copy

        merged = copy.deepcopy(self)
        merged.merge_lora()
        return merged.save_pretrained(save_directory, trainable_only=False, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, codec_model_dir: str | None = None,
                        allow_pickle: bool = False, thinker_name_or_path: str | None = None,
                        codec_name_or_path: str | None = None, ear_name_or_path: str | None = None, **kwargs):
        """Load a checkpoint saved with `save_pretrained`, from a folder or a Hub repo.

        A full checkpoint loads as usual; a trainable-only one loads the base thinker (and codec) from the references
        in its config, then its own weights on top. A relative reference names a folder inside the checkpoint (a
        pushed repo keeps a locally trained base thinker in `thinker/`): it is found in a local folder, or downloaded
        from the same Hub repo (and revision).

        Only safetensors weights are read. Pickled weights (`.bin`, `.pt`) can run arbitrary code while they load,
        so a checkpoint (or base thinker) that has only those is refused unless `allow_pickle=True`.

        Args:
            codec_model_dir: for a Lyra checkpoint, the folder of the Lyra TFLite models on this machine (default:
                the checkpoint's own `codec/` folder when it has one, else the folder in the saved config where it
                exists, else `$CONCEPT_TALKER_LYRA_DIR`, else the shared offline copy `../shared/assets/lyra-soundstream`
                next to a source checkout).
            allow_pickle: accept pickled weights where no safetensors exist. Only for checkpoints you trust.
            thinker_name_or_path, codec_name_or_path, ear_name_or_path: where the base thinker / codec / ear
                (Whisper) of a trainable-only checkpoint is (Hub id or folder), instead of the references saved in
                its config.
            kwargs: `from_pretrained` arguments (`revision`, `token`, `subfolder`, `dtype`, ...; the Hub ones apply
                to the base thinker too), and config fields to override (`max_audio_seconds=10.0`).
        """
        import os

        from transformers import PreTrainedConfig

        location = str(pretrained_model_name_or_path)
        subfolder = kwargs.get("subfolder") or ""
        hub_kwargs = {k: kwargs[k] for k in cls._HUB_KWARGS if k in kwargs}
        if kwargs.get("use_safetensors") is False and not allow_pickle:
            raise ValueError(
                "use_safetensors=False reads pickled weights, which can run arbitrary code: pass allow_pickle=True "
                "as well if you trust this checkpoint."
            )
        config = kwargs.get("config")
        if isinstance(config, str | os.PathLike):
            config = ConceptTalkerConfig.from_pretrained(config, **hub_kwargs)
        elif isinstance(config, PreTrainedConfig) and not isinstance(config, ConceptTalkerConfig):
            config = ConceptTalkerConfig.from_dict(config.to_dict())  # the same config, from another copy of the code
        elif config is None:
            config = ConceptTalkerConfig.from_pretrained(location, subfolder=subfolder, **hub_kwargs)
            # Config fields given as keywords (`from_pretrained(path, max_audio_seconds=10.0)`) override the saved ones.
            fixed = {"thinker_config", "codec_config", "adapter_config", "talker_config", "saved_weights",
                     "config_format_version"}
            overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in ConceptTalkerConfig.__annotations__
                         and k not in fixed}
            if overrides:
                for name, value in overrides.items():
                    setattr(config, name, value)
                config.validate_parts()
        if thinker_name_or_path is not None:
            config.thinker_name_or_path = str(thinker_name_or_path)
        if codec_name_or_path is not None:
            config.codec_name_or_path = str(codec_name_or_path)
        if ear_name_or_path is not None:
            config.ear_name_or_path = str(ear_name_or_path)
        if codec_model_dir is not None and config.codec_type != "lyra_soundstream":
            raise ValueError(f"codec_model_dir is for Lyra checkpoints; this one uses the {config.codec_type} codec.")
        if config.codec_type == "lyra_soundstream":
            from .lyra import default_lyra_model_dir

            saved = config.codec_config.model_dir
            inside = cls._checkpoint_folder(location, subfolder, saved, hub_kwargs)
            model_dir = codec_model_dir or inside
            if model_dir is None and (saved is None or (os.path.isabs(saved) and not os.path.isdir(saved))):
                # The Lyra models live outside a checkpoint, in a folder that differs between machines.
                model_dir = default_lyra_model_dir()
            if model_dir is not None:
                config.codec_config.model_dir = str(model_dir)
        kwargs["config"] = config
        check_safetensors_files(os.path.join(location, subfolder))  # a local checkpoint's weights, before any load
        if getattr(config, "saved_weights", "full") != "trainable":
            pickled = cls._pickled_weight_files(location, subfolder, hub_kwargs)
            if pickled and not allow_pickle:
                raise cls._pickle_refusal("This checkpoint", location, pickled)
            if not allow_pickle:
                kwargs["use_safetensors"] = True
            weights = _weights_with_fused_talker(location, subfolder, hub_kwargs)
            if weights is None:
                model = super().from_pretrained(location, *args, **kwargs)
            else:  # saved before format version 4: its weights, renamed and split, are loaded as given
                kwargs = {k: v for k, v in kwargs.items() if k not in cls._HUB_KWARGS and k != "subfolder"}
                model = super().from_pretrained(None, *args, state_dict=weights, **kwargs)
                model.config.name_or_path = location
                _read_generation_config(model, location, subfolder, hub_kwargs)
        else:
            model = cls._from_trainable_checkpoint(
                location, config, kwargs.get("dtype"), hub_kwargs, subfolder, allow_pickle
            )
        model.tokenizer = _checkpoint_tokenizer(location, subfolder, hub_kwargs)
        return model

    @classmethod
    def _from_trainable_checkpoint(cls, location: str, config: ConceptTalkerConfig, dtype=None,
                                   hub_kwargs: dict | None = None, subfolder: str = "", allow_pickle: bool = False):
        import os

        from safetensors.torch import load_file
        from transformers import AutoModel
        from transformers.utils import cached_file

        hub_kwargs = hub_kwargs or {}

        def load_part(part: str, reference: str | None, auto_class, **load_kwargs):
            """The base `part` of the checkpoint, and the folder of the checkpoint it came from (or None)."""
            if not reference:
                raise ValueError(
                    f"{location} is a trainable-only checkpoint without a reference to its base {part}: pass "
                    f"{part}_name_or_path=... (a Hub id or folder) to from_pretrained."
                )
            inside = cls._checkpoint_folder(location, subfolder, reference, hub_kwargs)
            names_a_folder = os.path.isabs(reference) or reference.startswith(".")
            if inside is None and names_a_folder and not os.path.isdir(reference):
                raise OSError(
                    f"{location} is a trainable-only checkpoint whose base {part} is {reference!r}, a folder on the "
                    f"machine that saved it, which is not here. Pass {part}_name_or_path=... to from_pretrained (a Hub "
                    f"id or a folder holding the base {part}), or share the checkpoint with `concept-talker push`, "
                    f"which puts a local base {part} inside the repository."
                )
            # A base elsewhere on the Hub has revisions of its own: the checkpoint's `revision` does not apply to it.
            external = {k: v for k, v in hub_kwargs.items() if k != "revision"}
            source, source_kwargs = (inside, {}) if inside else (reference, external)
            pickled = cls._pickled_weight_files(source, "", source_kwargs)
            if pickled and not allow_pickle:
                raise cls._pickle_refusal(f"The base {part} of {location}", source, pickled)
            safe = {} if allow_pickle else {"use_safetensors": True}
            check_safetensors_files(source)  # a local base part's weights
            try:
                return auto_class.from_pretrained(source, **source_kwargs, **safe, **load_kwargs), inside
            except OSError as err:
                raise OSError(
                    f"Could not load the base {part} {reference!r} that the trainable-only checkpoint {location} is "
                    f"built on: {err}\nPass {part}_name_or_path=... to from_pretrained with a Hub id or folder that "
                    f"holds it."
                ) from err

        thinker_model, thinker_inside = load_part(
            "thinker", config.thinker_name_or_path, AutoModelForCausalLM, dtype=dtype or torch.float32
        )
        codec_model = codec_inside = None
        if config.codec_name_or_path and config.codec_type != "lyra_soundstream":
            codec_model, codec_inside = load_part("codec", config.codec_name_or_path, AutoModel)
            if codec_model.config.model_type != config.codec_type:
                raise ValueError(
                    f"The codec at {config.codec_name_or_path!r} is a {codec_model.config.model_type!r} model, but "
                    f"this checkpoint was trained with a {config.codec_type!r} codec: pass codec_name_or_path=... "
                    "pointing to that codec."
                )
        model = cls._assemble(config, thinker_model, None)
        if codec_model is not None:
            model.codec.model = codec_model.requires_grad_(False).eval()
        ear_inside = None
        if model.ear is not None and config.ear_name_or_path:
            ear_inside = cls._checkpoint_folder(location, subfolder, config.ear_name_or_path, hub_kwargs)
            reference = config.ear_name_or_path
            if ear_inside is None and (os.path.isabs(reference) or reference.startswith(".")) \
                    and not os.path.isdir(reference):
                raise OSError(
                    f"{location} is a trainable-only checkpoint whose ear (Whisper) is {reference!r}, a folder that "
                    "is not here. Pass ear_name_or_path=... to from_pretrained (a Hub id such as openai/whisper-base, "
                    "or a folder holding it)."
                )
            external = {k: v for k, v in hub_kwargs.items() if k != "revision"}
            model.load_ear(ear_inside or reference, **({} if ear_inside else external))

        pickled = cls._pickled_weight_files(location, subfolder, hub_kwargs)
        if pickled:
            raise cls._pickle_refusal("This trainable-only checkpoint", location, pickled, can_opt_in=False)
        weights_file = cached_file(location, "model.safetensors", subfolder=subfolder, **hub_kwargs)
        check_safetensors_files(weights_file)
        weights = load_file(weights_file)
        split_fused_talker_weights(weights)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        expected = model.trainable_state_keys()
        if unexpected or set(weights) != expected:
            raise ValueError(
                f"{location} is a trainable-only checkpoint whose weights do not fit this model "
                f"(missing {sorted(expected - set(weights))[:5]}, unexpected {sorted(unexpected)[:5]}): it was saved "
                "for another configuration."
            )
        # Relative references point into the checkpoint; keep where they were found, so a re-save still finds them.
        if thinker_inside:
            model.config.thinker_name_or_path = thinker_inside
        if codec_inside:
            model.config.codec_name_or_path = codec_inside
        if ear_inside:
            model.config.ear_name_or_path = ear_inside
        model.config.saved_weights = "full"
        model.config.name_or_path = location
        _read_generation_config(model, location, subfolder, hub_kwargs)
        return model.eval()

    @staticmethod
    def _checkpoint_folder(location: str, subfolder: str, reference: str | None, hub_kwargs: dict) -> str | None:
        """The local path of `reference` when it names a folder inside the checkpoint (relative to it), else None.

        For a checkpoint on the Hub, that folder is downloaded from the checkpoint's repo (same revision).
        """
        import os
        import posixpath

        if not reference or os.path.isabs(reference):
            return None
        if os.path.isdir(location):
            candidate = os.path.join(location, subfolder, reference)
            return candidate if os.path.isdir(candidate) else None
        inner = posixpath.normpath(posixpath.join(subfolder.replace(os.sep, "/"), reference.replace(os.sep, "/")))
        if inner in (".", "") or inner.startswith(".."):
            return None
        try:
            from huggingface_hub import snapshot_download

            options = {k: hub_kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only",
                                                  "force_download") if hub_kwargs.get(k) is not None}
            snapshot = snapshot_download(location, allow_patterns=[f"{inner}/*"], **options)
        except Exception:  # not a Hub repo that can be read: the reference is then a Hub id or path of its own
            return None
        candidate = os.path.join(snapshot, *inner.split("/"))
        return candidate if os.path.isdir(candidate) else None

    @classmethod
    def _pickled_weight_files(cls, location: str, subfolder: str, hub_kwargs: dict) -> list[str]:
        """Pickled weight files of a checkpoint that has no safetensors weights; [] when it has (or cannot be told,
        e.g. offline: the loaders then still refuse pickles through `use_safetensors=True`)."""
        import os

        if os.path.isdir(location):
            folder = os.path.join(location, subfolder)
            names = os.listdir(folder) if os.path.isdir(folder) else []
        elif hub_kwargs.get("local_files_only"):
            return []
        else:
            try:
                from huggingface_hub import list_repo_files

                files = list_repo_files(location, revision=hub_kwargs.get("revision"), token=hub_kwargs.get("token"))
            except Exception:  # offline, or not a repo
                return []
            prefix = subfolder.strip("/") + "/" if subfolder.strip("/") else ""
            names = [f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]
        if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
            return []
        return sorted(n for n in names if n.endswith(cls._PICKLE_SUFFIXES))

    @staticmethod
    def _pickle_refusal(what: str, location: str, files: list[str], can_opt_in: bool = True) -> OSError:
        remedy = (
            "If you trust where it came from, pass allow_pickle=True; better, load it once that way and save_pretrained "
            "it, which writes model.safetensors."
            if can_opt_in
            else "Trainable-only weights are read from model.safetensors only: re-save the checkpoint with "
            "save_pretrained."
        )
        return OSError(
            f"{what} ({location}) has its weights only as pickle files ({', '.join(files)}). Unpickling can run "
            f"arbitrary code, so Concept-Talker loads safetensors only. {remedy}"
        )

def check_safetensors_files(path) -> None:
    """Raise an `OSError` naming the file when a safetensors file at `path` (a file, or every `*.safetensors` in a
    folder) is damaged: truncated, or not safetensors at all. Reads only each file's header."""
    import os

    from safetensors import safe_open

    path = os.fspath(path)
    if os.path.isdir(path):
        files = [os.path.join(path, name) for name in sorted(os.listdir(path)) if name.endswith(".safetensors")]
    else:
        files = [path] if os.path.isfile(path) else []
    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError, naming no file
            raise OSError(
                f"{file} is damaged ({err}): it is truncated or not a safetensors file, e.g. from an interrupted "
                f"download or copy ({os.path.getsize(file):,} bytes). Download or copy the checkpoint again, or re-save "
                "it with save_pretrained."
            ) from err


def _weights_with_fused_talker(location: str, subfolder: str, hub_kwargs: dict) -> dict | None:
    """Every weight of a checkpoint whose talker was saved before format version 4, with the talker's renamed and
    split (`split_fused_talker_weights`); None for a checkpoint in today's layout (or without safetensors weights).
    Reads the files' headers first, and their tensors only for such a checkpoint."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    def local(name: str) -> str | None:
        return cached_file(location, name, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                           **hub_kwargs)

    single, index = local("model.safetensors"), None
    if single is None:
        index = local("model.safetensors.index.json")
    if index is not None:
        with open(index) as f:
            files = [local(name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    else:
        files = [single] if single is not None else []
    names = []
    for file in files:
        with safe_open(file, framework="pt") as opened:
            names += opened.keys()
    if not _holds_fused_talker_weights(names):
        return None
    weights = {}
    for file in files:
        weights.update(load_file(file))
    split_fused_talker_weights(weights)
    return weights


def _read_generation_config(model, location: str, subfolder: str, hub_kwargs: dict) -> None:
    """The checkpoint's reply defaults (`set_reply_defaults`) as `model.generation_config`, as transformers' own
    loading reads them; a checkpoint without a generation_config.json keeps the one derived from the config."""
    try:
        model.generation_config = GenerationConfig.from_pretrained(location, subfolder=subfolder, **hub_kwargs)
    except OSError:
        pass


def _checkpoint_tokenizer(location: str, subfolder: str, hub_kwargs: dict):
    """The tokenizer saved with a checkpoint (the processor's), which spells replies for the talker. A local checkpoint
    without one (the embedded checkpoint) gets Qwen2.5's where it is on this machine (`$CONCEPT_TALKER_TOKENIZER` or
    the shared offline copy; the processor reads the same); None otherwise (pass `tokenizer=` to `generate` then)."""
    import os

    from transformers import PreTrainedTokenizerFast

    from .processing_concept_talker import default_tokenizer_source

    folder = os.path.join(location, subfolder)
    if os.path.isdir(location) and not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        source = default_tokenizer_source()
        if not os.path.isdir(source):
            return None
        from transformers import Qwen2Tokenizer

        try:
            return Qwen2Tokenizer.from_pretrained(source)
        except (OSError, ValueError):
            return None
    try:  # the fast tokenizer's own file: no class lookup, so nothing asks to run remote code
        return PreTrainedTokenizerFast.from_pretrained(location, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError):
        return None


def _load_codec_model(name_or_path: str, model_type: str):
    from transformers import EncodecModel, MimiModel

    if model_type == "encodec":
        return EncodecModel.from_pretrained(name_or_path)
    if model_type == "mimi":
        return MimiModel.from_pretrained(name_or_path)
    raise ValueError(f"{name_or_path} holds a {model_type!r} model; the codec must be EnCodec, Mimi or Lyra.")