"""A small byte-level BPE tokenizer for the embedded demo model, trained on the run's own text.

Real presets use the LLM's tokenizer (Qwen2's). The tiny demo model has no pretrained tokenizer, so
`osum fit` trains one on the training transcripts and the selected tasks' prompts and labels, and saves it
with the run in the Hugging Face format. Label tags (``<laugh>``) become single tokens, as the speech LLM
then needs to emit one token for a label; the end-of-text token is Qwen2's ``<|endoftext|>``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PAD = "[PAD]"


def train_demo_tokenizer(texts: Iterable[str], tags: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over `texts` (deterministic for the same input), with `tags` added as whole tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sorted(set(texts)), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, pad_token=PAD)
    wrapped.add_tokens(sorted(set(tags)))  # not "special": decoding keeps them
    return wrapped
