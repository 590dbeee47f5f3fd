"""``osum`` command line: ``fit``, ``study``, ``serve``, ``test``, ``predict``, ``export``, ``import-osum``, ``tasks``, ``data synth``,
``data shard``, ``data check``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

# Each command imports what it uses when it runs: building the parser (and answering --help) must not pay
# for torch, Lightning or transformers, which the task contract's metrics and the models bring in.
if TYPE_CHECKING:
    from osum_core.plugins import TaskRegistry
    from osum_core.task import Task


def task_rows(registry: TaskRegistry, configured: dict[str, Task], origins: dict[str, str]) -> list[dict]:
    """One row per installed task: its weights and options as `configured` (the tasks with the config's
    ``tasks:`` section applied: the values training uses), and under ``overrides`` each value a config sets,
    with where (`override_origins`) and the task's own default; every other value is the task's own."""
    from osum_core.config.tasks import TASK_WEIGHTS
    from osum_core.demo.recipe import recipe_tag

    rows = []
    for task in registry.tasks.values():
        used = configured[task.name]
        recipe = recipe_tag(used, registry.recipes)
        own = {**{key: getattr(task, key) for key in TASK_WEIGHTS}, **task.options}
        rows.append({
            "name": task.name,
            "tag": used.tag,
            "labels": list(task.labels),
            "metric": task.metric,
            **{key: getattr(used, key) for key in TASK_WEIGHTS},
            "options": dict(used.options),
            "overrides": {
                key: {"from": origins[f"{task.name}.{key}"], "task_default": own[key]}
                for key in own if f"{task.name}.{key}" in origins
            },
            "prompts": {language: len(bank) for language, bank in task.prompts.items()},
            "demo_data": recipe is not None,
            "demo_options": dict(registry.recipes[recipe].options) if recipe is not None else {},
            "package": registry.packages[task.name],
            "defined_at": registry.origins.get(task.name, "?"),
        })
    return rows


def report_problems(registry: TaskRegistry) -> None:
    for problem in registry.problems:
        print(f"osum: warning: {problem}", file=sys.stderr)


def cmd_tasks(args: argparse.Namespace) -> int:
    from osum_core.config import configured_tasks, fit_config
    from osum_core.config.tasks import TASK_WEIGHTS, override_origins
    from osum_core.plugins import load_tasks

    registry = load_tasks()
    report_problems(registry)
    cfg = fit_config(args.preset, (), args.config, args.overrides)
    configured = configured_tasks(registry.tasks, list(registry.tasks), cfg["tasks"])
    rows = task_rows(registry, configured, override_origins(args.preset, args.config, args.overrides))
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0

    def value(row: dict, key: str) -> str:  # a value a config sets is starred (listed below the table)
        shown = f"{row[key]:g}" if key in TASK_WEIGHTS else repr(row["options"][key])
        return shown + ("*" if key in row["overrides"] else "")

    columns = ("name", "tag", "metric", "loss", "label", "sample", "ctc", "package", "labels")
    table = [
        (row["name"], row["tag"], row["metric"], *(value(row, key) for key in TASK_WEIGHTS), row["package"],
         ", ".join(row["labels"]) or "-")
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *table)]
    for line in [columns, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
    print("\nloss, label, sample, ctc: the task's loss_weight, label_loss_weight, sampling_weight and "
          "ctc_loss_weight (set as tasks.<name>.<key>=value)")
    with_options = [row for row in rows if row["options"]]
    if with_options:
        print("\noptions (set as tasks.<name>.<option>=value):")
        for row in with_options:
            print(f"  {row['name']}: " + ", ".join(f"{k}={value(row, k)}" for k in row["options"]))
    overridden = [(row, key) for row in rows for key in row["overrides"]]
    if overridden:
        print("\n* set by a config (every other value is the task's own, from its module):")
        for row, key in overridden:
            override = row["overrides"][key]
            default = override["task_default"]
            shown = f"{default:g}" if key in TASK_WEIGHTS else repr(default)
            print(f"  tasks.{row['name']}.{key}: from {override['from']} (the task's own: {shown})")
    with_demo_options = [row for row in rows if row["demo_options"]]
    if with_demo_options:
        print("\ndemo-corpus options (set as data.demo.options.<option>=value):")
        for row in with_demo_options:
            print(f"  {row['name']}: " + ", ".join(f"{k}={v!r}" for k, v in row["demo_options"].items()))
    print("\ndefined at:")
    for row in rows:
        print(f"  {row['name']}: {row['defined_at']}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from osum_core.config import load_config
    from osum_core.demo.prepare import synthesize_demo
    from osum_core.plugins import load_tasks

    overrides = [f"data.demo.{item}" for item in args.overrides]
    if args.workers is not None:
        overrides.append(f"data.demo.workers={args.workers}")
    cfg = load_config("fit", overrides=overrides)
    seed = cfg["seed"] if args.seed is None else args.seed
    registry = load_tasks()
    report_problems(registry)
    tasks = registry.select(args.tasks.split(","))
    progress = lambda message: print(message, file=sys.stderr)  # noqa: E731  (stdout carries the JSON)
    dirs = synthesize_demo(Path(args.dir), tasks, registry.recipes, cfg["data"]["demo"], seed, progress)
    print(json.dumps({name: str(path) for name, path in dirs.items()}))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from osum_core.config import fit_config, to_yaml

    overrides = [item for item in args.overrides if not item.startswith("resume=")]
    resume = args.resume or next((item[len("resume="):] for item in args.overrides if item.startswith("resume=")), None)
    if args.init:
        overrides.append(f"init={args.init}")
    if resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite starts one again: give one of them")
    if resume:
        from osum_core.cli.resume import resume_config

        cfg, task_names = resume_config(resume, args.tasks, args.preset, args.stage, args.strategy, args.config,
                                        overrides, args.out)
    elif not args.tasks:
        raise ValueError("--tasks is required (comma-separated task names, see `osum tasks`), except with --resume")
    else:
        if args.out:
            overrides.append(f"out={args.out}")
        if args.overwrite:
            overrides.append("overwrite=true")
        cfg, task_names = fit_config(args.preset, args.stage, args.config, overrides, args.strategy), args.tasks.split(",")
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from osum_core.plugins import load_tasks

    registry = load_tasks()
    report_problems(registry)
    registry.select(task_names)  # fail on an unknown task before anything heavy starts

    from osum_core.cli.fit import fit

    fit(cfg, task_names, registry)  # it prints the test metrics (the first process only)
    return 0


def with_registry(command):
    def run(args: argparse.Namespace) -> int:
        from osum_core.plugins import load_tasks

        registry = load_tasks()
        report_problems(registry)
        return command(args, registry)

    return run


def cmd_test_lazy(args: argparse.Namespace, registry: TaskRegistry) -> int:
    from osum_core.cli.inference import cmd_test

    return cmd_test(args, registry)


def cmd_predict_lazy(args: argparse.Namespace, registry: TaskRegistry) -> int:
    from osum_core.cli.inference import cmd_predict

    return cmd_predict(args, registry)


def cmd_export_lazy(args: argparse.Namespace) -> int:
    from osum_core.cli.checkpoints import cmd_export

    return cmd_export(args)


def cmd_import_osum_lazy(args: argparse.Namespace) -> int:
    from osum_core.cli.checkpoints import cmd_import_osum

    return cmd_import_osum(args)


def data_commands(data: argparse._SubParsersAction, with_registry) -> None:
    from osum_core.cli.data import add_commands

    add_commands(data, with_registry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osum", description="Train OSUM-style speech LLMs, one plugin per task.")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train on the selected tasks, then test")
    fit.add_argument("--tasks", help="comma-separated task names (see `osum tasks`), or all; with --resume, the run's")
    fit.add_argument(
        "--preset", action="append", default=[], help="configs/presets/NAME.yaml (e.g. osum-7b; default: demo)"
    )
    fit.add_argument("--stage", action="append", default=[], help="configs/stages/NAME.yaml, after the preset")
    fit.add_argument("--strategy", action="append", default=[],
                     help="configs/strategies/NAME.yaml: ddp, fsdp2, deepspeed_zero2 (or set trainer.strategy=NAME)")
    fit.add_argument("--config", action="append", default=[], help="a YAML file merged over the defaults (repeatable)")
    fit.add_argument("--init", help="osum checkpoint directory to start from (same as init=DIR)")
    fit.add_argument("--resume", help="continue a run as it was configured: its directory or a .ckpt (its config is "
                                      "the base; only the settings given now change, and not those its data plan "
                                      "or model depend on)")
    fit.add_argument("--out", help="run directory (same as out=DIR)")
    fit.add_argument("--overwrite", action="store_true",
                     help="start again in an --out that holds a run (same as overwrite=true)")
    fit.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    fit.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=20")
    fit.set_defaults(run=cmd_fit)

    from osum_core.cli.study import add_command as add_study  # light: a study imports osum when it runs

    add_study(commands, with_registry)

    from osum_core.cli.serve import add_command as add_serve  # light: the server is imported when it runs

    add_serve(commands, with_registry)

    test = commands.add_parser("test", help="evaluate a checkpoint on test manifests and write a report")
    test.add_argument("--ckpt", required=True, help="osum checkpoint directory, run directory or .ckpt file")
    test.add_argument("--tasks", required=True, help="comma-separated task names, or all")
    test.add_argument("--out", default="runs/test", help="report directory (default runs/test)")
    test.add_argument("--batch-size", type=int, help="utterances decoded together (default: eval.batch_size)")
    test.add_argument("--device", help="auto (GPU if present), cpu, cuda, cuda:1, ... (default: eval.device)")
    test.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="over the checkpoint's config, e.g. data.test=test.jsonl eval.generation.num_beams=4",
    )
    test.set_defaults(run=with_registry(cmd_test_lazy))

    predict = commands.add_parser("predict", help="answer audio files with a checkpoint; JSON lines out")
    predict.add_argument("--ckpt", required=True, help="osum checkpoint directory, run directory or .ckpt file")
    predict.add_argument("--task", help="task whose prompt and parser to use (see `osum tasks`)")
    predict.add_argument("--prompt", help="your own instruction instead of the task's prompt")
    predict.add_argument("--manifest", help="a jsonl manifest (key, wav) to answer, besides FILES")
    predict.add_argument("--output", help="write JSON lines here instead of stdout")
    predict.add_argument("--batch-size", type=int, help="utterances decoded together (default: eval.batch_size)")
    predict.add_argument("--device", help="auto (GPU if present), cpu, cuda, cuda:1, ... (default: eval.device)")
    predict.add_argument(
        "--set", action="append", default=[], metavar="key=value",
        help="decoding setting of eval.generation, e.g. --set num_beams=4 --set do_sample=true",
    )
    predict.add_argument("files", nargs="*", help="audio files (any format soundfile reads, any rate, any channels)")
    predict.set_defaults(run=with_registry(cmd_predict_lazy), overrides=[])

    export = commands.add_parser("export", help="a run or .ckpt -> an osum checkpoint directory")
    export.add_argument("--ckpt", required=True, help="run directory or its .ckpt file")
    export.add_argument("--out", required=True, help="the directory to write")
    export.add_argument("--merge-lora", action="store_true", help="merge LoRA into the LLM weights (written to llm/)")
    export.add_argument("--copy-llm", action="store_true", help="write llm/ even when the LLM is its frozen source")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    export.set_defaults(run=cmd_export_lazy)

    importer = commands.add_parser("import-osum", help="OSUM's released infer.pt -> an osum checkpoint directory")
    importer.add_argument("file", help="OSUM checkpoint (.pt state dict)")
    importer.add_argument("--out", required=True, help="the directory to write")
    importer.add_argument("--preset", default="osum-7b", help="model preset it was trained with (default osum-7b)")
    importer.add_argument("--encoder-heads", type=int, help="encoder attention heads (default: Whisper's for its width)")
    importer.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    importer.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.llm.path=/models/Qwen2-7B")
    importer.set_defaults(run=cmd_import_osum_lazy)

    tasks = commands.add_parser(
        "tasks", help="list installed tasks with the weights and options `osum fit` uses, and where each is set"
    )
    tasks.add_argument("--json", action="store_true", help="print a JSON list")
    tasks.add_argument("--preset", action="append", default=[], help="as for osum fit (default: demo)")
    tasks.add_argument("--config", action="append", default=[], help="as for osum fit: a YAML merged over the defaults")
    tasks.add_argument("overrides", nargs="*", metavar="key=value", help="as for osum fit, e.g. tasks.ved.loss_weight=2")
    tasks.set_defaults(run=cmd_tasks)

    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="synthesise the demo corpus with eSpeak NG")
    synth.add_argument("dir", help="writes DIR/<task>/{train,dev,test}.jsonl with the audio, and DIR/{train,dev,test}.jsonl")
    synth.add_argument("--tasks", default="all", help="comma-separated task names, or all (default)")
    synth.add_argument("--seed", type=int, help="the corpus is a pure function of the seed (default: config's seed)")
    synth.add_argument("--workers", type=int, help="synthesis processes (default: data.demo.workers)")
    synth.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="settings of data.demo in configs/fit.yaml, e.g. train_per_task=200 'options.event_positions=[over]'",
    )
    synth.set_defaults(run=cmd_synth)
    data_commands(data, with_registry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere, also after options (argparse alone would refuse them there).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.run(args)
    except Exception as error:
        preemption = sys.modules.get("osum_core.train.preemption")  # imported by training only
        if preemption is not None and isinstance(error, preemption.Preempted):
            print(f"osum: {error}; continue with --resume", file=sys.stderr)
            return 0
        atomic = sys.modules.get("osum_core.checkpoints.atomic")  # imported by whatever writes checkpoints
        disk_full = atomic is not None and isinstance(error, atomic.DiskFullError)
        if not (isinstance(error, ValueError | FileNotFoundError) or disk_full):
            raise
        # Our errors name the file, line or key; a traceback would only bury that.
        print(f"osum: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
