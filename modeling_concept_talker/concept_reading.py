"""How concepts are read as tokens (`ConceptReadingMixin`, part of `ConceptTalkerForConditionalGeneration`).

A concept is read as a token by its cosine with each token's row of a table, times `config.concept_logit_scale`:
    readout "thinker":  the rows are the thinker's input embeddings; the thinker reads the concept itself
    readout "sound":    the rows are the adapter's table of how tokens sound (`phonemes.token_sound_table`); the
                        thinker reads the embedding of the token the concept is read as
Concepts read as the blank token are left out of what the thinker reads (`concept_keep`); training scores each
concept against the token spoken in its stretch of time (`concept_loss`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .talker import IGNORE_INDEX


def tokens_sound_table(tokenizer, token_ids: torch.Tensor, width: int, seed: int = 0, special=()) -> torch.Tensor:
    """`phonemes.token_sound_table` of the tokens `token_ids` `[tokens]` -> `[tokens, width]`, from their text;
    special tokens (the tokenizer's and `special`, such as the concept blank) get a vector of their own."""
    from .phonemes import token_sound_table

    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder) | set(special)
    pieces = ["" if token in special else tokenizer.decode([token]) for token in token_ids.tolist()]
    return token_sound_table(pieces, width, seed)


class ConceptReadingMixin:
    """Reading the concept adapter's concepts as the thinker's tokens. Needs `config` (a `ConceptTalkerConfig`),
    `concept_adapter` and `get_input_embeddings()`."""

    def concept_logits(self, concepts: torch.Tensor, vocabulary: torch.Tensor | None = None) -> torch.Tensor:
        """How much each concept reads as each token: `[..., thinker_hidden]` -> `[..., tokens]` over the tokens
        `concept_tokens(vocabulary)` gives: the cosine similarity of the concept with each token's row, times
        `config.concept_logit_scale` (cosine, so that a token whose row is short, such as the blank's, can be read as
        well as any). The rows are the thinker's input embeddings (`readout: thinker`; `vocabulary`: those tokens
        only, all by default) or the adapter's table of how its tokens sound (`readout: sound`)."""
        sounds = self._token_sounds()
        if sounds is not None:
            table = sounds.float()
        else:
            weight = self.get_input_embeddings().weight
            if vocabulary is None and not torch.is_grad_enabled():
                table = self._unit_embeddings(weight)
            else:
                table = F.normalize((weight if vocabulary is None else weight[vocabulary]).float(), dim=-1)
        return self.config.concept_logit_scale * F.normalize(concepts.float(), dim=-1) @ table.T

    def concept_tokens(self, vocabulary: torch.Tensor | None = None) -> torch.Tensor | None:
        """The token ids `concept_logits` reads over, in its order: `vocabulary` (None: every id) with the thinker's
        readout, the sound table's tokens with the sound readout."""
        return self.concept_adapter.sound_tokens if self._token_sounds() is not None else vocabulary

    def _token_sounds(self) -> torch.Tensor | None:
        """The adapter's sound table (`readout: sound`), or None; an error if it was never filled in."""
        sounds = self.concept_adapter.token_sounds
        if sounds is not None and sounds.shape[0] == 0:
            raise ValueError("This model reads concepts by sound (adapter_config.readout='sound') but its sound table "
                             "is empty: build it with model.use_sound_readout(tokenizer) before training.")
        return sounds

    def use_sound_readout(self, tokenizer, token_ids=None, seed: int = 0) -> None:
        """Read concepts by how tokens sound (`readout: sound`): build the adapter's table of `token_ids` (default:
        every token of `tokenizer`; the blank token is always added) with `tokens_sound_table`. Needs espeak-ng; the
        table is saved with the model."""
        ids = torch.arange(len(tokenizer)) if token_ids is None else torch.as_tensor(token_ids, dtype=torch.long)
        blank = self.config.concept_blank_token_id
        if not bool((ids == blank).any()):
            ids = torch.cat([ids, torch.tensor([blank])])
        self.config.adapter_config.readout = "sound"  # the adapter's own config: one object
        table = tokens_sound_table(tokenizer, ids, self.config.thinker_config.hidden_size, seed, special=(blank,))
        self.concept_adapter.set_token_sounds(ids, table)

    def concepts_for_thinker(self, concepts: torch.Tensor) -> torch.Tensor:
        """What the thinker reads for concepts `[..., thinker_hidden]`: the concepts themselves (`readout:
        thinker`), or the thinker's embedding of the token each reads as by sound (`readout: sound`).

        Read by sound, the thinker's losses do not reach the adapter, which learns from its slots' tokens alone
        (`concept_loss`): a straight-through gradient (the chosen embedding forward, the softmax-weighted mean of the
        embeddings backward) let the thinker's transcript loss, confident on wrongly read tokens, swamp the concept
        loss (r11's first align stage: concept accuracy stalled at 0.62 from step 160, against 0.78 by step 1,000
        without it)."""
        if self._token_sounds() is None:
            return concepts
        with torch.no_grad():
            read = self.concept_logits(concepts).argmax(-1)
        return self.get_input_embeddings().weight[self.concept_adapter.sound_tokens[read]].to(concepts.dtype)

    def _unit_embeddings(self, weight: torch.Tensor) -> torch.Tensor:
        """The input embeddings scaled to unit length (fp32), made once and reused while the weights are unchanged:
        normalising Qwen2.5's 151,936 rows took most of half a second per window of streamed speech (0.5b preset)."""
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        cached = getattr(self, "_unit_embeddings_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, F.normalize(weight.float(), dim=-1))
            self._unit_embeddings_cache = cached
        return cached[1]

    def concept_keep(self, concepts: torch.Tensor, concept_mask: torch.Tensor,
                     vocabulary: torch.Tensor | None = None) -> torch.Tensor:
        """Which concepts the thinker reads: `[clips, slots]`, True for real slots that do not read as the blank
        token. Blank concepts (no token was spoken in their stretch of time) are left out, as padding is, so the thinker
        reads the spoken tokens one after the other, as it reads text. `vocabulary` (training's `text_vocabulary`):
        read among those tokens only (the whole vocabulary's table is most of a small model's training step)."""
        with torch.no_grad():
            read = self.concept_logits(concepts, vocabulary).argmax(-1)
            tokens = self.concept_tokens(vocabulary)
            blank = (read if tokens is None else tokens.to(read.device)[read]) == self.config.concept_blank_token_id
        return concept_mask & ~blank

    def concept_loss(self, concepts: torch.Tensor, concept_mask: torch.Tensor, concept_labels: torch.Tensor,
                     vocabulary: torch.Tensor | None = None):
        """How far the concepts are from the tokens spoken in their stretch of time.

        Args:
            concepts: `[clips, slots, thinker_hidden]`; concept_mask: `[clips, slots]` real slots.
            concept_labels: `[clips, slots]` the token each slot stands for (`config.concept_blank_token_id` where
                none was spoken), -100 where no loss applies.

        Returns:
            the loss (cross-entropy of each concept read as a token, `concept_logits`; with the thinker's readout
            plus the squared distance to the label's embedding, averaged over its width) and the accuracy of that
            reading.
        """
        if concept_labels.shape != concept_mask.shape:
            raise ValueError(f"concept_labels has shape {tuple(concept_labels.shape)} but the audio makes concepts of "
                             f"shape {tuple(concept_mask.shape)}: give one label per concept slot of each clip.")
        scored = concept_mask & (concept_labels != IGNORE_INDEX)
        if not bool(scored.any()):
            raise ValueError("concept_labels has no slot to learn (all -100).")
        chosen = concepts[scored].float()
        labels = concept_labels[scored]
        logits = self.concept_logits(chosen, vocabulary)
        if self._token_sounds() is None:
            distance = F.mse_loss(chosen, self.get_input_embeddings().weight[labels].float())
            labels = labels if vocabulary is None else vocabulary_index(vocabulary, labels)
            return F.cross_entropy(logits, labels) + distance, (logits.argmax(-1) == labels).float().mean()
        # By sound: a token outside the table cannot be read. In training that is a table built over too few
        # tokens; in evaluation (held-out words) the slot is a miss.
        sound_tokens = self.concept_adapter.sound_tokens
        readable = torch.isin(labels, sound_tokens)
        if self.training and not bool(readable.all()):
            missing = sorted(set(labels[~readable].tolist()))[:5]
            raise ValueError(f"Label token(s) {missing} are not in the sound table: build it over every token the model "
                             "is taught, model.use_sound_readout(tokenizer, token_ids).")
        places = vocabulary_index(sound_tokens, torch.where(readable, labels, sound_tokens[0]))
        places = torch.where(readable, places, IGNORE_INDEX)
        cross_entropy = F.cross_entropy(logits, places) if bool(readable.any()) else logits.sum() * 0.0
        return cross_entropy, (logits.argmax(-1) == places).float().mean()


def vocabulary_index(vocabulary: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Token ids -> their places in `vocabulary` (`[tokens]`, distinct ids); a ValueError names ids outside it."""
    places = torch.full((int(vocabulary.max()) + 1,), -1, dtype=torch.long, device=vocabulary.device)
    places[vocabulary] = torch.arange(len(vocabulary), device=vocabulary.device)
    inside = ids <= int(vocabulary.max())
    mapped = torch.where(inside, places[ids.clamp(max=int(vocabulary.max()))], -1)
    if bool((mapped < 0).any()):
        missing = sorted(set(ids[mapped < 0].tolist()))[:5]
        raise ValueError(f"Label token(s) {missing} are not in text_vocabulary: build the vocabulary from every text "
                         "the model is taught (concept_talker.data.collators.data_vocabulary).")
    return mapped
