"""Collators: dataset rows (texts, the ear's frames or codec codes, timings) -> padded model inputs for each task.

Tasks, and the formats they teach (the prompt is `build_prompt`'s, so training sees what generation sees):

    text        stage 0, text only. The spoken question is given as the tokens the concept adapter is taught to
                write for it (`concept_slot_labels`, blanks left out, as the thinker reads concepts), so the thinker
                learns to read them before it ever hears one:
                  user: <tokens> "\\nTranscribe the audio."  -> assistant: "<question text>"
                  user: <tokens>["\\n<instruction>"]         -> assistant: "<reply text>"
                (each dialogue row is one or the other, fixed by its id; general-English rows always transcribe).
                With `copy_turns`, that share of the rows is replaced by fresh copy turns (`CopyTurns`): a new
                sentence of random common words, to transcribe or to repeat. A thousand fixed sentences teach a small
                thinker to fill templates; a stream of sentences it never saw before teaches it to copy.
    transcribe  stage 1, alignment. user: <|audio_pad|> "\\nTranscribe the audio." -> assistant: "<question text>",
                and `concept_labels`: the token of each concept slot (the dense signal).
    reply       stage 2, generation. user: <|audio_pad|> ["\\n<instruction>"] -> assistant: "<reply text>", with
                `concept_labels`, the reply's codec codes as `audio_labels`, its symbols with their tokens and frames
                (`reply_symbols`, `reply_symbol_tokens`, `reply_symbol_frames`), and the reference voice's codes
                where the row gives one (`voice_given`). With `transcribe_turns`, that share of the rows transcribes
                its question instead (the transcribe format above, no reply audio: its `audio_labels` are all -100,
                and the talker skips it), so that the thinker's LoRA keeps reading the concepts while it learns to
                answer. With `copy_turns`, that share of the rows is a text copy turn (as in the text stage; silent
                too), so that the LoRA keeps copying what it reads while it learns the replies.

Padding is on the right; labels are -100 outside the assistant's answer (which ends with `<|im_end|>`), audio labels
-100 after each reply's frames, and masks False after each clip's frames.
"""

from __future__ import annotations

import bisect
import random
import zlib

import numpy as np
import torch

from modeling_concept_talker import DEFAULT_SYSTEM_PROMPT, build_prompt
from modeling_concept_talker.configuration_concept_talker import AUDIO_END_TOKEN, AUDIO_START_TOKEN, AUDIO_TOKEN
from modeling_concept_talker.phonemes import symbol_ids
from modeling_concept_talker.talker import IGNORE_INDEX
from concept_talker.data.dialogue import english_words, repeat_instruction, word_sentence

TRANSCRIBE_TASK = "Transcribe the audio."
END_OF_TURN = "<|im_end|>"
TASKS = ("text", "transcribe", "reply")


def is_transcription_row(row_id: str) -> bool:
    """In the text stage, half of the dialogue rows (fixed by a hash of their id) teach copying, the rest answering;
    question-only rows (of the `transcribe` and `questions` splits) always teach copying."""
    return str(row_id).startswith(("transcribe-", "questions-")) or zlib.crc32(str(row_id).encode()) % 2 == 0


def codes_tensor(codes, name: str, num_codebooks: int) -> torch.Tensor:
    """A row's `[codebooks][frames]` int16 lists -> LongTensor `[codebooks, frames]`, checked."""
    tensor = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    if tensor.ndim != 2 or tensor.shape[0] != num_codebooks or tensor.shape[1] == 0:
        raise ValueError(
            f"{name} must be [{num_codebooks} codebooks][frames] with at least one frame, got shape "
            f"{tuple(tensor.shape)}: was the dataset made with this model's codec (concept-talker synth --codec ...)?"
        )
    return tensor


def token_char_ends(tokenizer, ids: list[int]) -> list[int]:
    """Where each token's text ends in the text the tokens spell, as generation sees it: the length of the text of
    tokens `0..i` decoded together (special tokens spell nothing)."""
    return [len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)) for i in range(len(ids))]


