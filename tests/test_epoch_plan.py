"""The epoch plan: mixture weights realised as shares, task weights within a source, streams that read
disjoint shards and together cover the data, and a plan that is a pure function of seed and epoch."""

import json
from collections import Counter
from pathlib import Path

import pytest

from osum_core.cli.main import main
from osum_core.data.length_index import read_shard_list
from osum_core.data.sources import SourceError, resolve_sources
from osum_core.plugins import load_tasks
from osum_core.train.datamodule import SpeechDataModule


class Words:
    eos_token_id = 1

    def encode(self, text, add_special_tokens=False):
        return [2 + len(w) for w in text.split()]


def data_cfg(train, **changes):
    from osum_core.config import fit_config

    cfg = fit_config(overrides=["data.num_workers=0"])["data"]
    return {**cfg, "train": train, **changes}


def plan_for(train, tasks=("asr", "ved"), weights=None, **changes):
    selected = {t.name: t for t in load_tasks().select(list(tasks))}
    for name, weight in (weights or {}).items():
        selected[name] = selected[name].with_weights(sampling_weight=weight)
    module = SpeechDataModule(data_cfg(train, **changes), selected, Words(), seed=5, ctc_target="transcript",
                              sequence_length=lambda frames, prompt, target, per_step: frames // 8 + prompt + target)
    return module.plan("train")


def epoch_items(plan, epoch=0, rank=0, world=1, workers=1):
    return [item for batch in plan.batches(epoch, rank, world, workers) for item in batch]


@pytest.fixture(scope="module")
def task_shards(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """The tiny corpus's ASR and VED items as two shard lists (one per task), 4 items per shard."""
    out = tmp_path_factory.mktemp("task_shards")
    lists = {}
    for tag, name in (("<TRANSCRIBE>", "asr"), ("<TRANSCRIBE> <CAPTION>", "ved")):
        manifest = out / f"{name}.jsonl"
        lines = [json.loads(x) for x in (tiny_corpus / "train.jsonl").read_text().splitlines()]
        manifest.write_text("".join(json.dumps({**x, "wav": str(tiny_corpus / x["wav"])}) + "\n"
                                    for x in lines if x["task"] == tag))
        assert main(["data", "shard", str(manifest), str(out / name), "--per-shard", "4", "--quiet"]) == 0
        lists[name] = out / name / "shards.list"
    return lists


def test_mixture_weights_are_the_shares_of_an_epoch(task_shards):
    # Relative paths resolve against the YAML's folder.
    mixture = task_shards["asr"].parents[1] / "mix.yaml"
    mixture.write_text("asr_data:\n  path: asr/shards.list\n  weight: 3\nved_data:\n  path: ved/shards.list\n  weight: 1\n")
    plan = plan_for(str(mixture))
    items = epoch_items(plan)
    assert [len(read_shard_list(p)) for p in task_shards.values()] == [6, 6]
    shares = Counter(item.example.task for item in items)
    n = sum(shares.values())
    assert n == 48  # an epoch has as many items as the sources together (24 + 24)
    assert shares == {"asr": 36, "ved": 12}  # 3 : 1, whatever the sources' sizes
    # asr's 36 draws exceed its 24 items: all of them, some twice; ved gives a random half.
    asr_keys = Counter(item.example.key for item in items if item.example.task == "asr")
    assert len(asr_keys) == 24 and max(asr_keys.values()) == 2
    assert len({item.example.key for item in items if item.example.task == "ved"}) == 12
    # Another epoch draws another ved half, reproducibly.
    again = epoch_items(plan, epoch=1)
    ved = lambda xs: {i.example.key for i in xs if i.example.task == "ved"}  # noqa: E731
    assert ved(again) != ved(items)
    assert [i.example.key for i in epoch_items(plan, epoch=1)] == [i.example.key for i in again]


def test_task_weights_share_a_source_and_plain_lists_are_one_source(tiny_corpus):
    plan = plan_for(str(tiny_corpus / "train.jsonl"), weights={"asr": 0.5})
    shares = Counter(item.example.task for item in epoch_items(plan))
    assert shares == {"asr": 16, "ved": 32}  # 48 items, asr : ved = 0.5 : 1
    equal = Counter(item.example.task for item in epoch_items(plan_for(str(tiny_corpus / "train.jsonl"))))
    assert equal == {"asr": 24, "ved": 24}
    assert set(Counter(i.example.task for i in epoch_items(plan_for(str(tiny_corpus / "train.jsonl"),
                                                                     weights={"ved": 0.0})))) == {"asr"}
    with pytest.raises(ValueError, match="weight 0"):
        epoch_items(plan_for(str(tiny_corpus / "train.jsonl"), weights={"asr": 0.0, "ved": 0.0}))
    both = plan_for([str(tiny_corpus / "train.jsonl"), str(tiny_corpus / "dev.jsonl")])
    assert len(both.sources) == 1 and sum(1 for _ in epoch_items(both)) == 48 + 12


def test_streams_read_disjoint_shards_and_together_cover_the_epoch(task_shards):
    plan = plan_for(str(task_shards["asr"]), tasks=("asr",))
    single = sorted(i.example.key for i in epoch_items(plan))
    assert len(single) == 24 and len(set(single)) == 24
    per_rank, shards_read = [], []
    for rank in range(2):
        items = epoch_items(plan, rank=rank, world=2, workers=2)
        per_rank.append([i.example.key for i in items])
        streams = {}
        for item in items:
            streams.setdefault(item.draw.split(":")[0], set()).add(item.example.wav)
        assert len(streams) == 2
        shards_read.extend(streams.values())
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == single  # each item once, as with one process
    for a in range(len(shards_read)):
        for b in range(a + 1, len(shards_read)):
            assert shards_read[a].isdisjoint(shards_read[b])  # each (rank, worker) reads its own shards
    # A manifest (one piece) is split item by item.
    manifest_plan = plan_for(str(task_shards["asr"].parents[1] / "asr.jsonl"), tasks=("asr",))
    halves = [{i.example.key for i in epoch_items(manifest_plan, rank=r, world=2)} for r in range(2)]
    assert halves[0].isdisjoint(halves[1]) and len(halves[0] | halves[1]) == 24


def test_bad_data_paths_are_named(tiny_corpus, tmp_path):
    with pytest.raises(SourceError, match="data.train is not set"):
        resolve_sources(None, "data.train")
    with pytest.raises(SourceError, match=r"nowhere.jsonl: not found"):
        resolve_sources(str(tmp_path / "nowhere.jsonl"), "data.train")
    with pytest.raises(SourceError, match=r"unknown kind of data file"):
        resolve_sources(str(tiny_corpus / "wav"), "data.train")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"a:\n  path: {tiny_corpus / 'train.jsonl'}\n  weight: 1\n  weigth: 2\n")
    with pytest.raises(SourceError, match=r"mix.yaml: source 'a': unknown key\(s\) weigth"):
        resolve_sources(str(mixture), "data.train")
    mixture.write_text(f"a:\n  path: {tiny_corpus / 'train.jsonl'}\n  weight: -1\n")
    with pytest.raises(SourceError, match=r"weight must be a number >= 0"):
        resolve_sources(str(mixture), "data.train")
    mixture.write_text(f"a:\n  path: {tiny_corpus / 'train.jsonl'}\n")
    with pytest.raises(SourceError, match=r"stand beside a mixture without a weight"):
        resolve_sources([str(mixture), str(tiny_corpus / "dev.jsonl")], "data.train")
