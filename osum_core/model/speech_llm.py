"""`SpeechLLM`: speech encoder -> adapter -> causal LM, with OSUM's layout, the loss and batched generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from osum_core.model.adapter import SpeechAdapter
from osum_core.model.ctc_compression import merge_ctc_runs, run_ends, time_features
from osum_core.model.encoder import SpeechEncoder
from osum_core.model.layout import build_layout, layout_length
from osum_core.model.packing import packing_supported
from osum_core.model.utterance_summary import UtteranceSummary


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings: ``GenerationSettings(**cfg["eval"]["generation"])``; the defaults live in
    configs/fit.yaml and nowhere else."""

    max_new_tokens: int
    min_new_tokens: int  # end-of-text is not allowed before this many tokens
    num_beams: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float


class SpeechLLM(nn.Module):
    """The backbone. `forward` returns per-example loss terms; `generate` returns token ids per example.

    speech_markers: the learned speech BOS/EOS vectors (OSUM keeps them as rows of an embedding table).
    ctc_head: optional linear layer over encoder states for an auxiliary CTC loss on the transcript.
    ctc_compression: merge encoder frames by the CTC head's labels before the adapter (ctc_compression.py).
    ctc_embeddings: add to each speech step the LLM embedding expected under the CTC posterior.
    time_embeddings: with compression, add to each merged step a learned projection of sinusoids of the
        frame it starts at; merging removes the "how long" that a step count would otherwise carry, and
        word timestamps (SRWT) need it back.
    time_embedding_ends: with time embeddings, add a second such projection of the frame each merged step
        ends at; a step's end is otherwise told only by the next step's start, and the last word of an
        utterance has none (its end was the largest timestamp error on the demo).
    summary_steps: this many attention-pooled views of the whole utterance go before the speech steps
        (utterance_summary.py): what compression dilutes (speaker, emotion, a vocal event) in one place.
    utterance_embedding: add one attention-pooled view of the whole utterance to every speech step, its
        projection starting at zero; where the summary steps put the speaker in one place the LLM must learn
        to look at, this puts it in each step the LLM already reads for the words."""

    TIME_FEATURES = 64

    def __init__(
        self,
        encoder: SpeechEncoder,
        adapter: SpeechAdapter,
        llm: PreTrainedModel,
        eos_token_id: int,
        pad_token_id: int,
        ctc_vocab_size: int = 0,
        ctc_compression: bool = False,
        ctc_embeddings: bool = False,
        ctc_max_run: int = 0,
        time_embeddings: bool = False,
        time_embedding_ends: bool = False,
        packed: bool = False,
        summary_steps: int = 0,
        utterance_embedding: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter
        self.llm = llm  # a transformers causal LM, or a peft model wrapping one
        width = self.causal_lm.get_input_embeddings().embedding_dim
        self.speech_markers = nn.Parameter(torch.randn(2, width) * 0.02)
        self.ctc_head = nn.Linear(encoder.output_size, ctc_vocab_size) if ctc_vocab_size else None
        if (ctc_compression or ctc_embeddings) and self.ctc_head is None:
            raise ValueError("CTC compression and CTC embeddings need the CTC head (model.ctc_head: true)")
        if time_embeddings and not ctc_compression:
            raise ValueError("time embeddings are for CTC compression (model.ctc_compression: true)")
        if time_embedding_ends and not time_embeddings:
            raise ValueError("time embedding ends go with the time embeddings (model.time_embeddings: true)")
        self.time_embedding = nn.Linear(self.TIME_FEATURES, width) if time_embeddings else None
        # Its own projection (not a wider time_embedding), so checkpoints without it keep their shapes.
        self.time_end_embedding = nn.Linear(self.TIME_FEATURES, width) if time_embedding_ends else None
        for part in (self.time_embedding, self.time_end_embedding):
            if part is not None:
                # Zero at first: a random projection of the sinusoids outweighed the (std 0.02) token
                # embeddings the speech steps carry and kept the LLM from reading them.
                nn.init.zeros_(part.weight)
                nn.init.zeros_(part.bias)
        self.summary = UtteranceSummary(encoder.output_size, width, summary_steps) if summary_steps else None
        self.utterance_embedding = (
            UtteranceSummary(encoder.output_size, width, 1, start_at_zero=True) if utterance_embedding else None
        )
        self.packed = packed and packing_supported(encoder.whisper.config, self.causal_lm.config)
        self.ctc_compression = ctc_compression
        self.ctc_embeddings = ctc_embeddings
        self.ctc_max_run = ctc_max_run
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        # Token ids around prompt and speech for chat-template LLMs (`set_chat_turn`); empty for OSUM's layout.
        self.register_buffer("turn_before", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("turn_after", torch.zeros(0, dtype=torch.long), persistent=False)

    def set_chat_turn(self, before: list[int], after: list[int]) -> None:
        """Wrap prompt + speech in a chat template's user turn: `before` opens it, `after` closes it and
        opens the assistant's turn, where the target goes."""
        device = self.turn_before.device
        self.turn_before = torch.tensor(before, dtype=torch.long, device=device)
        self.turn_after = torch.tensor(after, dtype=torch.long, device=device)

    def turn_embeds(self) -> dict[str, torch.Tensor | None]:
        return {
            name: self.embed_tokens(ids) if ids.numel() else None
            for name, ids in (("before", self.turn_before), ("after", self.turn_after))
        }

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The transformers model itself (under a peft wrapper, with LoRA layers injected in place)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def speech_steps(self, frames: int) -> int:
        """Speech embeddings the LLM reads for `frames` feature frames: the encoder's and the adapter's
        strides (with CTC compression, at most this many)."""
        lengths = self.adapter.output_lengths(self.encoder.output_lengths(torch.tensor([frames])))
        return int(lengths[0]) + self.summary_steps

    @property
    def summary_steps(self) -> int:
        return self.summary.steps if self.summary is not None else 0

    def sequence_length(
        self, frames: int, prompt_tokens: int, target_tokens: int, frames_per_step: int | None = None
    ) -> int:
        """The LLM sequence length of one example (the batch budget ``data.max_tokens`` counts these).
        `frames_per_step` replaces the strides' speech length by an estimate (CTC compression makes it
        depend on the content)."""
        speech = frames // frames_per_step + self.summary_steps if frames_per_step else self.speech_steps(frames)
        turn = self.turn_before.numel() + self.turn_after.numel()
        return layout_length(prompt_tokens, speech, target_tokens, turn)

    def encode_speech(
        self, features: torch.Tensor, feature_lengths: torch.Tensor, packed: bool = False, ctc_only: bool = False
    ) -> dict[str, torch.Tensor]:
        """Encoder states, their CTC logits and (unless `ctc_only`) the speech embeddings the LLM reads."""
        # Parts may sit in different dtypes (a frozen bf16 encoder and LLM around an fp32 adapter).
        states, state_lengths = self.encoder(
            features.to(self.encoder.whisper.conv1.weight.dtype), feature_lengths, packed=packed
        )
        states = states.to(self.adapter.projection.weight.dtype)
        adapter_input, adapter_lengths = states, state_lengths
        # Computed once: the CTC loss and the compression read the same logits.
        ctc_logits = self.ctc_head(states) if self.ctc_head is not None else None
        if ctc_only:
            return {"encoder_states": states, "encoder_lengths": state_lengths, "ctc_logits": ctc_logits}
        if self.ctc_compression:
            frame_labels = ctc_logits.detach().argmax(dim=-1)
            adapter_input, adapter_lengths, run_starts = merge_ctc_runs(
                states, state_lengths, frame_labels, self.ctc_max_run
            )
        speech, speech_lengths = self.adapter(adapter_input, adapter_lengths)
        if self.time_embedding is not None:
            if speech.shape[1] != run_starts.shape[1]:
                raise ValueError("time embeddings need an adapter that keeps the length (adapter.conv_strides: [1])")
            time = time_features(run_starts, self.TIME_FEATURES).to(speech.dtype)
            speech = speech + self.time_embedding(time)
            if self.time_end_embedding is not None:
                ends = run_ends(run_starts, adapter_lengths, state_lengths)
                speech = speech + self.time_end_embedding(time_features(ends, self.TIME_FEATURES).to(speech.dtype))
        if self.ctc_embeddings:
            # Each speech step also gets the expected LLM token embedding under the CTC posterior, so the
            # LLM reads speech partly in its own embedding space (an option for models trained from scratch).
            posterior = self.ctc_head(adapter_input).softmax(dim=-1)
            if speech.shape[1] != posterior.shape[1]:
                raise ValueError("CTC embeddings need an adapter that keeps the length (adapter.conv_strides: [1])")
            table = self.causal_lm.get_input_embeddings().weight
            speech = speech + (posterior.to(table.dtype) @ table).to(speech.dtype)
        if self.utterance_embedding is not None:
            # [B, 1, width], the same for every step of an example (padding steps too: they are masked).
            speech = speech + self.utterance_embedding(states, state_lengths).to(speech.dtype)
        if self.summary is not None:
            # Before the speech steps, so every step of every example keeps its place after them.
            speech = torch.cat([self.summary(states, state_lengths).to(speech.dtype), speech], dim=1)
            speech_lengths = speech_lengths + self.summary.steps
        dtype = self.causal_lm.get_input_embeddings().weight.dtype
        return {
            "encoder_states": states,
            "encoder_lengths": state_lengths,
            "speech": speech.to(dtype),
            "speech_lengths": speech_lengths,
            "ctc_logits": ctc_logits,
        }

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings()(ids)

    def forward(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_lengths: torch.Tensor,
        target_ids: torch.Tensor,
        target_lengths: torch.Tensor,
        target_weights: torch.Tensor,
        ctc_ids: torch.Tensor | None = None,
        ctc_lengths: torch.Tensor | None = None,
        ctc_weights: torch.Tensor | None = None,
        ctc_only: bool = False,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        """Per-example loss terms: ``token_loss`` (sum over target tokens of weight x cross-entropy),
        ``token_count`` (number of target tokens) and, with a CTC head, ``ctc_loss`` (per target token,
        times the example's `ctc_weights` when given).
        `ctc_only`: the encoder and its CTC loss alone (``token_loss`` zero), for steps whose LLM loss does
        not count (``loss.ce_start_step``)."""
        speech = self.encode_speech(features, feature_lengths, packed=self.packed, ctc_only=ctc_only)
        if ctc_only:
            zeros = torch.zeros_like(target_lengths, dtype=target_weights.dtype)
            out = {"token_loss": zeros, "token_count": target_lengths.to(zeros.dtype)}
            return self.add_ctc_loss(out, speech["ctc_logits"], speech["encoder_lengths"], ctc_ids, ctc_lengths,
                                     ctc_weights)
        markers = self.speech_markers.to(speech["speech"].dtype)
        layout = build_layout(
            self.embed_tokens(prompt_ids), prompt_lengths, speech["speech"], speech["speech_lengths"], markers,
            self.embed_tokens(target_ids), target_lengths, **self.turn_embeds(), packed=self.packed,
        )
        packed = {"packing": layout.packing} if layout.packing is not None else {}
        hidden = self.causal_lm.model(
            inputs_embeds=layout.embeds, attention_mask=layout.attention_mask, position_ids=layout.position_ids,
            **packed,
        ).last_hidden_state
        # Logits only where a target token is predicted: the step before each target token.
        steps = torch.arange(target_ids.shape[1], device=hidden.device)
        valid = steps[None, :] < target_lengths[:, None]
        rows = layout.target_start[:, None] - 1 + steps[None, :]
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows[valid])
        logits = self.causal_lm.lm_head(picked).float()
        token_ce = nn.functional.cross_entropy(logits, target_ids[valid], reduction="none")
        weighted = torch.zeros_like(target_weights).masked_scatter(valid, token_ce) * target_weights
        out = {"token_loss": weighted.sum(dim=1), "token_count": target_lengths.to(weighted.dtype)}
        return self.add_ctc_loss(out, speech["ctc_logits"], speech["encoder_lengths"], ctc_ids, ctc_lengths,
                                 ctc_weights)

    def add_ctc_loss(self, out: dict[str, torch.Tensor], logits: torch.Tensor | None, lengths: torch.Tensor,
                     ctc_ids: torch.Tensor | None, ctc_lengths: torch.Tensor | None,
                     ctc_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`out` with ``ctc_loss`` (per target token, weighted) when the model has a CTC head and the batch
        CTC targets."""
        if logits is not None and ctc_ids is not None and ctc_lengths is not None:
            log_probs = logits.float().log_softmax(dim=-1)
            ctc = nn.functional.ctc_loss(
                log_probs.transpose(0, 1), ctc_ids, lengths, ctc_lengths,
                blank=self.pad_token_id, reduction="none", zero_infinity=True,
            )
            out["ctc_loss"] = ctc / ctc_lengths.clamp(min=1)
            if ctc_weights is not None:
                out["ctc_loss"] = out["ctc_loss"] * ctc_weights.to(out["ctc_loss"].dtype)
        return out

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_lengths: torch.Tensor,
        settings: GenerationSettings,
        streamer: Any = None,
        synced_gpus: bool | None = None,
        **_: Any,
    ) -> list[list[int]]:
        """Token ids generated for each example of a batch (end-of-text removed).

        Example::

            settings = GenerationSettings(**{**load_config()["eval"]["generation"], "max_new_tokens": 64})
            ids = model.generate(batch["features"], batch["feature_lengths"], batch["prompt_ids"],
                                 batch["prompt_lengths"], settings)
            texts = tokenizer.batch_decode(ids)

        The batch is padded on the left with position ids that skip the padding, so each example's
        greedy output equals the output it gets alone. `streamer`: a transformers streamer handed each step's
        tokens (`osum_core.inference.streaming.BatchTextStreamer` follows every row of the batch).
        `synced_gpus`: transformers' all-reduce per token so that ranks stop together (None: its default, on
        for a model under FSDP); fsdp2 evaluation turns it off, having gathered the whole model first."""
        speech = self.encode_speech(features, feature_lengths, packed=self.packed)
        layout = build_layout(
            self.embed_tokens(prompt_ids), prompt_lengths, speech["speech"], speech["speech_lengths"],
            self.speech_markers.to(speech["speech"].dtype), pad_left=True, **self.turn_embeds(),
        )
        output = self.causal_lm.generate(
            inputs_embeds=layout.embeds,
            attention_mask=layout.attention_mask,
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens or None,
            num_beams=settings.num_beams,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            streamer=streamer,
            synced_gpus=synced_gpus,  # None: transformers decides (on for a model under FSDP or ZeRO-3)
        )
        results = []
        for row in output.tolist():
            ids = []
            for token in row:
                if token == self.eos_token_id:
                    break
                ids.append(token)
            results.append(ids)
        return results
