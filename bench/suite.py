"""osum against Hugging Face Qwen2-Audio on the same work: `make bench` (both sizes), `make bench-quick` (tiny).

Both systems are built at the same sizes from config classes (same encoder width and depth, same Qwen2 LLM
config and vocabulary, all parameters trained) and get the same utterances, prompts and target tokens:

- Qwen2-Audio (`Qwen2AudioForConditionalGeneration`, transformers' own code): every utterance padded to 30 s
  (3,000 mel frames) through the encoder, average-pooled to 25 Hz, a linear projector, audio placeholder
  tokens in the text replaced by the features (as its processor lays them out), stock `generate`.
- osum (`SpeechLLM`): the unpadded utterances with a padding mask, Whisper front end at 50 Hz, OSUM's causal
  adapter convolutions (strides 1, 2, 2: 12.5 Hz into the LLM), a linear projection (`adapter.layers=0`, no CTC
  head), its batched left-padded `generate`. `osum_25hz` is the same with one stride-2 convolution, so the
  LLM gets exactly as many speech steps as Qwen2-Audio's (25 Hz): the training lines report its ratio too
  (`ratio_25hz`), which separates the engineering (no padding) from OSUM's shorter speech sequence.
  osum trains packed (`model.packed`: the batch in one row, no padding computed); `osum_padded` is the same
  model on the batch padded to its longest member (`ratio_padded`), what packing gains.
  Both systems step with torch's fused AdamW (osum's `optim.fused`; the Hugging Face Trainer's default).

Benchmarks (one line each: name, figures, ``ratio=`` osum's throughput over Qwen2-Audio's):
  train_short / train_long  forward + backward + AdamW step; audio seconds and target tokens per second;
                            peak memory of the step in a fresh process (RSS on CPU, CUDA allocator on GPU)
  generate                  batched greedy decoding, same prompts, exactly --new-tokens tokens each
  features                  log-mel of the short batch: osum's `LogMel` vs `WhisperFeatureExtractor`
  loader                    utterances per second from a jsonl manifest through osum's dataset and
                            DataLoader with 2 workers, over the rate train_short consumes them (ratio = loader
                            rate / training rate; the target is >= 5)
Timings are medians of --repeats runs after --warmup runs, all in this one process. Raw figures, sizes,
machine and versions go to bench/results/<benchmark>-<size>.json.

Each training line also gives each system's arithmetic: the FLOPs of one step that torch's FlopCounterMode
counts (matrix products, convolutions and attention, padding included; norms, elementwise work, the loss
and the optimiser count none), counted GFLOP per second of the whole step, and ``flop_ratio=`` (Qwen2-Audio's
counted FLOPs over osum's). Where both systems spend the same time per counted FLOP (a compute-bound CPU),
the FLOP ratio is the speed ratio that doing less work alone gives.
With --bf16 on a CPU the results go to <benchmark>-<size>-bf16.json and the lines say size=<size>-bf16.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from osum_core.config import fit_config, load_config  # noqa: E402
from osum_core.data.collate import pad  # noqa: E402
from osum_core.data.features import SAMPLE_RATE, LogMel  # noqa: E402
from osum_core.model.build import build_speech_llm  # noqa: E402
from osum_core.model.speech_llm import GenerationSettings  # noqa: E402

SIZES = {
    "tiny": dict(  # the demo model's size
        encoder=dict(d_model=192, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=768),
        llm=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=768),
        vocab=1000,
    ),
    "base": dict(  # whisper-base's encoder with an 8-layer, 512-wide Qwen2
        encoder=dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
        llm=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=1536),
        vocab=8000,
    ),
}
LENGTHS = {"short": dict(count=8, seconds=(2.0, 5.0), target=16), "long": dict(count=2, seconds=(20.0, 30.0), target=48)}
PROMPT_TOKENS = 10
MAX_FRAMES = 3000  # Qwen2-Audio's fixed input: 30 s


# -- the two systems ---------------------------------------------------------------------------------------
ADAPTER_STRIDES = {"osum": [1, 2, 2], "osum_25hz": [2], "osum_padded": [1, 2, 2]}  # OSUM's 12.5 Hz; Qwen2-Audio's 25 Hz


def osum_model(size: str, device: str, system: str = "osum"):
    spec = SIZES[size]
    strides = ",".join(map(str, ADAPTER_STRIDES[system]))
    cfg = fit_config(overrides=[
        "model.encoder.conv_strides=[1,2]", f"model.adapter.conv_strides=[{strides}]", "model.adapter.layers=0",
        "model.ctc_head=false", "model.ctc_compression=false", "model.ctc_embeddings=false",
        "model.time_embeddings=false", "model.train=[encoder,adapter,speech_markers,llm]",
        f"model.packed={str(system != 'osum_padded').lower()}",
    ])["model"]
    cfg["encoder"]["config"] = dict(spec["encoder"], num_mel_bins=80, max_source_positions=1500, dropout=0.0)
    cfg["llm"]["config"] = dict(spec["llm"], max_position_embeddings=4096, tie_word_embeddings=False)
    cfg["adapter"]["dropout"] = 0.0
    torch.manual_seed(0)
    return build_speech_llm(cfg, spec["vocab"], eos_token_id=1, pad_token_id=0).to(device)


def qwen2_audio_model(size: str, device: str):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    spec = SIZES[size]
    config = Qwen2AudioConfig(
        audio_config=dict(spec["encoder"], num_mel_bins=80, max_source_positions=1500, dropout=0.0),
        text_config=dict(spec["llm"], model_type="qwen2", vocab_size=spec["vocab"], max_position_embeddings=4096,
                         tie_word_embeddings=False),
        audio_token_id=spec["vocab"] - 1,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2AudioForConditionalGeneration(config).to(device)


def qwen2_audio_tokens(frames: int) -> int:
    """Audio placeholder tokens Qwen2-Audio's processor puts in for an utterance of `frames` mel frames."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


