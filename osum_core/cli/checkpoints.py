"""``osum export`` and ``osum import-osum``: checkpoints into the osum checkpoint directory
(`osum_core.train.checkpoint_dir`)."""

from __future__ import annotations

import sys
from pathlib import Path

from osum_core.cli.config import CONFIG_DIR, ConfigError, load_config, to_plain
from osum_core.train.checkpoint_dir import load_backbone, save_checkpoint_dir

OSUM_TASKS = ["asr", "srwt", "ved", "ser", "ssr", "sgc", "sap", "sttc"]


def preset_files(presets: list[str], stages: list[str]) -> list[Path]:
    """configs/presets/<name>.yaml and configs/stages/<name>.yaml, in that order."""
    files = []
    for folder, names in (("presets", presets), ("stages", stages)):
        for name in names:
            path = CONFIG_DIR / folder / f"{name}.yaml"
            if not path.is_file():
                known = ", ".join(sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml")))
                raise ConfigError(f"no {folder[:-1]} {name!r} (configs/{folder}/: {known})")
            files.append(path)
    return files


def cmd_export(args) -> int:
    backbone = load_backbone(args.ckpt)
    info = save_checkpoint_dir(
        backbone.model, backbone.tokenizer, to_plain(backbone.config), backbone.tasks, Path(args.out),
        source=backbone.source, merge_lora=args.merge_lora, copy_llm=True if args.copy_llm else None,
    )
    print(f"exported {backbone.source} -> {args.out} (llm: {info['llm']}, lora: {info['lora']})")
    return 0


def cmd_import_osum(args) -> int:
    from osum_core.train.osum_import import import_osum_checkpoint

    cfg = load_config("fit", preset_files(args.preset.split(","), []), list(args.overrides))
    result = import_osum_checkpoint(Path(args.file), to_plain(cfg), Path(args.out), OSUM_TASKS, args.encoder_heads)
    print(result.report(), file=sys.stderr)
    print(f"imported {args.file} -> {args.out} (report: {args.out}/import_report.txt)")
    return 0
