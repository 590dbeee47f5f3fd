"""``osum export`` and ``osum import-osum``: checkpoints into the osum checkpoint directory
(`osum_core.checkpoints.directory`)."""

from __future__ import annotations

import sys
from pathlib import Path

from osum_core.checkpoints.directory import check_export_out, save_checkpoint_dir
from osum_core.checkpoints.loading import load_checkpoint
from osum_core.config import load_config, preset_files

OSUM_TASKS = ["asr", "srwt", "ved", "ser", "ssr", "sgc", "sap", "sttc"]


def cmd_export(args) -> int:
    check_export_out(Path(args.out), args.overwrite)  # before the checkpoint is read (minutes at 7B)
    loaded = load_checkpoint(args.ckpt)
    info = save_checkpoint_dir(
        loaded.model, loaded.tokenizer, loaded.config, loaded.tasks, Path(args.out),
        source=loaded.source, merge_lora=args.merge_lora, copy_llm=True if args.copy_llm else None,
        overwrite=args.overwrite,
    )
    print(f"exported {loaded.source} -> {args.out} (llm: {info['llm']}, lora: {info['lora']})")
    return 0


def cmd_import_osum(args) -> int:
    from osum_core.checkpoints.osum_import import import_osum_checkpoint

    check_export_out(Path(args.out), args.overwrite)
    cfg = load_config("fit", preset_files(args.preset.split(",")), list(args.overrides))
    result = import_osum_checkpoint(Path(args.file), cfg, Path(args.out), OSUM_TASKS, args.encoder_heads,
                                    overwrite=args.overwrite)
    print(result.report(per_key=False), file=sys.stderr)  # the line for each key: in the report file only
    print(f"imported {args.file} -> {args.out} (report: {args.out}/import_report.txt)")
    return 0
