"""The demo learns. A short run of the demo (configs/presets/demo.yaml: its model, CTC options, loss and
schedule; ASR+VED) on a small demo corpus must reach bounds that every seed tried reached: a learning
bound, not a timing one. It fails when a change stops the demo from learning to read speech: the data, the
model, the loss, the schedule, packing or CTC compression.

The run: 300 training utterances per task from fit.yaml's 8 training voices, 600 steps (the first 250
train the CTC head alone), tested on 30 utterances per task of held-out voices and digit strings. Those two
settings (`CALIBRATED`) are the preset's of the day the bounds were measured; the preset has since moved to
27 voices and 500 CTC-only steps, which learn better in its 1,500 steps but begin reading speech later
than a few minutes allow. The run computes on one thread (`threads=1`, as each `make test` worker does), so
its result does not depend on the machine's core count. What it reached on 2026-12-06, with the preset's utterance
embedding (`osum fit` with the settings below, the corpus of `osum data synth --seed k` with these settings
given as manifests; "corpus" is the seed the corpus was made with, "seed" the run's):

| corpus | seed | threads | ASR WER | VED accuracy | VED transcript WER | VED answers invalid |
|---|---|---|---|---|---|---|
| 1 | 1 | 1 | 0.302 | 0.533 | 0.406 | 0 |
| 2 | 2 | 1 | 0.211 | 0.633 | 0.336 | 0 |
| 1 | 2 | 1 | 0.453 | 0.467 | 0.511 | 0 |
| 1 | 3 | 1 | 0.151 | 0.433 | 0.195 | 1 |
| 2 | 1 | 1 | 0.436 | 0.467 | 0.514 | 0 |
| 1 | 1 | 2 | 0.151 | 0.633 | 0.248 | 0 |

The first row has this test's settings and corpus, given as manifests (run twice: the same figures to the last
digit). Before the utterance embedding
and the fix that lets the time embedding train (2026-12-05, each seed its own corpus, 2 threads) seeds 1-4 gave
ASR WER 0.187, 0.361, 0.588 and 0.652, VED transcript WER up to 0.662, 0 invalid.

At 600 steps the LLM has just begun to read speech (in the full demo, validation WER falls from about 0.6
to 0.15 between steps 500 and 750), and when it begins moves with the seed: hence the spread, and bounds
that leave room for it. A run that does not learn to read speech stays near WER 1 (after its CTC-only
steps the demo's WER is above 1). VED's label is learnt later than its words (README, "The demo and what
it learns"), so the bound on VED here is on its format and its words; `make demo` measures the label.
"""

import json

import pytest

from osum_core.cli.main import main
from osum_core.config import load_config

SHORT_RUN = [
    "data.demo.train_per_task=300", "data.demo.eval_per_task=30",
    "trainer.max_steps=600", "trainer.val_check_interval=600", "trainer.enable_progress_bar=false", "threads=1",
]
CALIBRATED = [  # the preset's values when the bounds below were measured
    f"data.demo.train_voices=[{','.join(load_config()['data']['demo']['train_voices'])}]",  # fit.yaml's 8
    "loss.ce_start_step=250",
]
MAX_WER = 0.8  # ASR, and VED's transcript (the worst tried: 0.453 and 0.514; before, 0.652 and 0.662)
MAX_INVALID_VED = 3  # answers of the 30 that are not "words<event>" with a known event


@pytest.mark.slow
def test_a_short_demo_run_learns_to_read_held_out_voices(tmp_path):
    run = tmp_path / "run"
    args = ["fit", "--tasks", "asr,ved", "--out", str(run), f"data.demo.dir={tmp_path / 'data'}", "seed=1", *SHORT_RUN,
            *CALIBRATED]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    asr, ved = metrics["asr"], metrics["ved"]
    assert asr["count"] == 30 and ved["count"] == 30
    assert asr["wer"] <= MAX_WER and ved["wer"] <= MAX_WER, metrics
    assert ved["invalid"] <= MAX_INVALID_VED, ved
