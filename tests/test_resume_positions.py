"""Resume where real runs stop, at their shapes (`RUN_SHAPE`: several sort windows, two buckets, two weighted
sources, epochs that differ in length): from a checkpoint at an epoch's last step, at the next epoch's first
step and in the middle of an epoch; manifests and shards; 0 and 2 dataloader workers; 1 and 2 ranks with
dropout on. Each resumed run trains the keys of an uninterrupted run at every step, to the same weights.
A resume with another number of ranks or workers trains exactly the items its epoch had left.

The oracle is the epoch plan, computed here from the run's own config and tokenizer: every epoch trains
its planned batches, each once."""

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import RUN_SHAPE, TINY, data_args, run_process
from test_exact_resume import kill_after_step, weights

from osum_core.checkpoints.directory import load_tokenizer
from osum_core.config import configured_tasks, load_config
from osum_core.data.loader import EpochBatches, Layout
from osum_core.model.build import build_for_tokenizer
from osum_core.plugins import load_tasks
from osum_core.train.datamodule import SpeechDataModule

pytestmark = pytest.mark.slow

DROPOUT = ["model.adapter.dropout=0.1", "model.encoder.config.dropout=0.1", "model.llm.config.attention_dropout=0.1"]
RUN = [
    *[a for a in TINY if not a.startswith(("trainer.max_steps", "data.num_workers", "trainer.val_check_interval"))],
    *RUN_SHAPE, "trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=0", "data.log_keys=true", "threads=1", "trainer.accelerator=cpu",
]


def layout_args(ranks: int, workers: int) -> list[str]:
    parallel = ["trainer.strategy=ddp", "trainer.devices=2"] if ranks == 2 else ["trainer.strategy=auto", "trainer.devices=1"]
    return [*parallel, f"data.num_workers={workers}"]


def command(out: Path, train: Path, corpus: Path, *extra: str) -> list[str]:
    args = [f"data.train={train}" if a.startswith("data.train=") else a for a in data_args(corpus)]
    return [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", "asr,ved", "--out", str(out), *args, *RUN,
            *extra]


def run(arguments: list[str]) -> None:
    done = run_process(arguments)
    assert done.returncode == 0, done.stderr[-4000:]


def step_keys(run_dir: Path) -> dict[tuple[int, int], list[str]]:
    """(step, rank) -> the keys trained, from train_keys.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "train_keys.jsonl").read_text().splitlines()]
    steps = {(x["step"], x["rank"]): x["keys"] for x in lines}
    assert len(steps) == len(lines), "each step and rank is logged once"
    return steps


class Plan:
    """The epochs a run's config plans, computed independently of its training."""

    def __init__(self, run_dir: Path) -> None:
        cfg = load_config("fit", [run_dir / "config.yaml"])
        registry = load_tasks()
        tasks = configured_tasks(registry.tasks, json.loads((run_dir / "tasks.json").read_text()), cfg["tasks"])
        tokenizer = load_tokenizer(run_dir / "tokenizer")
        model = build_for_tokenizer(cfg["model"], tokenizer)
        module = SpeechDataModule.for_model(cfg, tasks, tokenizer, model, known_tasks=list(registry.tasks.values()))
        self.plan = module.plan("train")

    def epoch(self, epoch: int, ranks: int, workers: int) -> list[list[list[str]]]:
        """Per rank, the keys of each batch of `epoch` for a fresh run with that many ranks and workers."""
        batches = EpochBatches(self.plan, epoch)
        layout = Layout(ranks, max(workers, 1), 1)
        return [[[item.example.key for item in batch] for batch in batches.rank_batches(rank, layout, ())]
                for rank in range(ranks)]


def planned_steps(plan: Plan, ranks: int, workers: int, epochs: int = 2) -> dict[tuple[int, int], list[str]]:
    steps: dict[tuple[int, int], list[str]] = {}
    start = 0
    for epoch in range(epochs):
        by_rank = plan.epoch(epoch, ranks, workers)
        for rank, batches in enumerate(by_rank):
            for index, keys in enumerate(batches):
                steps[start + index + 1, rank] = keys
        start += len(by_rank[0])
    return steps


