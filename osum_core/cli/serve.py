"""``osum serve``: a checkpoint (export, import or run directory) -> an OpenAI-compatible HTTP server."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from osum_core.config import ConfigError, configured_tasks, load_config
from osum_core.plugins import TaskRegistry

# Flags and the serve.* settings they set (every setting is also a key=value override).
FLAGS = {"host": "host", "port": "port", "device": "device", "dtype": "dtype", "max_batch": "max_batch",
         "batch_wait_ms": "batch_wait_ms", "api_key": "api_key"}


def add_command(commands: argparse._SubParsersAction, with_registry: Any) -> None:
    serve = commands.add_parser("serve", help="an OpenAI-compatible speech API (and a demo page) over a checkpoint")
    serve.add_argument("--ckpt", required=True, help="osum checkpoint directory, run directory or .ckpt file")
    serve.add_argument("--host", help="address to listen on (default serve.host: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, help="port (default serve.port: 8000)")
    serve.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default serve.device: auto)")
    serve.add_argument("--dtype", choices=["fp32", "bf16"], help="weights and decoding (default serve.dtype: fp32)")
    serve.add_argument("--max-batch", type=int, help="most rows decoded together; 1: batching off (serve.max_batch)")
    serve.add_argument("--batch-wait-ms", type=float, help="how long a batch waits to fill (serve.batch_wait_ms)")
    serve.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1 (also OSUM_API_KEY)")
    serve.add_argument("overrides", nargs="*", metavar="key=value",
                       help="serve.* settings (configs/serve.yaml) and the checkpoint's, e.g. serve.max_queue=64 "
                            "eval.generation.max_new_tokens=96")
    serve.set_defaults(run=with_registry(cmd_serve))


def checkpoint_name(ckpt: str) -> str:
    """The model id a checkpoint is served under: its directory's name (a .ckpt file's run directory's)."""
    from osum_core.checkpoints.run_dir import run_of_checkpoint

    path = Path(ckpt).resolve()
    return run_of_checkpoint(path).name if path.is_file() else path.name


def serve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The serve section (defaults, the serve.* overrides, then the flags) and the checkpoint's overrides."""
    ours = [item for item in args.overrides if item.startswith("serve.")]
    cfg = load_config("serve", overrides=ours)["serve"]
    for flag, key in FLAGS.items():
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    cfg["api_key"] = cfg["api_key"] or os.environ.get("OSUM_API_KEY") or None
    for key in ("max_batch", "max_queue"):
        if cfg[key] < 1:
            raise ConfigError(f"serve.{key} must be at least 1, got {cfg[key]}")
    return cfg, [item for item in args.overrides if not item.startswith("serve.")]


def cmd_serve(args: argparse.Namespace, registry: TaskRegistry) -> int:
    import uvicorn

    from osum_core.checkpoints.loading import load_checkpoint
    from osum_core.cli.inference import pick_device
    from osum_core.serve.app import build_app
    from osum_core.serve.engine import SpeechEngine

    settings, model_overrides = serve_settings(args)
    loaded = load_checkpoint(args.ckpt, model_overrides)
    tasks = configured_tasks(registry.tasks, loaded.tasks or list(registry.tasks), loaded.config["tasks"])
    engine = SpeechEngine(loaded, tasks, device=pick_device(settings["device"]), dtype=settings["dtype"],
                          long_audio=settings["long_audio"], max_audio_seconds=settings["max_audio_seconds"])
    name = settings["model_name"] or checkpoint_name(args.ckpt)
    app = build_app(engine, settings, name, settings["api_key"])
    if settings["host"] not in ("127.0.0.1", "localhost", "::1") and not settings["api_key"]:
        print(f"osum: warning: serving on {settings['host']} without --api-key: anyone who reaches this port can "
              "use the model", file=sys.stderr)
    print(f"osum serve: {name} ({', '.join(tasks)}) on http://{settings['host']}:{settings['port']}/ "
          f"(max batch {settings['max_batch']}, device {engine.device})", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=settings["host"], port=settings["port"], log_level="warning"))
    # On SIGTERM uvicorn stops accepting, answers what is in flight, then raises the signal again to the
    # handler it found: this one, so that a graceful stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    return 0
