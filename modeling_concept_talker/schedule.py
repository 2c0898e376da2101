"""The read-R / write-W schedule: how the talker interleaves thinker states and audio steps.

This is the one place that decides the order. Training lays out the talker's input with `positions`; streaming
generation walks the same blocks with `text_needed`, so the talker streams exactly as it was trained.

With R = 2 and W = 3 (t = thinker state, a = audio step):

    block:   0             1             2               (text ended after t4: later blocks read nothing)
           t0 t1 a0 a1 a2  t2 t3 a3 a4 a5  t4 a6 a7 a8  a9 a10 ...

Audio step j belongs to block j // W and sees the thinker states of blocks 0..j // W. Thinker states that would
come after the last audio step are left out: nothing reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReadWriteSchedule:
    read_tokens: int  # R: thinker states read per block
    write_frames: int  # W: audio steps written per block

    def text_read_by(self, audio_step):
        """Thinker states read, for a reply without end, before audio step `audio_step` (int or tensor) is written."""
        return (audio_step // self.write_frames + 1) * self.read_tokens

    def text_needed(self, audio_step: int, num_text: int | None = None) -> int:
        """How many thinker states the talker must have read before it writes audio step `audio_step`.

        `num_text` is the reply's final number of states when known (the thinker has stopped), else `None`.
        """
        needed = self.text_read_by(audio_step)
        return needed if num_text is None else min(needed, num_text)

    def text_complete(self, audio_steps: torch.Tensor, num_text: torch.Tensor) -> torch.Tensor:
        """Whether each audio step is written after the reply's last thinker state has been read (broadcasts
        `audio_steps` against `num_text`): from then on the reply's length is known to the talker."""
        return self.text_read_by(audio_steps) >= num_text

    def positions(self, num_text: int, num_audio: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Places of the thinker states and the audio steps in the talker's sequence.

        Args:
            num_text: thinker states of the reply (its tokens, end-of-reply token included).
            num_audio: audio steps (delayed frames).

        Returns:
            `text_positions` `[kept_text]` (states after the last audio step are dropped) and
            `audio_positions` `[num_audio]`, both indices into a sequence of `kept_text + num_audio` slots.
        """
        steps = torch.arange(num_audio)
        audio_positions = steps + torch.clamp((steps // self.write_frames + 1) * self.read_tokens, max=num_text)
        text = torch.arange(num_text)
        written_before = (text // self.read_tokens) * self.write_frames
        kept = written_before < num_audio
        text_positions = text[kept] + written_before[kept]
        return text_positions, audio_positions
