"""Ranks yield equal batch counts without dropping data: a short rank splits batches as often as needed, and
manifests (whatever their sizes) are dealt to the streams item by item, so streams are of equal size."""

import json

from test_epoch_plan import epoch_items, plan_for

from osum_core.data.loader import evened, splits


def test_a_rank_splits_batches_as_often_as_it_needs_to_reach_the_agreed_count():
    batches = [[1, 2, 3], [4], [5, 6, 7, 8], [9, 10]]
    for length in range(4, 11):  # up to one item per batch
        parts = list(evened(iter(batches), length, splits([len(b) for b in batches], length)))
        assert len(parts) == length and [i for part in parts for i in part] == list(range(1, 11))
        assert all(parts)
    # The usual case is as before: the last batches of two or more items cut in two, once.
    assert splits([3, 1, 4, 2], 6) == {2: 2, 3: 2}


def test_manifests_of_very_different_sizes_give_two_ranks_equal_shares(tiny_corpus, tmp_path):
    lines = [json.loads(x) for x in (tiny_corpus / "train.jsonl").read_text().splitlines()]
    rows = [{**x, "wav": str(tiny_corpus / x["wav"])} for x in lines]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows[:45]))
    (tmp_path / "small.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows[45:]))
    plan = plan_for([str(tmp_path / "big.jsonl"), str(tmp_path / "small.jsonl")])
    shares = [epoch_items(plan, 0, rank, 2, 1) for rank in (0, 1)]
    assert abs(len(shares[0]) - len(shares[1])) <= 2  # was 45 against 3: one manifest per stream
    assert sorted(i.example.key for share in shares for i in share) == sorted(x["key"] for x in rows)


def test_a_mixtures_sources_may_share_keys(tiny_corpus, tmp_path):
    # OSUM's task sources label the same utterances, under the same keys, for different tasks.
    lines = [json.loads(x) for x in (tiny_corpus / "train.jsonl").read_text().splitlines()]
    asr = [{**x, "wav": str(tiny_corpus / x["wav"])} for x in lines if x["task"] == "<TRANSCRIBE>"]
    ved = [{**x, "key": a["key"], "wav": str(tiny_corpus / x["wav"])}
           for x, a in zip([x for x in lines if x["task"] != "<TRANSCRIBE>"], asr, strict=True)]
    for name, rows in (("asr", asr), ("ved", ved)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (tmp_path / "mix.yaml").write_text("asr: {path: asr.jsonl}\nved: {path: ved.jsonl}\n")
    plan = plan_for(str(tmp_path / "mix.yaml"))
    assert sum(len(p.examples) for s in plan.sources for p in s.pieces) == len(asr) + len(ved)