def resumes_exactly(whole: Path, killed: Path, base: list[str], checkpoint_step: int, kill_after: int) -> None:
    """Kill a run once it has logged step `kill_after` (its last checkpoint: step `checkpoint_step`), resume it
    with the same command, and compare it with the uninterrupted run `whole`."""
    kill_after_step([*base, f"checkpoint.every_n_steps={checkpoint_step}"], killed, kill_after)
    checkpoint = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == checkpoint_step
    run([*base, f"checkpoint.every_n_steps={checkpoint_step}", "--resume", str(killed)])
    assert step_keys(killed) == step_keys(whole)
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def whole_manifest(two_sources, tiny_corpus, tmp_path_factory) -> Path:
    """The uninterrupted run on the manifests, one rank with 2 dataloader workers: the reference of both tests
    here that stop such a run (trained once: the same command trains the same keys to the same weights)."""
    whole = tmp_path_factory.mktemp("whole_manifest") / "whole"
    run(command(whole, two_sources["manifest"], tiny_corpus, *layout_args(1, 2)))
    return whole


@pytest.mark.parametrize("kind,workers", [("manifest", 2), ("shards", 0)])
def test_resume_is_exact_at_an_epochs_end_the_next_epochs_start_and_mid_epoch(kind, workers, two_sources, tiny_corpus,
                                                                              tmp_path, request):
    if kind == "manifest":
        whole = request.getfixturevalue("whole_manifest")
    else:
        whole = tmp_path / "whole"
        run(command(whole, two_sources[kind], tiny_corpus, *layout_args(1, workers)))
    plan = Plan(whole)
    first, second = (plan.epoch(e, 1, workers)[0] for e in (0, 1))
    assert len(second) != len(first)  # the shape this test is about: epochs that differ in length
    if kind == "manifest":
        assert len(second) > len(first)  # and a later one longer than the first (Lightning reads the length once)
    assert step_keys(whole) == planned_steps(plan, 1, workers)  # each epoch trains its plan, every batch once
    end = len(first)
    for name, checkpoint_step, kill_after in (("end", end, end + 2), ("start", end + 1, end + 3),
                                              ("middle", end // 2, end // 2 + 2)):
        killed = tmp_path / name
        resumes_exactly(whole, killed, command(killed, two_sources[kind], tiny_corpus, *layout_args(1, workers)),
                        checkpoint_step, kill_after)


def test_a_two_rank_run_with_dropout_resumes_exactly_from_an_epochs_end(two_sources, tiny_corpus, tmp_path):
    layout = [*layout_args(2, 1), *DROPOUT]
    whole = tmp_path / "whole"
    run(command(whole, two_sources["manifest"], tiny_corpus, *layout))
    plan = Plan(whole)
    assert step_keys(whole) == planned_steps(plan, 2, 1)
    end = len(plan.epoch(0, 2, 1)[0])
    killed = tmp_path / "killed"
    resumes_exactly(whole, killed, command(killed, two_sources["manifest"], tiny_corpus, *layout), end, end + 2)


@pytest.mark.parametrize("before,after", [((2, 1), (1, 1)), ((1, 1), (2, 1)), ((1, 2), (1, 0))],
                         ids=["2-ranks-to-1", "1-rank-to-2", "2-workers-to-0"])
def test_a_resume_with_other_ranks_or_workers_trains_exactly_the_items_its_epoch_had_left(before, after, two_sources,
                                                                                           tiny_corpus, tmp_path):
    killed = tmp_path / "killed"
    kill_after_step(command(killed, two_sources["manifest"], tiny_corpus, *layout_args(*before),
                            "checkpoint.every_n_steps=5"), killed, 7)
    run(command(killed, two_sources["manifest"], tiny_corpus, *layout_args(*after), "checkpoint.every_n_steps=5",
                "--resume", str(killed)))
    plan = Plan(killed)
    first = plan.epoch(0, *before)
    trained = step_keys(killed)
    # The first 5 steps are the old layout's; then the rest of epoch 0 on the new layout, then epoch 1 planned for it.
    assert {k: v for k, v in trained.items() if k[0] <= 5} == {
        (step + 1, rank): batches[step] for rank, batches in enumerate(first) for step in range(5)}
    expected = Counter(key for batches in first for batch in batches for key in batch)
    expected.update(key for batches in plan.epoch(1, *after) for batch in batches for key in batch)
    assert Counter(key for keys in trained.values() for key in keys) == expected
    assert (killed / "config.resume-1.yaml").is_file()


def test_a_run_stopped_mid_epoch_by_its_step_budget_continues_that_epoch_when_resumed(whole_manifest, two_sources,
                                                                                      tiny_corpus, tmp_path):
    # Lightning counts the epoch as finished when max_steps stops it; the data position says where it was.
    whole, stopped = whole_manifest, tmp_path / "stopped"
    run(command(stopped, two_sources["manifest"], tiny_corpus, *layout_args(1, 2), "trainer.max_steps=10"))
    run(command(stopped, two_sources["manifest"], tiny_corpus, *layout_args(1, 2), "--resume", str(stopped)))
    assert step_keys(stopped) == step_keys(whole)
    a, b = weights(whole), weights(stopped)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
