"""`BatchTextStreamer`: the pieces each row of a batch is handed join to exactly the text `decoded_texts` gives
for that row, whatever the tokens (multi-byte characters split across byte-level tokens, whitespace, an early
end-of-text, a row's own token limit)."""

from __future__ import annotations

import random

import torch

from osum_core.checkpoints.loading import load_checkpoint
from osum_core.inference.predict import decoded_texts
from osum_core.inference.streaming import BatchTextStreamer


def streamed(tokenizer, steps: list[list[int]], end_of_text: int, limits=None) -> tuple[list[str], list[int]]:
    """What each row is handed when `steps` (one token per row per step) come from generate, and how often
    each row is told it is finished."""
    rows = len(steps[0])
    pieces, finished = [""] * rows, [0] * rows

    def on_text(row: int, piece: str, done: bool) -> None:
        assert not finished[row], "a row hands over text after it finished"
        pieces[row] += piece
        finished[row] += done

    streamer = BatchTextStreamer(tokenizer, rows, end_of_text, on_text, limits)
    streamer.put(torch.zeros(rows, 0, dtype=torch.long))  # generate hands over the (empty) prompt first
    for step in steps:
        streamer.put(torch.tensor(step))
    streamer.end()
    return pieces, finished


def test_streamed_pieces_join_to_the_decoded_text_for_any_tokens(exported):
    tokenizer = load_checkpoint(exported).tokenizer
    end = tokenizer.eos_token_id
    vocab = len(tokenizer)
    rng = random.Random(0)
    # Tokens that decode to parts of a character or to whitespace are where a careless streamer goes wrong.
    awkward = [i for i in range(vocab) if i != end and (tokenizer.decode([i]).strip() == ""
                                                        or "\ufffd" in tokenizer.decode([i]))]
    for trial in range(300):
        rows, length = rng.randint(1, 5), rng.randint(1, 12)
        steps = [[rng.choice(awkward) if awkward and rng.random() < 0.4 else rng.randrange(vocab)
                  for _ in range(rows)] for _ in range(length)]
        for row in range(rows):
            if rng.random() < 0.4:  # this row ends early; generate pads it with end-of-text afterwards
                stop = rng.randrange(length)
                for step in steps[stop:]:
                    step[row] = end
        limits = [rng.randint(1, length + 1) for _ in range(rows)] if trial % 2 else None
        pieces, finished = streamed(tokenizer, steps, end, limits)
        ids = []
        for row in range(rows):
            row_ids = []
            for step in steps:
                if step[row] == end:
                    break
                row_ids.append(step[row])
            ids.append(row_ids[: limits[row]] if limits else row_ids)
        assert pieces == decoded_texts(tokenizer, ids), (steps, limits)
        assert finished == [1] * rows