# -- the shared work ---------------------------------------------------------------------------------------
def make_waves(kind: str, seed: int = 0) -> list[torch.Tensor]:
    spec, rng = LENGTHS[kind], random.Random(seed)
    return [torch.randn(int(rng.uniform(*spec["seconds"]) * SAMPLE_RATE), generator=torch.Generator().manual_seed(i)) * 0.1
            for i in range(spec["count"])]


def make_batches(waves, size: str, target_len: int, device: str) -> tuple[dict, dict]:
    """The same utterances, prompts and targets for both systems."""
    vocab = SIZES[size]["vocab"]
    g = torch.Generator().manual_seed(1)
    b = len(waves)
    prompts = torch.randint(2, vocab - 2, (b, PROMPT_TOKENS), generator=g)
    targets = torch.randint(2, vocab - 2, (b, target_len), generator=g)
    log_mel = LogMel(80)
    feats = [log_mel(w) for w in waves]
    features, lengths = pad(feats, 0.0)
    ours = dict(features=features, feature_lengths=lengths, prompt_ids=prompts, prompt_lengths=torch.full((b,), PROMPT_TOKENS),
                target_ids=targets, target_lengths=torch.full((b,), target_len), target_weights=torch.ones(b, target_len))
    # Qwen2-Audio: features padded to 30 s, text = prompt + audio placeholders + target, right-padded.
    padded = torch.zeros(b, 80, MAX_FRAMES)
    for i, f in enumerate(feats):
        padded[i, :, : len(f)] = f.T
    frame_mask = (torch.arange(MAX_FRAMES)[None, :] < lengths[:, None]).long()
    audio_token = vocab - 1
    rows = [[*prompts[i].tolist(), *[audio_token] * qwen2_audio_tokens(int(lengths[i])), *targets[i].tolist()] for i in range(b)]
    width = max(map(len, rows))
    input_ids = torch.zeros(b, width, dtype=torch.long)
    attention = torch.zeros(b, width, dtype=torch.long)
    labels = torch.full((b, width), -100)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        labels[i, len(row) - target_len : len(row)] = targets[i]
    theirs = dict(input_ids=input_ids, attention_mask=attention, labels=labels, input_features=padded,
                  feature_attention_mask=frame_mask)
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return move(ours), move(theirs)


