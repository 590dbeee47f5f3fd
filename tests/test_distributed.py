"""Two CPU processes (gloo) through `osum fit` subprocesses, as a user starts them (Lightning's ddp relaunches
sys.argv, so not inside pytest's process): each rank its own data, the same weights as one process with
the same global batch, metrics reduced over all ranks, and exact resume after a SIGKILL, each rank with its
own random generators."""

import io
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy
import pytest
import soundfile
import torch
from conftest import TINY, data_args, run_process
from test_exact_resume import key_log, kill_after_step, started_until_step, stderr_at_end, weights
from test_packing import FRAMES, PROMPTS, TARGETS, batch_of, tiny_model

from osum_core.cli.main import main
from osum_core.train.module import SpeechLLMModule, placeholder_batch, rng_state

DROPOUT = ["model.adapter.dropout=0.1", "model.encoder.config.dropout=0.1", "model.llm.config.attention_dropout=0.1"]
NO_DROPOUT = ["model.adapter.dropout=0", "model.encoder.config.dropout=0", "model.llm.config.attention_dropout=0"]
COMMON = [
    *[a for a in TINY if not a.startswith(("trainer.max_steps", "data.num_workers", "trainer.val_check_interval"))],
    "trainer.val_check_interval=1000", "trainer.limit_val_batches=0", "data.max_frames=900", "data.log_keys=true",
    "threads=1", "trainer.accelerator=cpu", *NO_DROPOUT,
]


def fit(out: Path, corpus: Path, *extra: str, train: str | None = None) -> subprocess.CompletedProcess:
    args = data_args(corpus)
    if train:
        args = [f"data.train={train}" if a.startswith("data.train=") else a for a in args]
    command = [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", "asr,ved", "--out", str(out),
               *args, *COMMON, *extra]
    done = run_process(command)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def two_processes(*extra: str) -> list[str]:
    return ["trainer.strategy=ddp", "trainer.devices=2", *extra]


STEPS = "trainer.max_steps=4"


@pytest.fixture(scope="module")
def one_process(tiny_corpus, tmp_path_factory) -> Path:
    """One process with 2 dataloader workers and 2 micro-batches per step, which reads the same two streams as
    2 ranks with 1 worker each (step k is the same global batch in both): the run that DDP and FSDP2 on 2
    ranks are compared with (trained once for both)."""
    run = tmp_path_factory.mktemp("one_process") / "one"
    fit(run, tiny_corpus, STEPS, "data.num_workers=2", "trainer.accumulate_grad_batches=2")
    return run


@pytest.mark.slow
def test_ddp_ranks_train_disjoint_data_to_the_weights_of_one_process(one_process, tiny_corpus, tmp_path):
    fit(tmp_path / "two", tiny_corpus, STEPS, "data.num_workers=1", *two_processes())
    lines = [json.loads(x) for x in (tmp_path / "two" / "train_keys.jsonl").read_text().splitlines()]
    by_step: dict[int, dict[int, list[str]]] = {}
    for line in lines:
        by_step.setdefault(line["step"], {})[line["rank"]] = line["keys"]
    assert sorted(by_step) == [1, 2, 3, 4] and all(sorted(ranks) == [0, 1] for ranks in by_step.values())
    for ranks in by_step.values():
        assert set(ranks[0]).isdisjoint(ranks[1])  # each rank its own part
    one = key_log(one_process)
    assert {s: sorted(k) for s, k in one.items()} == {s: sorted(r[0] + r[1]) for s, r in by_step.items()}
    a, b = weights(one_process), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_a_ddp_epoch_trains_every_item_once_and_ranks_agree_on_its_length(tiny_corpus, tmp_path):
    # Two whole epochs: no rank waits at an epoch's end, and each epoch trains each item exactly once.
    fit(tmp_path / "two", tiny_corpus, "trainer.max_steps=-1", "trainer.max_epochs=2", "data.num_workers=1",
        *two_processes())
    lines = [json.loads(x) for x in (tmp_path / "two" / "train_keys.jsonl").read_text().splitlines()]
    steps = Counter(line["rank"] for line in lines)
    assert steps[0] == steps[1] > 0
    train = [json.loads(x)["key"] for x in (tiny_corpus / "train.jsonl").read_text().splitlines()]
    seen = Counter(k for line in lines for k in line["keys"])
    assert seen == Counter({k: 2 for k in train})  # equal task weights, one source: each item once per epoch


