"""Where a trained model loses what the speaker is (gender, by default): a linear probe at each stage.

    python bench/speaker_probe.py --ckpt runs/demo_all --train data/demo_all/sgc/train.jsonl \
        --test data/demo_all/sgc/test.jsonl --field gender --out bench/results/speaker_probe.json

For every utterance of two manifests (demo manifests carry ``gender`` on every line, whatever the task), the
model's view of it at three stages is averaged over time: the log-mel input, the encoder states, and the
speech steps the LLM reads (after CTC compression, the adapter and the added embeddings). A logistic
regression per stage is fitted on the first manifest (the training voices) and scored on the second
(held-out voices). A stage that scores near the one before it kept the field; a drop says where it went.
Measured on issue 21's demo-all runs (BENCHMARKS.md): the input and the encoder states gave gender on
held-out voices at 1.00 and 0.96, the LLM's speech steps at 0.76, while the LLM answered it at chance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from osum_core.checkpoints.loading import load_checkpoint  # noqa: E402
from osum_core.data.audio import load_audio  # noqa: E402
from osum_core.data.features import LogMel  # noqa: E402

STAGES = ("input", "encoder", "speech_steps")


def stage_means(model, log_mel: LogMel, manifest: Path, field: str, limit: int | None):
    """[utterances, width] per stage, and each utterance's value of `field`."""
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [row for row in rows if field in row][:limit]
    means: dict[str, list[torch.Tensor]] = {stage: [] for stage in STAGES}
    with torch.no_grad():
        for row in rows:
            features = log_mel(load_audio(manifest.parent / row["wav"]))[None]
            out = model.encode_speech(features, torch.tensor([features.shape[1]]))
            means["input"].append(features[0].mean(dim=0))
            means["encoder"].append(out["encoder_states"][0, : int(out["encoder_lengths"][0])].float().mean(dim=0))
            means["speech_steps"].append(out["speech"][0, : int(out["speech_lengths"][0])].float().mean(dim=0))
    return {stage: torch.stack(x) for stage, x in means.items()}, [str(row[field]) for row in rows]


def probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                   classes: int, l2: float) -> tuple[float, float]:
    """Multinomial logistic regression on standardised features (L-BFGS); accuracy on train and on test."""
    mean, std = train.mean(dim=0), train.std(dim=0) + 1e-5
    train, test = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(train @ weight + bias, train_labels) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return tuple(float(((x @ weight + bias).argmax(dim=1) == y).float().mean())
                     for x, y in ((train, train_labels), (test, test_labels)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="run directory, .ckpt or osum checkpoint directory")
    parser.add_argument("--train", required=True, type=Path, help="manifest the probes are fitted on")
    parser.add_argument("--test", required=True, type=Path, help="manifest they are scored on (held-out voices)")
    parser.add_argument("--field", default="gender", help="the manifest field to predict")
    parser.add_argument("--limit", type=int, default=None, help="at most this many utterances of each manifest")
    parser.add_argument("--l2", type=float, default=1e-3, help="the probes' weight penalty")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    loaded = load_checkpoint(args.ckpt)
    model = loaded.model.eval()
    log_mel = LogMel(loaded.config["data"]["n_mels"])
    train, train_values = stage_means(model, log_mel, args.train, args.field, args.limit)
    test, test_values = stage_means(model, log_mel, args.test, args.field, args.limit)
    classes = sorted(set(train_values))
    unknown = sorted(set(test_values) - set(classes))
    if len(classes) < 2 or unknown:
        raise SystemExit(f"{args.field}: the probes need 2 or more values in {args.train} ({classes}), and every "
                         f"value of {args.test} among them (not: {unknown})")
    y_train = torch.tensor([classes.index(v) for v in train_values])
    y_test = torch.tensor([classes.index(v) for v in test_values])
    result = {"ckpt": str(args.ckpt), "field": args.field, "classes": classes,
              "utterances": {"train": len(y_train), "test": len(y_test)},
              "majority_test": max(y_test.bincount().tolist()) / len(y_test), "stages": {}}
    print(f"{args.field}: probes fitted on {len(y_train)} utterances, scored on {len(y_test)} "
          f"(majority class {result['majority_test']:.2f})")
    for stage in STAGES:
        fitted, held_out = probe_accuracy(train[stage], y_train, test[stage], y_test, len(classes), args.l2)
        result["stages"][stage] = {"width": train[stage].shape[1], "train": fitted, "test": held_out}
        print(f"  {stage:<13} width {train[stage].shape[1]:>5}  train {fitted:.3f}  held-out {held_out:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