def concept_slot_labels(text: str, word_spans, word_seconds, tokenizer, windows: int, per_window: int,
                        window_seconds: float, blank_id: int) -> list[int]:
    """The token each concept slot stands for: `[windows * per_window]` ids, `blank_id` where none was spoken.

    Each token of `text` (as the thinker writes it) is given a time: tokens of a word share out the word's span
    (`word_spans` characters, `word_seconds` seconds, from the TTS); a token outside every word (punctuation) takes the
    end of the word before it. A token goes to the slot of its window whose share of the window holds its time (slot
    i of a window covers its i-th `1 / per_window`); if that slot is taken, to the nearest free one after it, then
    before it; a window with more tokens than slots drops the rest (rare: speech has 3-4 tokens a second).
    """
    labels = [blank_id] * (windows * per_window)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [tuple(map(int, span)) for span in word_spans]
    seconds = [tuple(map(float, s)) for s in word_seconds]
    tokens_of_word: dict[int, list[int]] = {}
    word_of_token = []
    for index, (start, end) in enumerate(encoded["offset_mapping"]):
        last = max(start, end - 1)  # a token's last character says which word it belongs to ("Ġword" -> word)
        word = next((w for w, (a, b) in enumerate(spans) if a <= last < b), None)
        word_of_token.append(word)
        if word is not None:
            tokens_of_word.setdefault(word, []).append(index)
    time = 0.0
    for index, token in enumerate(encoded["input_ids"]):
        word = word_of_token[index]
        if word is None:
            previous = [w for w in range(len(spans)) if spans[w][1] <= encoded["offset_mapping"][index][0]]
            time = seconds[previous[-1]][1] if previous else time
        else:
            share = tokens_of_word[word]
            start, end = seconds[word]
            time = start + (share.index(index) + 0.5) / len(share) * (end - start)
        window = min(max(int(time // window_seconds), 0), windows - 1)
        slot = min(int((time / window_seconds - window) * per_window), per_window - 1)
        order = list(range(slot, per_window)) + list(range(slot - 1, -1, -1))
        free = [s for s in order if labels[window * per_window + s] == blank_id]
        if free:
            labels[window * per_window + free[0]] = int(token)
    return labels


def symbol_tokens(chars, answer_ids: list[int], tokenizer) -> list[int]:
    """For each reply symbol (its character in the reply text), the index of the answer token that holds it: the
    token the talker reads the thinker's state of, found as generation finds it (`TalkerStream.add_token`)."""
    ends = token_char_ends(tokenizer, answer_ids)
    return [min(bisect.bisect_right(ends, int(c)), len(answer_ids) - 1) for c in chars]


class CopyTurns:
    """Copy turns for the text stage, drawn fresh for every batch: a sentence of 2-14 random common English words
    (`english_words`), given as its tokens, to transcribe (half of them) or to repeat after a training phrasing of
    "repeat after me"; the answer is the sentence.

    Args:
        share: the chance that a row of the batch is replaced by a copy turn, in [0, 1].
        seed: seeds the stream (a resumed run draws new sentences, not the same ones again).
        system_turn: whether the prompt has the tutor's system turn. The copy stage leaves it out: a from-scratch
            thinker learns to copy within a few hundred steps when little comes before the tokens it copies, and
            not in 1,000 steps behind a 24-token system turn (`benchmarks/thinker_copy.py`); once learnt, the skill
            carries over to the full prompt.
    """

    WORDS = (2, 14)
    ENDS = (".", ".", ".", "?", "!")

    def __init__(self, share: float, seed: int = 0, system_turn: bool = True):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"copy_turns is the share of rows replaced by copy turns, in [0, 1]; got {share}.")
        self.share = float(share)
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_turn else None
        self.words = english_words()
        self.rng = random.Random(f"concept-talker-copy-turns/{seed}")

    def replaces(self) -> bool:
        return self.share > 0 and self.rng.random() < self.share

    def draw(self) -> tuple[str, str]:
        """(the prompt, the sentence the answer copies)."""
        rng = self.rng
        sentence = word_sentence(rng, self.words, rng.randint(*self.WORDS), end=rng.choice(self.ENDS))
        if rng.random() < 0.5:
            return build_prompt(task=TRANSCRIBE_TASK, system_prompt=self.system_prompt), sentence
        return build_prompt(repeat_instruction(rng, "train")[1], system_prompt=self.system_prompt), sentence

    @classmethod
    def vocabulary_texts(cls) -> list[str]:
        """Texts holding every token a copy turn can write (each word bare, with a space before it, capitalised,
        and with each ending), for `data_vocabulary`."""
        forms = [form for word in english_words() for form in (word, word.capitalize())]
        return [" ".join(forms), *(form + end for form in forms for end in dict.fromkeys(cls.ENDS))]


class SpokenTurnCollator:
    """Turns dataset rows into a batch for `ConceptTalkerForConditionalGeneration.forward`.

    Args:
        processor: the model's `ConceptTalkerProcessor` (tokenizer and concept-slot counting).
        task: "text", "transcribe" or "reply" (see the module docstring).
        config: the model's `ConceptTalkerConfig` (codebooks, the ear, concepts per window, the blank token, the
            talker's symbols).
        voice: with "reply", pass the reference clip's codes where the row gives one (`voice_given`), with its
            measured median F0 (`voice_f0`) where the rows carry `reference_f0`.
        concept_labels: with "transcribe" and "reply", give each concept slot its token (`concept_labels`).
        text_vocabulary: token ids the losses are scored over (`data_vocabulary`); None: the whole vocabulary.
        copy_turns: with "text" or "reply", a `CopyTurns` whose share of the rows it replaces by fresh copy turns
            (in "reply", silent rows: the talker skips them).
        transcribe_turns: with "reply", the share of rows (drawn afresh for every batch) that transcribe their
            question instead of answering it.
        seed: seeds the draw of transcription turns.
    """

    def __init__(self, processor, task: str, config, voice: bool = False, concept_labels: bool = True,
                 text_vocabulary: list[int] | None = None, copy_turns: CopyTurns | None = None,
                 transcribe_turns: float = 0.0, seed: int = 0):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        if copy_turns is not None and task not in ("text", "reply"):
            raise ValueError(f"copy turns are text turns mixed into the text or reply task; the {task!r} task (which "
                             "teaches the concepts from speech) cannot use them.")
        if transcribe_turns and task != "reply":
            raise ValueError(f"transcribe_turns mixes transcription turns among the replies (task 'reply'); the "
                             f"{task!r} task cannot use them.")
        if not 0.0 <= transcribe_turns <= 1.0:
            raise ValueError(f"transcribe_turns is a share of the rows, in [0, 1]; got {transcribe_turns}.")
        self.copy_turns = copy_turns
        self.transcribe_turns = float(transcribe_turns)
        self.transcribe_rng = random.Random(f"concept-talker-transcribe-turns/{seed}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.task = task
        self.config = config
        self.num_codebooks = config.codec_num_codebooks
        self.voice = voice
        self.with_concept_labels = concept_labels
        self.pad_id = self.tokenizer.pad_token_id
        self.per_window = config.adapter_config.concepts_per_window
        self.window_seconds = config.adapter_config.window_seconds
        self.heard_through_ear = config.ear_type != "codec"
        self.text_vocabulary = None if text_vocabulary is None else torch.tensor(sorted(set(text_vocabulary)))

    def prompt_and_answer(self, row: dict, transcribe: bool = False) -> tuple[str, str]:
        """The prompt (ending where the assistant begins) and the answer text of a row for this task (`transcribe`:
        a reply-stage row drawn as a transcription turn)."""
        instruction = row.get("instruction") or None
        transcribe = transcribe or self.task == "transcribe" or (self.task == "text" and is_transcription_row(row["id"]))
        if transcribe:
            return build_prompt(task=TRANSCRIBE_TASK), row["question_text"]
        return build_prompt(instruction), row["reply_text"]

    def windows(self, row: dict) -> int:
        """Concept-adapter windows of a row's question (as the ear or the codec frames it)."""
        if self.heard_through_ear:
            frames = len(row["question_features"])
        else:
            frames = len(row["question_codes"][0])
        return -(-frames // self.config.window_frames)

    def slot_labels(self, row: dict, windows: int) -> list[int]:
        return concept_slot_labels(row["question_text"], row["question_word_spans"], row["question_word_seconds"],
                                   self.tokenizer, windows, self.per_window, self.window_seconds,
                                   self.config.concept_blank_token_id)

    def _prompt_ids(self, prompt: str, slots: list[int] | None) -> list[int]:
        """Token ids of a prompt whose `<|audio_pad|>` is replaced by the question's tokens (text stage), or expanded
        to one placeholder per concept (speech stages)."""
        before, after = prompt.split(AUDIO_TOKEN)
        ids = self.tokenizer(before + AUDIO_START_TOKEN, add_special_tokens=False).input_ids
        ids += slots if slots is not None else []
        return ids + self.tokenizer(AUDIO_END_TOKEN + after, add_special_tokens=False).input_ids

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, labels, clips, concept_labels = [], [], [], []
        replies, symbols, voices, voice_f0, voice_given = [], [], [], [], []
        audio_id = self.config.audio_token_id
        for row in rows:
            silent = False  # a reply-stage row with nothing to speak: a transcription or copy turn
            if self.copy_turns is not None and self.copy_turns.replaces():
                prompt, answer = self.copy_turns.draw()
                prompt_ids = self._prompt_ids(prompt, self.tokenizer(answer, add_special_tokens=False).input_ids)
                silent = True
            elif self.task == "text":
                prompt, answer = self.prompt_and_answer(row)
                blank = self.config.concept_blank_token_id
                slots = self.slot_labels(row, self.windows(row))
                prompt_ids = self._prompt_ids(prompt, [token for token in slots if token != blank])
            else:
                silent = self.transcribe_turns > 0 and self.transcribe_rng.random() < self.transcribe_turns
                prompt, answer = self.prompt_and_answer(row, transcribe=silent)
                windows = self.windows(row)
                prompt_ids = self._prompt_ids(prompt, [audio_id] * (windows * self.per_window))
                clips.append(row["question_features"] if self.heard_through_ear
                             else codes_tensor(row["question_codes"], "question_codes", self.num_codebooks))
                concept_labels.append(self.slot_labels(row, windows))
            answer_ids = self.tokenizer(answer + END_OF_TURN, add_special_tokens=False).input_ids
            input_ids.append(prompt_ids + answer_ids)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
            if self.task == "reply":
                if silent:  # nothing to speak: one unscored frame, no symbols (the talker skips the row)
                    replies.append(torch.full((self.num_codebooks, 1), IGNORE_INDEX, dtype=torch.long))
                    symbols.append(([], [], []))
                else:
                    replies.append(codes_tensor(row["reply_codes"], "reply_codes", self.num_codebooks))
                    symbols.append(self._symbols(row, answer_ids))
                given = bool(not silent and self.voice and row.get("voice_given")
                             and row.get("reference_codes") is not None)
                voice_given.append(given)
                voices.append(codes_tensor(row["reference_codes"], "reference_codes", self.num_codebooks)
                              if given else torch.zeros(self.num_codebooks, 1, dtype=torch.long))
                voice_f0.append(row.get("reference_f0") if given else 0.0)

        longest = max(len(ids) for ids in input_ids)
        batch = {
            "input_ids": torch.full((len(rows), longest), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(rows), longest, dtype=torch.long),
            "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
        }
        for i, (ids, row_labels) in enumerate(zip(input_ids, labels)):
            batch["input_ids"][i, : len(ids)] = torch.tensor(ids)
            batch["attention_mask"][i, : len(ids)] = 1
            batch["labels"][i, : len(ids)] = torch.tensor(row_labels)
        if clips and self.heard_through_ear:
            batch["input_features"], batch["input_features_mask"] = pad_frames(clips)
        elif clips:
            batch["input_audio_codes"], batch["input_audio_codes_mask"] = pad_codes(clips, 0)
        if self.text_vocabulary is not None:
            batch["text_vocabulary"] = self.text_vocabulary
        if concept_labels and self.with_concept_labels:
            longest = max(len(c) for c in concept_labels)
            batch["concept_labels"] = torch.tensor([c + [IGNORE_INDEX] * (longest - len(c)) for c in concept_labels])
        if replies:
            batch["audio_labels"], _ = pad_codes(replies, IGNORE_INDEX)
            for name, index in (("reply_symbols", 0), ("reply_symbol_tokens", 1), ("reply_symbol_frames", 2)):
                longest = max(len(s[index]) for s in symbols)
                batch[name] = torch.tensor([s[index] + [IGNORE_INDEX if index == 0 else 0] * (longest - len(s[index]))
                                            for s in symbols])
        if self.voice and replies:
            batch["voice_audio_codes"], batch["voice_audio_codes_mask"] = pad_codes(voices, 0)
            batch["voice_given"] = torch.tensor(voice_given)
            if all(f0 is not None for f0 in voice_f0):
                batch["voice_f0"] = torch.tensor(voice_f0, dtype=torch.float32)
        return batch

    def _symbols(self, row: dict, answer_ids: list[int]) -> tuple[list[int], list[int], list[int]]:
        """The reply's symbol ids, the answer token of each, and each one's frames (checked against the codes)."""
        talker = self.config.talker_config
        ids = symbol_ids(row["reply_phonemes"], talker.phoneme_symbols)
        frames = [int(f) for f in row["reply_phoneme_frames"]]
        codes = len(row["reply_codes"][0])
        if len(frames) != len(ids) or sum(frames) != codes:
            raise ValueError(
                f"row {row.get('id')}: its {len(ids)} reply symbols have {len(frames)} lengths adding up to "
                f"{sum(frames)} frames, but the reply has {codes}: rebuild the dataset with concept-talker synth."
            )
        return ids, symbol_tokens(row["reply_phoneme_chars"], answer_ids, self.tokenizer), frames


def data_vocabulary(tokenizer, texts, config) -> list[int]:
    """Every token id the texts are written with (as answers: with `<|im_end|>`), the end-of-reply tokens and the
    blank token: what a small thinker trained from scratch on these texts needs its losses scored over."""
    ids = set(config.reply_end_token_ids) | {config.concept_blank_token_id}
    texts = [t for t in texts if t]
    for start in range(0, len(texts), 1024):
        for row in tokenizer(texts[start : start + 1024], add_special_tokens=False).input_ids:
            ids.update(row)
    return sorted(ids)


def dataset_vocabulary(tokenizer, dataset, config, copy_turns: bool) -> list[int]:
    """`data_vocabulary` of a dataset: every question and reply of its train and general-English (`transcribe`,
    `repeats`) splits (and the extra training questions of `questions`), and the copy turns' words where a run trains
    on copy turns (`copy_turns`)."""
    texts = [t for name in ("train", "transcribe", "questions", "repeats") if name in dataset
             for column in ("question_text", "reply_text") if column in dataset[name].column_names
             for t in dataset[name][column]]
    if copy_turns:
        texts += CopyTurns.vocabulary_texts()
    return data_vocabulary(tokenizer, texts, config)


def pad_codes(clips: list[torch.Tensor], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips `[codebooks, frames_i]` -> `[clips, codebooks, max_frames]` (padded with `fill`) and mask `[clips, max_frames]`."""
    longest = max(c.shape[1] for c in clips)
    codes = torch.full((len(clips), clips[0].shape[0], longest), fill, dtype=torch.long)
    mask = torch.zeros(len(clips), longest, dtype=torch.bool)
    for i, clip in enumerate(clips):
        codes[i, :, : clip.shape[1]] = clip
        mask[i, : clip.shape[1]] = True
    return codes, mask


def pad_frames(clips) -> tuple[torch.Tensor, torch.Tensor]:
    """The ear's frames of each clip `[frames_i, width]` (numpy or tensors) -> `[clips, max_frames, width]` float32
    (zero-padded) and mask `[clips, max_frames]`."""
    clips = [torch.as_tensor(np.asarray(c)) for c in clips]
    longest = max(c.shape[0] for c in clips)
    frames = torch.zeros(len(clips), longest, clips[0].shape[-1])
    mask = torch.zeros(len(clips), longest, dtype=torch.bool)
    for i, clip in enumerate(clips):
        frames[i, : clip.shape[0]] = clip.float()
        mask[i, : clip.shape[0]] = True
    return frames, mask