@pytest.mark.slow
def test_ddp_metrics_are_reduced_over_all_ranks(tiny_corpus, tmp_path):
    # An odd test set, one utterance per batch (data.max_frames=1, so decoding never depends on the batch
    # an utterance shares): rank 0 holds 4 items, rank 1 holds 3.
    lines = (tiny_corpus / "test.jsonl").read_text().splitlines()[:7]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({**json.loads(x), "wav": str(tiny_corpus / json.loads(x)["wav"])}) + "\n"
                            for x in lines))
    run = tmp_path / "two"
    done = fit(run, tiny_corpus, "trainer.max_steps=4", f"data.test={test}", "data.max_frames=1", *two_processes())
    assert done.stdout.count("test metrics (") == 1 and done.stdout.count("parameters: ") == 1  # one report, rank 0's
    predictions = [json.loads(x)["key"] for x in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert sorted(predictions) == sorted(json.loads(x)["key"] for x in lines)  # every rank's items, once
    # In this process, without dataloader workers: a precaution (pytest's long-lived process is not forked).
    assert main(["test", "--ckpt", str(run), "--tasks", "asr,ved", "--out", str(tmp_path / "one"), "--device", "cpu",
                 "--batch-size", "1", f"data.test={test}", "data.num_workers=0"]) == 0
    # One process scoring all 7 items gives what the 2 ranks gave together (not a mean of per-rank WERs).
    trained = json.loads((run / "metrics.json").read_text())
    assert trained == json.loads((tmp_path / "one" / "metrics.json").read_text()) and trained["skipped"] == {}


MID_STEP = ["trainer.num_sanity_val_steps=1", "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=3",
            "trainer.max_steps=3"]  # a sanity check before any forward, then validations between micro-batches


@pytest.mark.slow
@pytest.mark.parametrize("strategy,extra", [("ddp", []), ("fsdp2", []), ("fsdp2", MID_STEP)],
                         ids=["ddp", "fsdp2", "fsdp2-sanity-check-and-mid-step"])
def test_dev_and_test_sets_with_fewer_items_than_ranks_are_evaluated(strategy, extra, tiny_corpus, tmp_path):
    """One dev and one test utterance on 2 ranks: rank 1 has nothing to evaluate, yet must join the gather of
    the answers (and, sharded, every evaluation batch's gathering of the weights); rank 0 decodes its item, and
    training goes on after the validation. Before 2026-12-05 such a run stopped at its first validation
    (Lightning refuses a rank whose loader has no batch); under fsdp2, a training step after a validation that
    left one rank's FSDP forward order empty waited for ever (`forget_forward_order`)."""
    line = json.loads((tiny_corpus / "dev.jsonl").read_text().splitlines()[0])
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({**line, "wav": str(tiny_corpus / line["wav"])}) + "\n")
    run = tmp_path / strategy
    done = fit(run, tiny_corpus, "trainer.max_steps=2", "trainer.val_check_interval=1", "trainer.limit_val_batches=1.0",
               f"data.val={one}", f"data.test={one}", "data.num_workers=1", "--strategy", strategy,
               "trainer.devices=2", *extra)
    task = "ved" if "<CAPTION>" in line["task"] else "asr"
    curve = [json.loads(x) for x in (run / "learning_curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == ([1, 3] if extra else [1, 2])  # every validation, with its item
    assert all(row["metrics"][task]["count"] == 1 for row in curve)
    assert [json.loads(x)["key"] for x in (run / "test_predictions.jsonl").read_text().splitlines()] == [line["key"]]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics[task]["count"] == 1 and done.stdout.count("test metrics (") == 1


@pytest.mark.parametrize("options", [[], ["model.summary_steps=2", "model.utterance_embedding=true"]])
def test_the_placeholder_of_an_empty_batch_reaches_what_a_real_batch_reaches_with_zero_gradients(options):
    # Under fsdp2 a rank whose batch was all skipped runs this example instead, times zero: it must gather and
    # reduce the same parameters as the other ranks' real batches (the same modules, with the CTC head), with a
    # finite loss (a NaN would make every rank skip the step) and gradients of exactly zero.
    model = tiny_model(*options).train()
    out = model(**batch_of(FRAMES[:3], PROMPTS[:3], TARGETS[:3]))
    (out["token_loss"].sum() + out["ctc_loss"].sum()).backward()
    real = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    out = model(**placeholder_batch(model, torch.device("cpu")))
    loss = out["token_loss"].sum() + out["ctc_loss"].sum()
    assert torch.isfinite(loss)
    (loss * 0.0).backward()
    reached = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(reached) == real and all(int(g.count_nonzero()) == 0 for g in reached.values())


@pytest.mark.slow
@pytest.mark.parametrize("strategy,kept,extra", [
    ("ddp", 2, []), ("fsdp2", 2, []), ("fsdp2", 4, ["trainer.accumulate_grad_batches=2", "loss.ce_start_step=3"]),
], ids=["ddp", "fsdp2", "fsdp2-accumulated-and-ctc-only-start"])
def test_a_rank_whose_every_item_was_skipped_steps_with_the_other(strategy, kept, extra, tiny_corpus, tmp_path):
    """All but one in `kept` of the training audio is silent (found only when loaded), in batches of one or
    two items: at some step one rank's batches are all empty while the other's are not. The empty rank must
    still join every collective of the step; under fsdp2 those are the gathers and reductions of each sharded
    module's forward and backward, which a loss of `p.sum() * 0` over the (sharded) parameters never runs:
    before 2026-12-06 that rank fell out of step with the other (`SpeechLLMModule.empty_batch_loss`)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    soundfile.write(corpus / "silent.wav", numpy.zeros(16000, dtype=numpy.float32), 16000)
    lines = [json.loads(x) for x in (corpus / "train.jsonl").read_text().splitlines()]
    silent = {x["key"] for i, x in enumerate(lines) if i % kept}
    (corpus / "train.jsonl").write_text("".join(json.dumps({**x, "wav": "silent.wav"} if x["key"] in silent else x)
                                                + "\n" for x in lines))
    run = tmp_path / strategy
    done = fit(run, corpus, "trainer.max_steps=6", "data.max_frames=300", "data.max_skipped_fraction=0.9",
               "data.num_workers=1", "--strategy", strategy, "trainer.devices=2", *extra)
    ranks: dict[int, dict[int, list[str]]] = {}
    for line in (run / "train_keys.jsonl").read_text().splitlines():
        row = json.loads(line)
        ranks.setdefault(row["step"], {})[row["rank"]] = row["keys"]
    assert sorted(ranks) == list(range(1, 7))
    assert not silent & {k for step in ranks.values() for keys in step.values() for k in keys}
    assert any(bool(step[0]) != bool(step[1]) for step in ranks.values()), "no step with exactly one empty rank"
    assert "step skipped" not in done.stderr  # a NaN from the placeholder would skip steps on every rank
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 6 and checkpoint["skipped_steps"] == 0
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values() if w.is_floating_point())


@pytest.mark.slow
def test_a_killed_ddp_run_with_dropout_resumes_exactly(tiny_corpus, tmp_path):
    # Dropout draws from each rank's own generators: the checkpoint must hold rank 1's, not only rank 0's.
    extra = ["trainer.max_steps=10", "checkpoint.every_n_steps=4", "data.num_workers=2", *DROPOUT, *two_processes()]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    fit(whole, tiny_corpus, *extra)
    command = [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", "asr,ved", "--out", str(killed),
               *data_args(tiny_corpus), *COMMON, *extra]
    kill_after_step(command, killed, step=6)
    saved = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4 and len(saved["rng_states"]) == 2
    fit(killed, tiny_corpus, *extra, "--resume", str(killed))

    def per_rank(run):
        rows = [json.loads(x) for x in (run / "train_keys.jsonl").read_text().splitlines()]
        return sorted((r["step"], r["rank"], tuple(r["keys"])) for r in rows)

    assert per_rank(killed) == per_rank(whole)
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


def draws() -> tuple:
    """The next draws of torch's, Python's and numpy's generators."""
    return tuple(torch.rand(3).tolist()), random.random(), float(numpy.random.rand())


def seeded(seed: int):
    torch.manual_seed(seed)
    random.seed(seed)
    numpy.random.seed(seed)


def resumed_draws(monkeypatch, saved, rank: int) -> tuple:
    """What `rank` draws first after resuming from a checkpoint whose ``rng_states`` is `saved`."""
    module = SpeechLLMModule(torch.nn.Linear(2, 2), {}, None, {}, ctc_weight=0.0, generation=None, total_steps=1,
                             ce_start_step=0)
    monkeypatch.setattr(SpeechLLMModule, "global_rank", rank)
    seeded(777)  # what seed_everything did at the start of the resumed process
    module.on_load_checkpoint({"rng_states": saved})
    module.on_train_batch_start({}, 0)
    return draws()


def test_each_rank_saves_and_resumes_its_own_generators(monkeypatch):
    # Rank 0 writes the checkpoint with what the ranks gathered: here rank 1's state is made by hand.
    seeded(1)
    rank_1 = rng_state(torch.device("cpu"))
    rank_1_next = draws()
    seeded(0)
    module = SpeechLLMModule(torch.nn.Linear(2, 2), {}, None, {}, ctc_weight=0.0, generation=None, total_steps=1,
                             ce_start_step=0)
    monkeypatch.setattr(module, "gathered", lambda own: [own, rank_1])
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    rank_0_next = draws()
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["rng_states"]

    assert resumed_draws(monkeypatch, saved, 0) == rank_0_next
    assert resumed_draws(monkeypatch, saved, 1) == rank_1_next


def test_a_rank_the_checkpoint_has_no_generators_for_is_seeded_from_the_seed_and_its_rank(monkeypatch):
    seeded(0)
    rank_0 = rng_state(torch.device("cpu"))
    rank_0_next = draws()
    # A checkpoint from before per-rank states holds rank 0's alone, as a dict.
    assert resumed_draws(monkeypatch, rank_0, 0) == rank_0_next
    rank_1 = resumed_draws(monkeypatch, rank_0, 1)
    assert rank_1 != rank_0_next and rank_1 == resumed_draws(monkeypatch, [rank_0], 1)
    # Resumed on 3 ranks from 2: rank 2 starts the same way each time, and differently from rank 1.
    rank_2 = resumed_draws(monkeypatch, [rank_0, rank_0], 2)
    assert rank_2 == resumed_draws(monkeypatch, [rank_0], 2) and rank_2 != rank_1


@pytest.mark.slow
def test_fsdp2_shards_across_two_processes_to_the_weights_of_one(one_process, tiny_corpus, tmp_path):
    fit(tmp_path / "two", tiny_corpus, STEPS, "data.num_workers=1", "--strategy", "fsdp2", "trainer.devices=2")
    a, b = weights(one_process), weights(tmp_path / "two")
    assert a.keys() == b.keys()  # one gathered last.ckpt, as a single process writes it
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_fsdp2_with_lora_on_a_frozen_bf16_llm(tiny_corpus, tmp_path):
    run = tmp_path / "lora"
    fit(run, tiny_corpus, "trainer.max_steps=2", "--strategy", "fsdp2", "trainer.devices=2", "data.num_workers=1",
        "model.llm.lora.enabled=true", "model.llm.dtype=bfloat16", "model.train=[adapter,speech_markers,lora]")
    state = weights(run)
    lora = [k for k in state if "lora_" in k]
    frozen = [k for k in state if k.startswith("model.llm.") and "lora_" not in k and k.endswith("weight")]
    assert lora and frozen
    assert all(state[k].dtype == torch.bfloat16 for k in frozen)
    assert all(state[k].dtype == torch.float32 for k in lora)
    # The LoRA B matrices start at zero; training moved them.
    assert any(float(state[k].abs().sum()) > 0 for k in lora if "lora_B" in k)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_bf16_accumulation_and_clipping_train_under_each_strategy(strategy, tiny_corpus, tmp_path):
    # Step 1 trains CTC alone (loss.ce_start_step=1): the LLM's gradient is zero, not missing, so DDP needs
    # no find_unused_parameters (it would stop with "parameters that were not used in producing the loss").
    run = tmp_path / strategy
    fit(run, tiny_corpus, "trainer.max_steps=2", "trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2",
        "loss.ce_start_step=1", "loss.ctc_weight=0.3",
        "trainer.gradient_clip_val=0.5", "data.num_workers=1", "--strategy", strategy, "trainer.devices=2")
    lines = [json.loads(x) for x in (run / "train_keys.jsonl").read_text().splitlines()]
    assert sorted({(x["step"], x["rank"]) for x in lines}) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    state = weights(run)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_sigterm_to_rank_0_stops_both_ranks_at_one_step_and_resumes_exactly(tiny_corpus, tmp_path):
    # `kill PID` reaches rank 0 only: the ranks agree at the next step's end, save once and stop together.
    import os
    import signal

    extra = ["trainer.max_steps=10", "data.num_workers=1", *two_processes()]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    fit(whole, tiny_corpus, *extra)
    command = [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", "asr,ved", "--out", str(stopped),
               *data_args(tiny_corpus), *COMMON, *extra]
    with started_until_step(command, stopped, 4) as process:
        os.kill(process.pid, signal.SIGTERM)
        stderr = stderr_at_end(process)
    assert process.returncode == 0, stderr[-3000:]
    step = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 4 <= step < 10 and f"stopped by SIGTERM after step {step}" in stderr
    fit(stopped, tiny_corpus, *extra, "--resume", str(stopped))
    rows = [json.loads(x) for x in (stopped / "train_keys.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (whole / "train_keys.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["rank"], tuple(r["keys"])) for r in rows) == sorted(
        (r["step"], r["rank"], tuple(r["keys"])) for r in expected)
    a, b = weights(whole), weights(stopped)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
