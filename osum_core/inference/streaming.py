"""Text as it is generated, for every row of a batch at once.

transformers' own streamers (`TextStreamer`, `TextIteratorStreamer`) refuse a batch of more than one; a
server that decodes concurrent requests together needs each row's text as it grows. `BatchTextStreamer`
takes the same calls from `generate` (``put`` with the step's tokens, ``end``) and hands each row's new text
to a callback. The pieces of a row join to exactly the text `generated_texts` returns for it (special tokens
left out, surrounding whitespace stripped): a piece is held back while it would end in whitespace (the final
text strips it) or in an incomplete character (a byte-level token that needs the next one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to

# on_text(row, piece, finished): `piece` is the row's new text (may be empty when `finished`); `finished` is
# true once, when the row's end-of-text was generated or generation ended.
TextCallback = Callable[[int, str, bool], None]


class BatchTextStreamer:
    """A transformers streamer over a batch of `rows` sequences: `generate(..., streamer=BatchTextStreamer(...))`.
    Greedy and sampled decoding only (transformers refuses a streamer with beam search)."""

    def __init__(self, tokenizer: Any, rows: int, end_of_text: int, on_text: TextCallback,
                 limits: list[int] | None = None) -> None:
        """`limits`: each row's most tokens (a row is finished once it has them, whatever the batch does)."""
        self.tokenizer = tokenizer
        self.limits = limits
        self.end_of_text = end_of_text
        self.on_text = on_text
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [""] * rows  # the text each row has been handed so far
        self.finished = [False] * rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt's ids (none with inputs_embeds)
            self.prompt_seen = True
            return
        tokens = value.reshape(len(self.ids), -1)[:, -1].tolist()
        for row, token in enumerate(tokens):
            if self.finished[row]:
                continue  # a finished row is padded until the batch ends
            if token == self.end_of_text:
                self.finish(row)
                continue
            self.ids[row].append(token)
            if self.limits is not None and len(self.ids[row]) >= self.limits[row]:
                self.finish(row)
            else:
                self.send(row, final=False)

    def end(self) -> None:
        for row in range(len(self.ids)):
            if not self.finished[row]:
                self.finish(row)

    def finish(self, row: int) -> None:
        self.finished[row] = True
        self.send(row, final=True)

    def send(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True).lstrip()
        ready = text.rstrip()
        if not final and ready.endswith(REPLACEMENT):
            return
        if not ready.startswith(self.sent[row]):  # a decoder that rewrote earlier text: hand over what is new
            ready = self.sent[row] + ready[len(self.sent[row]):]
        piece = ready[len(self.sent[row]):]
        self.sent[row] = ready
        if piece or final:
            self.on_text(row, piece, final)
