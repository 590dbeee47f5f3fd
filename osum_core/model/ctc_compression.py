"""CTC compression: merge consecutive encoder frames that the CTC head gives the same label.

With a CTC head trained beside the LLM, frames of one word collapse to one vector and each stretch of
blank frames (silence, non-speech sounds such as a vocal event) to another, so the LLM reads roughly one
speech embedding per word instead of one per 80 ms. Known from speech translation (Gaido et al., 2021,
"CTC-based compression"); here it is an option that lets a tiny model trained from scratch learn to read
speech within a CPU demo's budget. Merged vectors are means, so gradients still reach every frame.
"""

from __future__ import annotations

import torch


def merge_ctc_runs(
    states: torch.Tensor, lengths: torch.Tensor, frame_labels: torch.Tensor, max_run: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average `states` [B, T, D] over runs of equal `frame_labels` [B, T]; frames past `lengths` are
    ignored. With `max_run` > 0 a run is cut every `max_run` frames, so long stretches (a vocal event
    labelled blank) keep some detail. Returns the merged states [B, R, D], the number of runs [B], and the
    first frame of each run [B, R] (what `time_features` turns into a "when" for each merged step)."""
    batch, steps, width = states.shape
    frame = torch.arange(steps, device=states.device)
    valid = frame[None, :] < lengths[:, None]
    starts = torch.ones_like(valid)
    starts[:, 1:] = frame_labels[:, 1:] != frame_labels[:, :-1]
    if max_run > 0:
        run_start = torch.where(starts, frame[None, :], torch.zeros_like(frame)[None, :]).cummax(dim=1).values
        starts |= (frame[None, :] - run_start) % max_run == 0
    starts &= valid
    run_lengths = starts.sum(dim=1)
    runs = int(run_lengths.max()) if batch else 0
    run_index = starts.long().cumsum(dim=1) - 1
    run_index = torch.where(valid, run_index, torch.full_like(run_index, runs))  # padding -> a spare slot
    sums = states.new_zeros(batch, runs + 1, width).scatter_add(1, run_index[..., None].expand(-1, -1, width), states)
    counts = states.new_zeros(batch, runs + 1).scatter_add(1, run_index, valid.to(states.dtype))
    run_starts = (counts.cumsum(dim=1) - counts)[:, :runs]  # runs are contiguous: frames before each run
    return sums[:, :runs] / counts[:, :runs, None].clamp(min=1), run_lengths, run_starts


def run_ends(run_starts: torch.Tensor, runs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The frame after each run [B, R] of `merge_ctc_runs`: the next run's start, and for an example's last run
    (its `runs`-th) its frame count `lengths` [B]. Runs are contiguous, so that is where each one ends; the
    last run's end is the only one no other step's start tells."""
    ends = torch.cat([run_starts[:, 1:], run_starts.new_zeros(run_starts.shape[0], 1)], dim=1)
    if ends.shape[1] == 0:
        return ends
    last = (runs - 1).clamp(min=0)[:, None]
    return ends.scatter(1, last, lengths[:, None].to(ends.dtype))


def time_features(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Sinusoids of frame positions [B, R] -> [B, R, size], periods from 2 frames to ~2,000 frames."""
    half = size // 2
    periods = 2.0 * (1000.0 ** (torch.arange(half, device=frames.device) / max(half - 1, 1)))
    angles = frames[..., None].float() * (2 * torch.pi / periods)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
