"""`osum data batch-sizes`: doubling then bisecting to the largest batch that trains under the memory cap,
written as data.buckets config keys that `osum fit --config` takes."""

import pytest

from osum_core.cli.main import main
from osum_core.config import fit_config
from osum_core.train.batch_sizes import Trial, largest_batch, parse_bytes

TINY_MODEL = ["model.encoder.config.encoder_layers=1", "model.llm.config.num_hidden_layers=1"]


@pytest.mark.parametrize("capacity", [0, 1, 5, 64, 100, 4096])
def test_the_search_finds_the_largest_size_that_fits(capacity):
    tried = []

    def try_size(size):
        tried.append(size)
        return Trial(size, size <= capacity, size)

    largest, trials = largest_batch(try_size, limit=4096)
    assert largest == capacity
    assert tried[: min(len(tried), 3)] == [1, 2, 4][: min(len(tried), 3)]  # doubling first
    assert len(tried) <= 2 * 13 + 1  # doubling plus bisection: logarithmic, never a linear scan


def test_memory_sizes_parse():
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("512MB") == 512 * 10**6 and parse_bytes("1000") == 1000


@pytest.mark.slow
def test_batch_sizes_on_cpu_are_measured_steps_written_as_config(tmp_path, capsys):
    out = tmp_path / "buckets.yaml"
    # Ample memory and a limit of 4: sizes 1, 2 and 4 are real training steps in fresh processes, all fit.
    assert main(["data", "batch-sizes", "--buckets", "3", "--memory-cap", "20GB", "--limit", "4", "--out", str(out),
                 *TINY_MODEL]) == 0
    assert "3 s x 4: fits" in capsys.readouterr().err
    buckets = fit_config(files=[out])["data"]["buckets"]
    # 4 x safety 0.9, rounded down: 3 utterances of 3 s, as a packed model's budget (model.packed, the default):
    # their frames and LLM tokens, so that shorter utterances fill a batch with more of them.
    [bucket] = buckets
    assert bucket["max_seconds"] == 3.0 and bucket["max_frames"] == 3 * 300 and "batch_size" not in bucket
    assert bucket["max_tokens"] % 3 == 0 and bucket["max_tokens"] // 3 > 300 // 16  # prompt + speech + target
    # A cap below what one step needs: refused, naming the bucket.
    assert main(["data", "batch-sizes", "--buckets", "3", "--memory-cap", "50MB", "--limit", "4", *TINY_MODEL]) == 2
    assert "not even one 3 s utterance" in capsys.readouterr().err
    # On a CPU the cap is required.
    assert main(["data", "batch-sizes", "--device", "cpu", *TINY_MODEL]) == 2
    assert "--memory-cap" in capsys.readouterr().err