def timed(fn, warmup: int, repeats: int, device: str) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - began)
    return times


def autocast(device: str, bf16: bool):
    """bf16 autocast for both systems, always on a GPU (as osum's presets train there) and on a CPU with --bf16."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16 or device == "cuda")


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` as torch's FlopCounterMode counts them, with a formula for the CPU's fused
    attention kernels, which it has none for (it would count their work as zero). Causal attention counts
    half the score matrix, the work it needs: the lower bound for osum's causal LLM (torch's own formula for
    the GPU kernels counts it whole; the CPU kernel computes whole blocks, at these lengths 75-100 % of the
    time of the full matrix)."""
    from torch.utils import flop_counter

    def forward_flops(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *args,
                      out_shape=None, **kwargs) -> int:
        flops = flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)
        return flops // 2 if is_causal else flops

    def backward_flops(grad_out_shape, query_shape, key_shape, value_shape, out, logsumexp, dropout_p=0.0,
                       is_causal=False, *args, out_shape=None, **kwargs) -> int:
        flops = flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
        return flops // 2 if is_causal else flops

    for op, formula in ((torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, forward_flops),
                        (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward, backward_flops)):
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step_fn(system: str, model, batch, device: str, bf16: bool = False):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            if system != "qwen2_audio":
                out = model(**batch)
                loss = out["token_loss"].sum() / out["token_count"].sum()
            else:
                loss = model(**batch).loss
        loss.backward()
        optimizer.step()

    return step


def peak_memory_child(system: str, size: str, kind: str, device: str, bf16: bool, queue) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = qwen2_audio_model(size, device) if system == "qwen2_audio" else osum_model(size, device, system)
    ours, theirs = make_batches(make_waves(kind), size, LENGTHS[kind]["target"], device)
    step = train_step_fn(system, model, theirs if system == "qwen2_audio" else ours, device, bf16)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    step()
    if device == "cuda":
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
    else:
        # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, kept across exec).
        status = Path("/proc/self/status").read_text()
        queue.put(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024)


