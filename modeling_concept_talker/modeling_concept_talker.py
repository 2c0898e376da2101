"""Concept-Talker: speech in, speech out, through an ear, a concept adapter, a LoRA thinker and a talker.

    user audio [clips, samples] (16 kHz)        or precomputed ear frames [clips, frames, ear width]
      -> the ear: Whisper's encoder (frozen)    frames, 50/s (or, without an ear_config, the codec's latents)
      -> concept adapter (Perceiver, windows)   concepts [clips, slots, thinker_hidden], e.g. 6 per second, each the
                                                thinker's embedding of the token spoken in its stretch (or a blank)
      -> written into the thinker's input embeddings at the <|audio_pad|> placeholders
      -> thinker (Qwen2 + LoRA)                 reply text logits; hidden states of the reply tokens
      -> the reply's phonemes (espeak-ng), each symbol with its token's thinker state and its length in frames
      -> talker (symbols on a timeline)         audio code logits [batch, steps, codebooks, codebook_size]
      -> codec decoder                          reply audio
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .checkpointing import CheckpointMixin
from .codec import AudioCodec, build_codec
from .concept_adapter import ConceptTalkerAdapterModel
from .concept_reading import ConceptReadingMixin, vocabulary_index
from .configuration_concept_talker import CONFIG_FORMAT_VERSION, ConceptTalkerConfig
from .ear import WhisperEar
from .lora import has_lora, init_lora_layer, inject_lora, is_lora_layer, merge_lora, set_thinker_trainable
from .lyra import LyraCodec  # noqa: F401  (registers the Lyra codec with build_codec)
from .pitch import clips_median_f0
from .talker import IGNORE_INDEX, ConceptTalkerTalkerModel, reply_prompt_states, reply_states


@dataclass
class ConceptTalkerOutput(ModelOutput):
    """Output of [`ConceptTalkerForConditionalGeneration.forward`].

    Args:
        loss: `text_loss + audio_loss_weight * (audio_loss + duration_loss_weight * duration_loss)
            + concept_loss_weight * concept_loss` (whichever parts have labels).
        text_loss: mean cross-entropy over reply-text tokens.
        concept_loss: the concepts against the tokens spoken in their stretch (`concept_labels`): cross-entropy of
            each concept read through the thinker's embeddings, plus its squared distance to the labelled embedding.
        concept_accuracy: share of labelled concepts whose nearest thinker embedding (by that reading) is the label.
        audio_loss: mean of `audio_codebook_losses`.
        audio_codebook_losses: `[codebooks]` cross-entropy of each codebook's head.
        duration_loss: squared error of the symbols' predicted `log(1 + frames)`.
        logits: `[batch, length, vocab]` thinker logits (only when no text labels are given, to save memory).
        audio_logits: `[batch, steps, codebooks, codebook_size + 1]` talker logits (when audio labels are given).
        audio_targets: `[batch, codebooks, steps]` the delayed targets the audio logits were scored against.
        cache: the thinker's key/value cache.
    """

    loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    concept_loss: torch.FloatTensor | None = None
    concept_accuracy: torch.FloatTensor | None = None
    audio_loss: torch.FloatTensor | None = None
    audio_codebook_losses: torch.FloatTensor | None = None
    duration_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    audio_logits: torch.FloatTensor | None = None
    audio_targets: torch.LongTensor | None = None
    cache: object | None = None


class ConceptTalkerPreTrainedModel(PreTrainedModel):
    config: ConceptTalkerConfig
    config_class = ConceptTalkerConfig
    base_model_prefix = "concept_talker"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Qwen2DecoderLayer", "PerceiverBlock", "LlamaDecoderLayer"]

    def _init_weights(self, module):
        if isinstance(module, WhisperEar):
            mel_filters, stft_window = module.compute_buffers()  # not saved: rebuilt on load
            init.copy_(module.mel_filters, mel_filters)
            init.copy_(module.stft_window, stft_window)
        elif is_lora_layer(module):
            init_lora_layer(module)
        else:
            super()._init_weights(module)


class ConceptTalkerForConditionalGeneration(CheckpointMixin, ConceptReadingMixin, ConceptTalkerPreTrainedModel,
                                             GenerationMixin):
    """The whole model: codec, concept adapter, thinker (+ LoRA) and talker.

    Build it from a config (random weights), from pretrained parts with [`from_pretrained_parts`], or from a
    saved Concept-Talker checkpoint with `from_pretrained`.
    """

    accepts_loss_kwargs = False  # the loss is a per-batch mean

    def __init__(self, config: ConceptTalkerConfig):
        super().__init__(config)
        if getattr(config, "config_format_version", CONFIG_FORMAT_VERSION) > CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"This checkpoint's config has format version {config.config_format_version}, newer than this code "
                f"(version {CONFIG_FORMAT_VERSION}): upgrade concept-talker to load it."
            )
        config.validate_parts()
        self.codec: AudioCodec = build_codec(config)
        self.ear = (WhisperEar(config.ear_config, config.adapter_config.window_seconds, config.ear_context_windows)
                    if config.ear_type == "whisper" else None)
        # Speech is heard through the ear; a reference voice is read from its codec latents whatever the ear (they
        # keep the pitch and timbre that a speech encoder trained to transcribe learns to drop): the adapter's sizes
        # for both are filled in from the ear and the codec by the config.
        self.concept_adapter = ConceptTalkerAdapterModel(config.adapter_config)
        self.thinker = AutoModelForCausalLM.from_config(config.thinker_config)
        self.talker = ConceptTalkerTalkerModel(config.talker_config)
        self.post_init()
        if config.lora_r > 0:
            self._inject_lora()
        self.set_trainable()

    # ---- parts ---------------------------------------------------------------------------------------------
    def init_thinker_embeddings(self, token_ids: torch.Tensor | None = None) -> None:
        """Draw a from-scratch thinker's token embeddings (tied to its output layer) of `token_ids` (default: every
        token) at `config.thinker_embedding_std`, before its training. A thinker trained over the data's tokens only
        (`text_vocabulary: data`) never moves the other rows: they keep transformers' small initialisation, so that it
        never writes a token it did not learn (at std 0.1 everywhere, untrained tokens outscored learnt ones)."""
        std = self.config.thinker_embedding_std
        if std is None:
            return
        weight = self.thinker.get_input_embeddings().weight
        rows = slice(None) if token_ids is None else token_ids.to(weight.device)
        with torch.no_grad():
            weight[rows] = torch.randn_like(weight[rows]) * std

    def _inject_lora(self) -> None:
        """Wrap the thinker's target projections in LoRA adapters (after `post_init`, so `lora_B` stays zero)."""
        config = self.config
        inject_lora(self.thinker, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)

    def add_lora(self, r: int = 16, alpha: int | None = None, dropout: float = 0.05, target_modules=None) -> None:
        """Add fresh LoRA adapters to a thinker that has none (e.g. after loading pretrained weights into it)."""
        if self.has_lora:
            raise ValueError("The thinker already has LoRA adapters; merge them first with merge_lora().")
        self.config.lora_r = r
        self.config.lora_alpha = alpha if alpha is not None else 2 * r
        self.config.lora_dropout = dropout
        if target_modules is not None:
            self.config.lora_target_modules = list(target_modules)
        self._inject_lora()
        self.set_trainable()

    @property
    def has_lora(self) -> bool:
        return has_lora(self.thinker)

    def merge_lora(self) -> None:
        """Fold the LoRA adapters into the thinker's weights and remove them (for export and fast inference).

        Afterwards `config.lora_r == 0`, so a saved checkpoint holds plain Qwen2 weights.
        """
        merge_lora(self.thinker)
        self.config.lora_r = 0

    def set_trainable(self, concept_adapter: bool = True, thinker: str = "lora", talker: bool = True) -> None:
        """Choose what trains. The codec never does.

        Args:
            concept_adapter: train the concept adapter.
            thinker: `"lora"` (only the LoRA weights), `"base"` (every weight but LoRA's, which stay as they are),
                `"full"` (every thinker weight) or `"frozen"`.
            talker: train the talker.
        """
        set_thinker_trainable(self.thinker, thinker)
        self.codec.requires_grad_(False)
        self.concept_adapter.requires_grad_(concept_adapter)
        self.talker.requires_grad_(talker)

    def get_input_embeddings(self) -> nn.Module:
        return self.thinker.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.thinker.set_input_embeddings(value)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of each part (the thinker's LoRA weights counted apart)."""
        lora = sum(p.numel() for n, p in self.thinker.named_parameters() if "lora_" in n)
        thinker = sum(p.numel() for p in self.thinker.parameters()) - lora  # a tied weight counts once
        return {
            "codec": sum(p.numel() for p in self.codec.parameters()),
            "concept_adapter": sum(p.numel() for p in self.concept_adapter.parameters()),
            "thinker": thinker,
            "lora": lora,
            "talker": sum(p.numel() for p in self.talker.parameters()),
        }


    # ---- checkpoints ----------------------------------------------------------------------------------------
    # `from_pretrained` arguments that also apply to the base thinker and codec a trainable-only checkpoint refers to.
    _HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")
    # Weight files read with pickle, which can run arbitrary code when loaded.
    _PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


    # ---- concepts ------------------------------------------------------------------------------------------
    def encode_audio(self, input_values: torch.Tensor, input_values_mask: torch.Tensor | None = None):
        """Clips `[clips, samples]` at the codec's rate -> codes `[clips, codebooks, frames]` and frame mask `[clips, frames]`."""
        codes = self.codec.encode(input_values)
        if input_values_mask is None:
            lengths = torch.full((input_values.shape[0],), input_values.shape[-1], device=codes.device)
        else:
            lengths = input_values_mask.sum(-1)
        frames = -(-lengths // self.codec.hop_length)
        frame_mask = torch.arange(codes.shape[-1], device=codes.device)[None, :] < frames[:, None]
        return codes, frame_mask

    def adapter_latents(self, codes: torch.Tensor, name: str = "input_audio_codes") -> torch.Tensor:
        """Codes `[clips, codebooks, frames]` (checked, `name` in errors) -> latents `[clips, frames, latent_dim]` in
        the adapter's dtype."""
        codes = self.codec.check_codes(codes, name)
        return self.codec.embed_codes(codes).to(self.concept_adapter.frame_proj.weight.dtype)

    def get_concepts(self, codes: torch.Tensor, frame_mask: torch.Tensor | None = None):
        """Codes `[clips, codebooks, frames]` -> concepts `[clips, slots, thinker_hidden]` and mask `[clips, slots]`
        (a model that hears through its codec)."""
        return self.concept_adapter(self.adapter_latents(codes), frame_mask)

    def hear(
        self,
        input_values: torch.Tensor | None = None,
        input_values_mask: torch.Tensor | None = None,
        input_audio_codes: torch.Tensor | None = None,
        input_audio_codes_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
    ):
        """The user's clips -> concepts `[clips, slots, thinker_hidden]` and their mask `[clips, slots]`, or None
        when no audio is given.

        Audio comes as waveforms (`input_values` `[clips, samples]` at `config.input_sampling_rate`), as the ear's
        frames computed beforehand (`input_features` `[clips, frames, ear width]`, e.g. stored with a dataset), or,
        for a model that hears through its codec, as codec codes (`input_audio_codes` `[clips, codebooks, frames]`).
        Masks mark real samples / frames.
        """
        given = [name for name, value in (("input_values", input_values), ("input_audio_codes", input_audio_codes),
                                          ("input_features", input_features)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass the user's audio one way only, got {' and '.join(given)}.")
        if not given:
            return None
        if self.ear is None:
            if input_features is not None:
                raise ValueError("This model hears through its codec (no ear_config): pass input_values or "
                                 "input_audio_codes, not input_features.")
            if input_values is not None:
                input_audio_codes, input_audio_codes_mask = self.encode_audio(input_values, input_values_mask)
            return self.get_concepts(input_audio_codes, input_audio_codes_mask)
        if input_audio_codes is not None:
            raise ValueError(
                "This model hears through its ear (Whisper's encoder), not codec codes: pass the audio as "
                f"input_values ({self.config.input_sampling_rate} Hz, from ConceptTalkerProcessor) or the ear's frames "
                "as input_features (a dataset made for a codec ear has question_codes only: rebuild it with "
                "concept-talker synth for this model)."
            )
        if input_values is not None:
            input_features, input_features_mask = self.ear(input_values, input_values_mask)
        elif input_features.shape[-1] != self.ear.feature_size:
            raise ValueError(
                f"input_features are {input_features.shape[-1]} wide but this model's ear gives "
                f"{self.ear.feature_size}-wide frames: they were made by another speech encoder; rebuild them with "
                "this model's (concept-talker synth)."
            )
        features = input_features.to(self.concept_adapter.frame_proj.weight.dtype)
        return self.concept_adapter(features, input_features_mask)

    def merge_concepts(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, concepts: torch.Tensor, concept_mask: torch.Tensor
    ) -> torch.Tensor:
        """Write each clip's concepts into the `<|audio_pad|>` positions of the text, clips in reading order."""
        placeholder = input_ids == self.config.audio_token_id
        real = concepts[concept_mask]
        if int(placeholder.sum()) != real.shape[0]:
            raise ValueError(
                f"The text has {int(placeholder.sum())} <|audio_pad|> slots but the audio makes {real.shape[0]} "
                f"concepts ({self.config.adapter_config.concepts_per_window} per "
                f"{self.config.adapter_config.window_seconds:g} s window): build inputs with ConceptTalkerProcessor, "
                "which gives each clip the right number of slots."
            )
        inputs_embeds = inputs_embeds.clone()
        inputs_embeds[placeholder] = self.concepts_for_thinker(real).to(inputs_embeds.dtype)
        return inputs_embeds

    def thinker_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, concepts=None,
                       vocabulary: torch.Tensor | None = None, **audio) -> tuple[torch.Tensor, torch.Tensor]:
        """What the thinker reads: input embeddings `[batch, length, hidden]` (concepts at the audio placeholders) and
        the attention mask `[batch, length]` with the blank concepts' positions left out, as padding (`concept_keep`,
        over `vocabulary` when given). `audio` as `hear` takes it, or `concepts` from `hear`."""
        if concepts is None:
            concepts = self.hear(**audio)
        inputs_embeds = self.embed_inputs(input_ids, concepts=concepts)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if concepts is not None:
            keep = self.concept_keep(*concepts, vocabulary)[concepts[1]]  # one flag per real concept, in reading order
            placeholder = input_ids == self.config.audio_token_id
            dropped = torch.zeros_like(placeholder)
            dropped[placeholder] = ~keep.to(placeholder.device)
            attention_mask = attention_mask * (~dropped).to(attention_mask.dtype)
        return inputs_embeds, attention_mask

    def embed_inputs(self, input_ids: torch.Tensor, concepts=None, **audio) -> torch.Tensor:
        """Thinker input embeddings `[batch, length, hidden]`, with concepts at the audio placeholders.

        `audio`: the user's clips, any way `hear` takes them; or `concepts` (what `hear` returned) already.
        """
        inputs_embeds = self.get_input_embeddings()(input_ids)
        has_placeholders = bool((input_ids == self.config.audio_token_id).any())
        if concepts is None:
            concepts = self.hear(**audio)
        if concepts is None:
            if has_placeholders:
                raise ValueError(
                    "The text has <|audio_pad|> placeholders but no audio was given: pass input_values (or "
                    "input_features / input_audio_codes) with the clips they stand for."
                )
            return inputs_embeds
        return self.merge_concepts(input_ids, inputs_embeds, *concepts)

    def get_voice_concepts(self, codes: torch.Tensor, frame_mask: torch.Tensor | None = None,
                           voice_f0: torch.Tensor | None = None) -> torch.Tensor:
        """A reference voice as the talker's style concepts.

        The clip goes through the concept adapter like speech does, read by the adapter's style queries (averaged
        over its windows), so a clip of any length (1-5 s) gives the talker the same number of style positions.
        Checkpoints without style queries (`adapter_config.style_queries=False`, format version 1) pool the clip's
        content concepts into that many equal stretches instead. With `talker_config.voice_pitch`, the clip's
        median F0 follows as one more position.

        Args:
            codes: `[batch, codebooks, frames]` codec codes of one reference clip per row.
            frame_mask: `[batch, frames]`, True for real frames.
            voice_f0: `[batch]` each clip's median F0 in Hz (0 where unvoiced), if already measured (the dataset's
                `reference_f0`); otherwise, where needed, the codes are decoded and their pitch measured.

        Returns:
            style embeddings `[batch, num_style_concepts (+ 1 with voice_pitch), thinker_hidden]`.
        """
        count = self.config.talker_config.num_style_concepts
        if count == 0:
            raise ValueError(
                "This model has no reference-voice input (talker_config.num_style_concepts=0): train one with "
                "num_style_concepts > 0 (e.g. the tiny-lyra recipe) to speak in a given voice."
            )
        if self.concept_adapter.style_queries is not None:
            style = self.concept_adapter.style(self.adapter_latents(codes, "voice_audio_codes"), frame_mask)
        else:
            concepts, concept_mask = self.get_concepts(codes, frame_mask)
            pooled = []
            for row in range(concepts.shape[0]):
                real = concepts[row, concept_mask[row]]  # [n, hidden]
                pooled.append(F.adaptive_avg_pool1d(real.T[None], count)[0].T)
            style = torch.stack(pooled)
        if self.talker.pitch_proj is None:
            return style
        if voice_f0 is None:
            waves = self.codec.decode(codes)  # checked above, by the adapter's reading
            samples = None if frame_mask is None else frame_mask.sum(-1) * self.codec.hop_length
            voice_f0 = clips_median_f0(waves, samples, self.codec.sampling_rate)
        elif voice_f0.shape != (codes.shape[0],):
            raise ValueError(
                f"voice_f0 has shape {tuple(voice_f0.shape)}; give one median F0 (Hz) per reference clip, shape "
                f"[{codes.shape[0]}]."
            )
        pitch = self.talker.pitch_concept(voice_f0.to(style.device)).to(style.dtype)
        return torch.cat([style, pitch], dim=1)

    def voice_style(self, voice_values=None, voice_values_mask=None, voice_audio_codes=None, voice_audio_codes_mask=None,
                    voice_f0=None):
        """Style embeddings `[batch, style positions, hidden]` (`get_voice_concepts`) of reference clips given as
        audio (at the codec's rate, from the processor's `voice=`) or as codes; None when no clip is given."""
        if voice_values is not None:
            if voice_f0 is None and self.talker.pitch_proj is not None:
                samples = None if voice_values_mask is None else voice_values_mask.sum(-1)
                voice_f0 = clips_median_f0(voice_values, samples, self.codec.sampling_rate)
            voice_audio_codes, voice_audio_codes_mask = self.encode_audio(voice_values, voice_values_mask)
        if voice_audio_codes is None:
            return None
        return self.get_voice_concepts(voice_audio_codes, voice_audio_codes_mask, voice_f0)

    # ---- forward ---------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_values: torch.FloatTensor | None = None,
        input_values_mask: torch.Tensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        input_audio_codes: torch.LongTensor | None = None,
        input_audio_codes_mask: torch.Tensor | None = None,
        concept_labels: torch.LongTensor | None = None,
        text_vocabulary: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        audio_labels: torch.LongTensor | None = None,
        reply_symbols: torch.LongTensor | None = None,
        reply_symbol_tokens: torch.LongTensor | None = None,
        reply_symbol_frames: torch.LongTensor | None = None,
        voice_values: torch.FloatTensor | None = None,
        voice_values_mask: torch.Tensor | None = None,
        voice_audio_codes: torch.LongTensor | None = None,
        voice_audio_codes_mask: torch.Tensor | None = None,
        voice_f0: torch.FloatTensor | None = None,
        voice_given: torch.Tensor | None = None,
        style_embeds: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> ConceptTalkerOutput:
        """One teacher-forced pass.

        Args:
            input_ids: `[batch, length]` chat text with `<|audio_pad|>` slots (from `ConceptTalkerProcessor`).
            attention_mask: `[batch, length]`.
            input_values: `[clips, samples]` user audio at `config.input_sampling_rate`, one row per clip, in
                reading order; `input_values_mask` `[clips, samples]`, 1 for real samples.
            input_features: `[clips, frames, ear width]` the same audio as the ear's frames, computed beforehand;
                `input_features_mask` `[clips, frames]`. (Models that hear through the codec take
                `input_audio_codes` `[clips, codebooks, frames]` with `input_audio_codes_mask` instead.)
            concept_labels: `[clips, slots]` the token spoken in each concept's stretch of time (or the blank token),
                -100 where no loss applies (`concept_loss`).
            text_vocabulary: `[tokens]` ids: score the text and concept losses over these tokens only instead of the
                whole vocabulary (a small thinker trained from scratch on one domain needs no other; the softmax over
                Qwen2.5's 151,936 rows is most of its training step). Every label must be in it.
            labels: `[batch, length]` reply-text labels, `-100` where no loss applies (unshifted, as in HF causal LMs).
            audio_labels: `[batch, codebooks, frames]` codec codes of the spoken reply, `-100` after each reply ends.
                Needs `labels` (the talker reads the thinker's states of the labelled reply tokens) and the reply's
                symbols. A row with no frame (all -100: a transcription turn among the replies) has nothing to speak:
                the talker skips it.
            reply_symbols: `[batch, symbols]` the reply's symbols (`phonemes.symbol_ids`), padded with -100.
            reply_symbol_tokens: `[batch, symbols]` for each symbol, the index of its reply token among the labelled
                tokens (0 = the first).
            reply_symbol_frames: `[batch, symbols]` each symbol's length in codec frames (they add up to the reply's
                frames).
            voice_values: `[batch, samples]` a reference clip of the voice to speak in, one per row, at the codec's
                rate (`voice_values_mask` marks real samples); or as codes, `voice_audio_codes` `[batch, codebooks,
                frames]` with `voice_audio_codes_mask` `[batch, frames]`.
            voice_f0: `[batch]` the reference clips' median F0 (Hz, 0 where unvoiced), if already measured (the
                collator passes the dataset's `reference_f0`); measured from the clips otherwise.
            voice_given: `[batch]` bool, which rows' reference clips count; the others speak in the house voice.
            style_embeds: `[batch, style positions, hidden]` reference-voice concepts, if already computed.
        """
        concepts = None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids (from ConceptTalkerProcessor) or inputs_embeds.")
            concepts = self.hear(input_values, input_values_mask, input_audio_codes, input_audio_codes_mask,
                                 input_features, input_features_mask)
            inputs_embeds, attention_mask = self.thinker_inputs(input_ids, attention_mask, concepts=concepts,
                                                                vocabulary=text_vocabulary)
            if position_ids is None:  # the positions of what is read: left-out blank concepts take none
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if audio_labels is not None and (labels is None or reply_symbols is None):
            raise ValueError("audio_labels need text labels and the reply's symbols (reply_symbols, "
                             "reply_symbol_tokens, reply_symbol_frames): the talker speaks the reply's phonemes.")
        voice = self.voice_style(voice_values, voice_values_mask, voice_audio_codes, voice_audio_codes_mask, voice_f0)
        style_embeds = voice if voice is not None else style_embeds

        kwargs.pop("num_items_in_batch", None)
        output = ConceptTalkerOutput()
        losses = []
        if concept_labels is not None:
            if concepts is None:
                raise ValueError("concept_labels need the user's audio (input_values or input_features).")
            output.concept_loss, output.concept_accuracy = self.concept_loss(*concepts, concept_labels, text_vocabulary)
            losses.append(self.config.concept_loss_weight * output.concept_loss)
            if labels is None:  # the concepts alone are being taught: no need to run the thinker
                output.loss = sum(losses)
                return output

        thinker_out = self.thinker.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache if use_cache is not None else labels is None,
            **kwargs,
        )
        hidden = thinker_out.last_hidden_state
        output.cache = getattr(thinker_out, "cache", None)

        if labels is None:
            output.logits = self.thinker.lm_head(hidden)
        else:
            targets = labels[:, 1:]
            scored = targets != IGNORE_INDEX
            if not bool(scored.any()):
                raise ValueError("labels has no token to learn (all -100): mark the reply tokens with their ids.")
            chosen = hidden[:, :-1][scored]  # only where there is a label
            if text_vocabulary is None:
                output.text_loss = F.cross_entropy(self.thinker.lm_head(chosen).float(), targets[scored])
            else:
                logits = F.linear(chosen, self.thinker.lm_head.weight[text_vocabulary])
                output.text_loss = F.cross_entropy(logits.float(), vocabulary_index(text_vocabulary, targets[scored]))
            losses.append(output.text_loss)

        if audio_labels is not None and bool((audio_labels[:, 0] != IGNORE_INDEX).any()):  # a row has words to speak
            symbols = (reply_symbols, reply_symbol_tokens, reply_symbol_frames)
            audio_loss, per_codebook, duration_loss, audio_logits, audio_targets = self._audio_loss(
                hidden, inputs_embeds, input_ids, labels, audio_labels, symbols, style_embeds, voice_given,
                attention_mask
            )
            output.audio_loss, output.audio_codebook_losses = audio_loss, per_codebook
            output.audio_logits, output.audio_targets = audio_logits, audio_targets
            output.duration_loss = duration_loss
            weight = self.config.audio_loss_weight
            losses.append(weight * (audio_loss + self.config.talker_config.duration_loss_weight * duration_loss))

        if losses:
            output.loss = sum(losses)
        return output

    def _audio_loss(self, hidden, inputs_embeds, input_ids, labels, audio_labels, symbols, style_embeds, voice_given,
                    attention_mask=None):
        """The talker's losses (`ConceptTalkerTalkerModel.reply_loss`) on the rows with a reply to speak."""
        if input_ids is None:
            raise ValueError("audio_labels need input_ids to find the reply tokens the talker reads.")
        spoken = (audio_labels[:, 0] != IGNORE_INDEX).any(-1)
        if not bool(spoken.all()):  # rows with nothing to speak (transcription turns): the talker reads the others
            hidden, inputs_embeds, input_ids, labels, audio_labels, style_embeds, voice_given, attention_mask = (
                None if t is None else t[spoken] for t in
                (hidden, inputs_embeds, input_ids, labels, audio_labels, style_embeds, voice_given, attention_mask))
            symbols = tuple(t[spoken] for t in symbols)
        self.codec.check_codes(torch.where(audio_labels == IGNORE_INDEX, 0, audio_labels), "audio_labels")
        states, token_embeds, _ = reply_states(hidden, input_ids, labels, self.get_input_embeddings())
        prompt = reply_prompt_states(hidden, inputs_embeds, labels, self.config.talker_config.prompt_states,
                                     attention_mask)
        return self.talker.reply_loss(*symbols, audio_labels.long(), states, token_embeds, prompt, style_embeds, voice_given)

    # ---- spoken replies --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_values: torch.FloatTensor | None = None,
        input_values_mask: torch.Tensor | None = None,
        input_audio_codes: torch.LongTensor | None = None,
        input_audio_codes_mask: torch.Tensor | None = None,
        voice_values: torch.FloatTensor | None = None,
        voice_values_mask: torch.Tensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        style_embeds: torch.FloatTensor | None = None,
        streamer=None,
        reply_token_ids=None,
        tokenizer=None,
        **settings,
    ):
        """Answer a batch of spoken turns with reply text, reply audio codes and reply waveforms.

        Inputs are those of `forward` (from `ConceptTalkerProcessor`; left padding for batches). Settings are
        keywords of [`SpokenGenerationConfig`], prefixed by the part they steer: `thinker_max_new_tokens`,
        `thinker_do_sample`, `thinker_temperature`, `talker_do_sample`, `talker_temperature`, `talker_top_k`,
        `max_audio_seconds`, `seed`. Those not given come from the checkpoint's `generation_config.json` where it
        holds them (its recipe's tuned `talker_temperature`, say), else from `SpokenGenerationConfig`'s defaults.
        Greedy decoding of both parts is deterministic.

        With `streamer` (an [`AudioIteratorStreamer`]), audio chunks are handed over as soon as they exist.
        With `reply_token_ids` (per row, token ids), the model speaks that text instead of choosing its own.
        With `voice_values` (the processor's `voice=` clip), it speaks in that voice; without, in its house voice.
        `tokenizer` spells the reply for the talker's phonemes (default: `model.tokenizer`, attached when the
        checkpoint holds one).

        Returns:
            [`SpokenReply`]: `sequences` (reply text ids; decode with the processor), `audio_codes`, `waveforms`
            (float32 numpy, `sampling_rate` Hz) and `timings`. For text-only generation with transformers'
            own loop, use `generate_text`.
        """
        from .generation import ReplyTimer, SpokenGenerationConfig, prefill, run_spoken_reply

        timer = ReplyTimer()
        config = SpokenGenerationConfig.for_model(self, settings)
        inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask, "input_values": input_values,
            "input_values_mask": input_values_mask, "input_audio_codes": input_audio_codes,
            "input_audio_codes_mask": input_audio_codes_mask, "input_features": input_features,
            "input_features_mask": input_features_mask,
        }
        if input_ids is None:
            raise ValueError("generate needs input_ids: build the inputs with ConceptTalkerProcessor.")
        runner, logits, hidden, prompt = prefill(self, inputs, config)
        voice = self.voice_style(voice_values, voice_values_mask)
        style_embeds = voice if voice is not None else style_embeds
        if reply_token_ids is not None and isinstance(reply_token_ids, torch.Tensor):
            reply_token_ids = reply_token_ids.tolist()
        return run_spoken_reply(self, runner, logits, hidden, config, style_embeds, streamer, timer, reply_token_ids,
                                prompt, tokenizer)

    def set_reply_defaults(self, **settings) -> None:
        """Make `settings` ([`SpokenGenerationConfig`] keywords, e.g. `talker_temperature=0.5`) this model's defaults
        for `generate`, `stream` and `SpokenTurn`; `save_pretrained` writes them to generation_config.json."""
        from .generation import SpokenGenerationConfig

        SpokenGenerationConfig.for_model(self, settings)  # checks the names and values
        for name, value in settings.items():
            setattr(self.generation_config, name, value)
        # A config marked as derived from the model's config loses its extra attributes when loaded.
        self.generation_config._from_model_config = False

    def stream(self, style_embeds: torch.FloatTensor | None = None, **inputs_and_settings):
        """Like `generate` (same inputs, `reply_token_ids`, `tokenizer` and settings), but yields [`AudioChunk`]s
        (float32 numpy + sampling rate) as soon as each exists.

        The chunks joined are the reply audio; stopping the iteration early stops generation.
        """
        from .generation import SpokenGenerationConfig, prefill, spoken_reply_events

        names = ("input_ids", "attention_mask", "input_values", "input_values_mask", "input_audio_codes",
                 "input_audio_codes_mask", "input_features", "input_features_mask")
        inputs = {k: inputs_and_settings.pop(k) for k in names if k in inputs_and_settings}
        voice_values = inputs_and_settings.pop("voice_values", None)
        voice_values_mask = inputs_and_settings.pop("voice_values_mask", None)
        tokenizer = inputs_and_settings.pop("tokenizer", None)
        reply_token_ids = inputs_and_settings.pop("reply_token_ids", None)
        if isinstance(reply_token_ids, torch.Tensor):
            reply_token_ids = reply_token_ids.tolist()
        config = SpokenGenerationConfig.for_model(self, inputs_and_settings)
        with torch.no_grad():
            runner, logits, hidden, prompt = prefill(self, inputs, config)
            voice = self.voice_style(voice_values, voice_values_mask)
        style_embeds = voice if voice is not None else style_embeds
        events = spoken_reply_events(self, runner, logits, hidden, config, style_embeds, decode_stream=True,
                                     reply_tokens=reply_token_ids, prompt=prompt, tokenizer=tokenizer)
        for kind, payload in events:
            if kind == "audio":
                yield payload

    def generate_text(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Reply text only, through transformers' own `generate` on the thinker: the prompt read as `generate` reads
        it (concepts at the audio slots, blank concepts left out), then the usual generation arguments
        (`max_new_tokens`, `do_sample`, `num_beams`, logits processors, ...). Audio goes in as for `forward`
        (`input_values`, `input_features`, ...).

        Returns:
            `[batch, new tokens]` the reply's token ids only (decode with the processor); greedy, the same text as
            `generate`'s `sequences`.
        """
        from .generation import left_aligned

        audio_names = ("input_values", "input_values_mask", "input_audio_codes", "input_audio_codes_mask",
                       "input_features", "input_features_mask")
        audio = {name: kwargs.pop(name) for name in audio_names if name in kwargs}
        with torch.no_grad():
            embeds, attention_mask = self.thinker_inputs(input_ids, attention_mask, **audio)
        embeds, attention_mask = left_aligned(embeds, attention_mask)
        kwargs.setdefault("eos_token_id", list(self.config.reply_end_token_ids))
        kwargs.setdefault("pad_token_id", self.generation_config.pad_token_id)
        return self.thinker.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


__all__ = ["ConceptTalkerForConditionalGeneration", "ConceptTalkerPreTrainedModel", "ConceptTalkerOutput"]

ConceptTalkerForConditionalGeneration.register_for_auto_class("AutoModel")
