"""The phoneme timeline: which symbol of the reply each audio step speaks, and when the talker reads each symbol.

This is the one place that decides the talker's layout. Training lays out its sequence with `layout` from the
symbols' true lengths (from the voice that rendered the data); streaming generation builds the same layout step by
step from the lengths the talker predicts, so the talker streams exactly as it was trained.

The reply is a sequence of symbols (phonemes, spaces, punctuation, `^` and `$`; see `phonemes.py`), symbol i lasting
`frames[i]` codec frames from frame `starts[i]`. Audio step j writes frame j of the first codebook (the delay pattern
puts frame j - k of codebook k there). Before step j the talker reads every symbol that is due: symbol i is read when
the symbol before it begins (`read_step[i] = starts[i - 1]`, symbol 0 at step 0), so while it speaks a symbol it
already knows the next one. With symbols a (2 frames), b (1), c (2) and s = a symbol position, t = an audio step:

    frames:  a  a  b  c  c
    steps:   0  1  2  3  4   (+ K - 1 steps that finish the delayed codebooks)
    sequence:  s_a s_b t0 t1 s_c t2 t3 t4 ...

Each audio step is also told which symbol it is speaking, how many frames of it have passed and how many remain
(`frame_symbol`, `since`, `left`, capped at `progress_cap`): the alignment comes from the timeline, not from the
talker's attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SymbolLayout:
    """One reply's timeline (`layout`).

    Attributes:
        read_step: `[symbols]` the audio step before which each symbol is read.
        frame_symbol: `[steps]` the symbol each audio step speaks (the last symbol on the delayed tail).
        since: `[steps]` frames of that symbol already spoken before this step (capped).
        left: `[steps]` frames of it still to speak after this step (capped; 0 on the tail).
        symbol_positions: `[symbols]` and `step_positions` `[steps]`: places in the talker's sequence (after its
            prefix), which interleaves the two.
    """

    read_step: torch.Tensor
    frame_symbol: torch.Tensor
    since: torch.Tensor
    left: torch.Tensor
    symbol_positions: torch.Tensor
    step_positions: torch.Tensor

    @property
    def length(self) -> int:
        return len(self.symbol_positions) + len(self.step_positions)


def read_steps(frames: torch.Tensor) -> torch.Tensor:
    """`[symbols]` frames of each symbol -> the audio step before which each symbol is read."""
    starts = torch.cumsum(frames, 0) - frames
    return torch.cat([starts.new_zeros(1), starts[:-1]]) if len(frames) else starts


def layout(frames: torch.Tensor, num_codebooks: int, progress_cap: int) -> SymbolLayout:
    """The timeline of a reply whose symbols last `frames` `[symbols]` codec frames (all known).

    There are `frames.sum() + num_codebooks - 1` audio steps: one per frame, then the steps that complete the
    delayed codebooks.
    """
    frames = frames.long()
    total = int(frames.sum())
    if total < 1:
        raise ValueError("A reply must last at least one frame: its symbols' lengths add up to 0.")
    steps = torch.arange(total + num_codebooks - 1, device=frames.device)
    starts = torch.cumsum(frames, 0) - frames
    frame_symbol = torch.repeat_interleave(torch.arange(len(frames), device=frames.device), frames)
    frame = steps.clamp(max=total - 1)
    symbol = frame_symbol[frame]
    since = (frame - starts[symbol]).clamp(max=progress_cap)
    left = (starts[symbol] + frames[symbol] - 1 - steps).clamp(0, progress_cap)
    read = read_steps(frames)
    symbol_positions = read + torch.arange(len(frames), device=frames.device)
    step_positions = steps + torch.searchsorted(read, steps, right=True)
    return SymbolLayout(read, symbol, since, left, symbol_positions, step_positions)


__all__ = ["SymbolLayout", "layout", "read_steps"]