def peak_memory(system: str, size: str, kind: str, device: str, bf16: bool) -> float:
    """Peak memory (MiB) of two training steps in a fresh process, so the other system's allocations don't count."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=peak_memory_child, args=(system, size, kind, device, bf16, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


# -- benchmarks ---------------------------------------------------------------------------------------------
def interleaved(fns: dict, warmup: int, repeats: int, device: str) -> dict[str, list[float]]:
    """Time each function `repeats` times, alternating between them, so that a machine that speeds up or
    slows down during the run affects every system alike."""
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        timed(fn, warmup, 0, device)
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += timed(fn, 0, 1, device)
    return times


def bench_train(kind: str, size: str, args) -> dict:
    waves = make_waves(kind)
    ours, theirs = make_batches(waves, size, LENGTHS[kind]["target"], args.device)
    batches = {"osum": ours, "osum_25hz": ours, "osum_padded": ours, "qwen2_audio": theirs}
    audio = sum(len(w) for w in waves) / SAMPLE_RATE
    tokens = len(waves) * LENGTHS[kind]["target"]
    result = {"utterances": len(waves), "audio_seconds": audio, "target_tokens": tokens,
              "bf16_autocast": args.bf16 or args.device == "cuda"}
    models = {"osum": osum_model(size, args.device), "osum_25hz": osum_model(size, args.device, "osum_25hz"),
              "osum_padded": osum_model(size, args.device, "osum_padded"), "qwen2_audio": qwen2_audio_model(size, args.device)}
    steps = {name: train_step_fn(name, model, batches[name], args.device, args.bf16) for name, model in models.items()}
    for system, times in interleaved(steps, args.warmup, args.repeats, args.device).items():
        median = statistics.median(times)
        flops = count_flops(steps[system])  # after the timing: a step of its own, not timed
        result[system] = {"seconds": times, "median": median, "audio_s_per_s": audio / median,
                          "tokens_per_s": tokens / median, "params": sum(p.numel() for p in models[system].parameters()),
                          "gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / median}
    del models, steps
    if args.memory:
        for system in ("osum", "qwen2_audio"):
            result[system]["peak_mib"] = peak_memory(system, size, kind, args.device, args.bf16)
    result["ratio"] = result["osum"]["audio_s_per_s"] / result["qwen2_audio"]["audio_s_per_s"]
    result["ratio_25hz"] = result["osum_25hz"]["audio_s_per_s"] / result["qwen2_audio"]["audio_s_per_s"]
    result["ratio_padded"] = result["osum_padded"]["audio_s_per_s"] / result["qwen2_audio"]["audio_s_per_s"]
    result["flop_ratio"] = result["qwen2_audio"]["gflop"] / result["osum"]["gflop"]
    return result


def bench_generate(size: str, args) -> dict:
    waves = make_waves("short")
    ours, theirs = make_batches(waves, size, 1, args.device)
    n = args.new_tokens
    osum = osum_model(size, args.device).eval()
    qwen = qwen2_audio_model(size, args.device).eval()
    settings = GenerationSettings(**{**load_config()["eval"]["generation"], "max_new_tokens": n, "min_new_tokens": n})
    prompt_only = {k: theirs[k] for k in ("input_features", "feature_attention_mask")}
    # Qwen2-Audio generates after prompt + audio placeholders, left-padded as its processor pads for generation.
    rows = [r[m.bool()][:-1] for r, m in zip(theirs["input_ids"], theirs["attention_mask"])]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=args.device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    produced = {}

    def run_osum():
        with torch.no_grad(), autocast(args.device, args.bf16):
            produced["osum"] = osum.generate(settings=settings, **ours)

    def run_qwen():
        with torch.no_grad(), autocast(args.device, args.bf16):
            produced["qwen2_audio"] = qwen.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                                    min_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=0,
                                                    **prompt_only)

    result = {"utterances": len(waves), "new_tokens": n, "bf16_autocast": args.bf16 or args.device == "cuda"}
    for system, times in interleaved({"osum": run_osum, "qwen2_audio": run_qwen}, args.warmup, args.repeats,
                                     args.device).items():
        result[system] = {"seconds": times, "median": statistics.median(times),
                          "utterances_per_s": len(waves) / statistics.median(times)}
    result["osum"]["generated"] = sum(len(x) for x in produced["osum"])
    result["qwen2_audio"]["generated"] = int((produced["qwen2_audio"][:, width:] != 0).sum())
    result["ratio"] = result["osum"]["utterances_per_s"] / result["qwen2_audio"]["utterances_per_s"]
    return result


def bench_features(args) -> dict:
    from transformers import WhisperFeatureExtractor

    waves = make_waves("short")
    ours = LogMel(80)
    theirs = WhisperFeatureExtractor(feature_size=80)
    arrays = [w.numpy() for w in waves]
    result = {"utterances": len(waves)}
    fns = {
        "osum": lambda: [ours(w) for w in waves],
        "whisper_feature_extractor": lambda: theirs(arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt"),
    }
    for system, times in interleaved(fns, args.warmup, args.repeats * 2, "cpu").items():
        result[system] = {"seconds": times, "median": statistics.median(times),
                          "utterances_per_s": len(waves) / statistics.median(times)}
    result["ratio"] = result["osum"]["utterances_per_s"] / result["whisper_feature_extractor"]["utterances_per_s"]
    return result


def bench_loader(train_short: dict, args) -> dict:
    import soundfile
    from torch.utils.data import DataLoader

    from osum_core.data.collate import collate_examples
    from osum_core.data.dataset import PlanItem, SpeechDataset, TaskPrompts, prepare_examples
    from osum_core.data.manifest import read_manifest
    from osum_core.demo.tokenizer import train_demo_tokenizer
    from osum_core.plugins import load_tasks

    count = args.loader_utterances
    asr = load_tasks().tasks["asr"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rng = random.Random(0)
        lines = []
        for i in range(count):
            wave = (torch.randn(int(rng.uniform(2.0, 5.0) * SAMPLE_RATE)) * 0.1).numpy()
            soundfile.write(root / f"{i}.wav", wave, SAMPLE_RATE)
            lines.append({"key": f"u{i}", "wav": f"{i}.wav", "txt": "one two three four", "task": "<TRANSCRIBE>"})
        (root / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        tokenizer = train_demo_tokenizer(["one two three four"], [], 60)
        examples, _ = prepare_examples(read_manifest(root / "train.jsonl"), [asr], tokenizer)
        dataset = SpeechDataset({"asr": asr}, TaskPrompts.of_tasks({"asr": asr}, tokenizer, "en"), tokenizer.eos_token_id,
                                n_mels=80, train=True, spec_augment=None, seed=0, ctc_target="transcript")
        items = [PlanItem(example, 0, str(i)) for i, example in enumerate(examples)]
        size = LENGTHS["short"]["count"]
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=args.workers,
                            collate_fn=collate_examples, persistent_workers=False)
        began = time.perf_counter()
        delivered = sum(len(batch["keys"]) for batch in loader)
        seconds = time.perf_counter() - began  # worker start-up included
    consumed = train_short["utterances"] / train_short["osum"]["median"]
    rate = delivered / seconds
    return {"utterances": delivered, "workers": args.workers, "seconds": seconds, "loader_utterances_per_s": rate,
            "training_utterances_per_s": consumed, "ratio": rate / consumed}


# -- running ------------------------------------------------------------------------------------------------
def machine() -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def report(name: str, size: str, result: dict, line: str, out: Path) -> None:
    result.update(benchmark=name, size=size, machine=machine())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{size}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name} size={size} {line} ratio={result['ratio']:.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--only", default="train_short,train_long,generate,features,loader")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-utterances", type=int, default=96)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on a CPU too (always on a GPU)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    out, only = Path(args.out), args.only.split(",")
    for size in args.sizes.split(","):
        label = f"{size}-bf16" if args.bf16 and args.device == "cpu" else size  # not to overwrite float32 results
        train_short = None
        for kind in ("short", "long"):
            name = f"train_{kind}"
            if name in only or (kind == "short" and "loader" in only):
                r = bench_train(kind, size, args)
                train_short = r if kind == "short" else train_short
                memory = (f" peak_mib osum={r['osum']['peak_mib']:.0f} qwen2_audio={r['qwen2_audio']['peak_mib']:.0f}"
                          if args.memory else "")
                if name in only:
                    report(name, label, r, f"audio_s/s osum={r['osum']['audio_s_per_s']:.1f} "
                           f"osum_25hz={r['osum_25hz']['audio_s_per_s']:.1f} "
                           f"qwen2_audio={r['qwen2_audio']['audio_s_per_s']:.1f} tokens/s osum={r['osum']['tokens_per_s']:.0f} "
                           f"qwen2_audio={r['qwen2_audio']['tokens_per_s']:.0f}{memory} ratio_25hz={r['ratio_25hz']:.2f} "
                           f"ratio_padded={r['ratio_padded']:.2f} gflop osum={r['osum']['gflop']:.1f} "
                           f"qwen2_audio={r['qwen2_audio']['gflop']:.1f} gflop/s osum={r['osum']['gflop_per_s']:.0f} "
                           f"qwen2_audio={r['qwen2_audio']['gflop_per_s']:.0f} flop_ratio={r['flop_ratio']:.2f}", out)
        if "generate" in only:
            r = bench_generate(size, args)
            report("generate", label, r, f"utterances/s osum={r['osum']['utterances_per_s']:.2f} "
                   f"qwen2_audio={r['qwen2_audio']['utterances_per_s']:.2f} batch={r['utterances']} new_tokens={r['new_tokens']}", out)
        if "loader" in only and size == args.sizes.split(",")[0]:
            r = bench_loader(train_short, args)
            report("loader", label, r, f"loader={r['loader_utterances_per_s']:.1f} utt/s training={r['training_utterances_per_s']:.1f} "
                   f"utt/s workers={r['workers']}", out)
    if "features" in only:
        r = bench_features(args)
        report("features", "cpu", r, f"utterances/s osum={r['osum']['utterances_per_s']:.1f} "
               f"whisper_feature_extractor={r['whisper_feature_extractor']['utterances_per_s']:.1f}", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
