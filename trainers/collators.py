"""Collators: dataset rows (texts and codec codes) -> padded model inputs for each training task.

Tasks, and the formats they teach (the prompt is `build_prompt`'s, so training sees what generation sees):

    text        stage 0, text only. The spoken question is given as its text:
                  user: "<question text>\\nTranscribe the audio."  -> assistant: "<question text>"
                  user: "<question text>[\\n<instruction>]"        -> assistant: "<reply text>"
                (each row is one or the other, fixed by its id), so the thinker learns to copy and to answer.
    transcribe  stage 1, alignment. user: <|audio_pad|> "\\nTranscribe the audio." -> assistant: "<question text>"
    reply       stage 2, generation. user: <|audio_pad|> ["\\n<instruction>"] -> assistant: "<reply text>", and the
                reply's codec codes as `audio_labels` (optionally the reference voice's codes as `voice_audio_codes`).

Padding is on the right; labels are -100 outside the assistant's answer (which ends with `<|im_end|>`), audio labels
-100 after each reply's frames, and code masks False after each clip's frames.
"""

from __future__ import annotations

import zlib

import torch

from modeling_concept_talker import build_prompt
from modeling_concept_talker.talker import IGNORE_INDEX

TRANSCRIBE_TASK = "Transcribe the audio."
END_OF_TURN = "<|im_end|>"
TASKS = ("text", "transcribe", "reply")


def is_transcription_row(row_id: str) -> bool:
    """In the text stage, half of the rows (fixed by a hash of their id) teach copying, the rest answering."""
    return zlib.crc32(str(row_id).encode()) % 2 == 0


def codes_tensor(codes, name: str, num_codebooks: int) -> torch.Tensor:
    """A row's `[codebooks][frames]` int16 lists -> LongTensor `[codebooks, frames]`, checked."""
    tensor = torch.as_tensor(codes, dtype=torch.long)
    if tensor.ndim != 2 or tensor.shape[0] != num_codebooks or tensor.shape[1] == 0:
        raise ValueError(
            f"{name} must be [{num_codebooks} codebooks][frames] with at least one frame, got shape "
            f"{tuple(tensor.shape)}: was the dataset made with this model's codec (concept-talker synth --codec ...)?"
        )
    return tensor


class SpokenTurnCollator:
    """Turns dataset rows into a batch for `ConceptTalkerForConditionalGeneration.forward`.

    Args:
        processor: the model's `ConceptTalkerProcessor` (tokenizer and concept-slot counting).
        task: "text", "transcribe" or "reply" (see the module docstring).
        num_codebooks: codebooks the model uses (rows must carry exactly these).
        voice: with "reply", also pass the reference clip's codes as the talker's voice (`voice_audio_codes`), and
            its measured median F0 (`voice_f0`) where the rows carry `reference_f0` (otherwise the model measures it).
    """

    def __init__(self, processor, task: str, num_codebooks: int, voice: bool = False):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.task = task
        self.num_codebooks = num_codebooks
        self.voice = voice
        self.pad_id = self.tokenizer.pad_token_id

    def prompt_and_answer(self, row: dict) -> tuple[str, str]:
        """The prompt (ending where the assistant begins) and the answer text of a row for this task."""
        instruction = row.get("instruction") or None
        if self.task == "transcribe":
            return build_prompt(task=TRANSCRIBE_TASK), row["question_text"]
        if self.task == "reply":
            return build_prompt(instruction), row["reply_text"]
        # text: the question's words stand where its audio would be
        prompt = build_prompt(task=TRANSCRIBE_TASK if is_transcription_row(row["id"]) else instruction)
        prompt = prompt.replace("<|audio_pad|>", row["question_text"])
        answer = row["question_text"] if is_transcription_row(row["id"]) else row["reply_text"]
        return prompt, answer

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, labels, clips, replies, voices, voice_f0 = [], [], [], [], [], []
        for row in rows:
            prompt, answer = self.prompt_and_answer(row)
            if self.task != "text":
                codes = codes_tensor(row["question_codes"], "question_codes", self.num_codebooks)
                clips.append(codes)
                (prompt,) = self.processor.expand_audio_placeholders([prompt], [codes.shape[1]])
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
            answer_ids = self.tokenizer(answer + END_OF_TURN, add_special_tokens=False).input_ids
            input_ids.append(prompt_ids + answer_ids)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
            if self.task == "reply":
                replies.append(codes_tensor(row["reply_codes"], "reply_codes", self.num_codebooks))
                if self.voice:
                    voices.append(codes_tensor(row["reference_codes"], "reference_codes", self.num_codebooks))
                    voice_f0.append(row.get("reference_f0"))

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
        if clips:
            batch["input_audio_codes"], batch["input_audio_codes_mask"] = pad_codes(clips, 0)
        if replies:
            batch["audio_labels"], _ = pad_codes(replies, IGNORE_INDEX)
        if voices:
            batch["voice_audio_codes"], batch["voice_audio_codes_mask"] = pad_codes(voices, 0)
            if all(f0 is not None for f0 in voice_f0):
                batch["voice_f0"] = torch.tensor(voice_f0, dtype=torch.float32)
        return batch


def pad_codes(clips: list[torch.Tensor], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips `[codebooks, frames_i]` -> `[clips, codebooks, max_frames]` (padded with `fill`) and mask `[clips, max_frames]`."""
    longest = max(c.shape[1] for c in clips)
    codes = torch.full((len(clips), clips[0].shape[0], longest), fill, dtype=torch.long)
    mask = torch.zeros(len(clips), longest, dtype=torch.bool)
    for i, clip in enumerate(clips):
        codes[i, :, : clip.shape[1]] = clip
        mask[i, : clip.shape[1]] = True
    return codes, mask
