"""``osum study``: a grid of arms (config overrides) x seeds, each an ordinary ``osum fit`` run in a folder of
its own, then a comparison of them (`osum_core.inference.study_report`: study.md, study.json, study.png).

    osum study --tasks asr,ser,sgc --out runs/asr-x --seeds 1,2 \\
        --arm asr_x= --arm x_only='tasks.ser.transcript=false tasks.sgc.transcript=false' trainer.max_steps=2000

- An arm is ``NAME=OVERRIDES``: a folder name, then ``key=value`` items separated by spaces (quoted as in a
  shell), possibly none. Without ``--arm`` the study has one arm, ``base``.
- Run (arm, k) is ``osum fit --tasks T --out OUT/<arm>/seed<k>`` with the study's ``--preset``, ``--stage``,
  ``--strategy`` and ``--config``, then the ``key=value`` items given to the study, then the arm's (the arm's
  value wins), then ``seed=k``. The study sets ``seed``, ``out``, ``resume`` and ``overwrite`` itself.
- Before any run starts, every arm's config is checked as ``osum fit`` checks its own (unknown keys, values of
  the wrong kind, task options a task does not take, the whole-config checks of `fit_checks`), and so is every
  run to be resumed (`osum_core.cli.resume`); the error names the arm.
- The demo corpus depends on the seed. When the runs' data.train/val/test are null (the demo corpus), each seed
  gets its own corpus in ``ROOT/seed<k>``, shared by the arms of that seed (they compare on the same data);
  ROOT is ``OUT/demo_data``, or data.demo.dir when the study's settings change it (to share corpora between
  studies). An arm that changes a data.demo setting gets ``ROOT/<arm>/seed<k>``.
- The runs go one after another, seed by seed, each in a child process (``python -m osum_core.cli.main fit``): a run that
  fails does not stop the study, and ``--strategy ddp`` relaunches the child's own command. Its output goes to
  ``OUT/<arm>/seed<k>/study.log`` and to the terminal.
- Again after an interruption, the same command resumes: a run whose metrics.json is written is not run again
  (a finished run is never extended: change a setting in a new --out), one with ``checkpoints/last.ckpt`` is
  continued with ``--resume``, any other starts afresh. SIGTERM (and Ctrl-C) is passed on to the running fit as
  SIGTERM, which saves and stops it (`osum_core.train.preemption`); the study then writes its comparison and
  stops.

`add_command` runs whenever osum builds its parser: this module imports the rest of osum when a study runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from osum_core.plugins import TaskRegistry

DEFAULT_ARM = "base"
DEMO_DATA = "demo_data"  # OUT/demo_data: the study's demo corpora (so no arm may take the name)
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STUDY_SETS = ("seed", "out", "resume", "overwrite")  # keys the study sets for each run
SPLITS = ("train", "val", "test")


def add_command(commands: argparse._SubParsersAction, with_registry: Callable) -> None:
    study = commands.add_parser(
        "study", help="runs of config-override arms x seeds (each an osum fit run), then a comparison",
        description="Each arm x seed is `osum fit --out OUT/<arm>/seed<k>`; then OUT/study.md, study.json and "
                    "study.png compare them. Run the same command again to resume an interrupted study.")
    study.add_argument("--tasks", required=True, help="comma-separated task names (see `osum tasks`), or all")
    study.add_argument("--out", required=True, help="the study's folder: OUT/<arm>/seed<k> are the runs")
    study.add_argument("--seeds", help="comma-separated seeds, each run with seed=k (default: the config's seed)")
    study.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDES",
                       help="an arm: its name and key=value overrides separated by spaces, e.g. "
                            "x_only='tasks.ser.transcript=false' or base= (repeatable; default: one arm, base)")
    study.add_argument("--preset", action="append", default=[], help="as for osum fit (default: demo)")
    study.add_argument("--stage", action="append", default=[], help="as for osum fit")
    study.add_argument("--strategy", action="append", default=[], help="as for osum fit, e.g. ddp")
    study.add_argument("--config", action="append", default=[], help="as for osum fit: a YAML merged over the defaults")
    study.add_argument("--dry-run", action="store_true",
                       help="check everything and print each run's command (or that it is finished), then exit")
    study.add_argument("--quiet", action="store_true", help="the runs' output only in their study.log")
    study.add_argument("overrides", nargs="*", metavar="key=value", help="for every run, e.g. trainer.max_steps=2000")
    study.set_defaults(run=with_registry(cmd_study))


def parse_arms(specs: Sequence[str]) -> dict[str, list[str]]:
    """{arm name: its overrides} from ``NAME=OVERRIDES`` items; one arm ``base`` when there are none."""
    arms: dict[str, list[str]] = {}
    for spec in specs or [f"{DEFAULT_ARM}="]:
        name, equals, text = spec.partition("=")
        if not equals or not ARM_NAME.match(name) or name == DEMO_DATA:
            raise ValueError(f"--arm {spec!r}: expected NAME=OVERRIDES, NAME of letters, digits, _ . - (not "
                             f"{DEMO_DATA}), e.g. --arm x_only='tasks.ser.transcript=false' or --arm base=")
        if name in arms:
            raise ValueError(f"--arm {name}: two arms have that name (each arm's runs live in OUT/{name})")
        try:
            items = shlex.split(text)
        except ValueError as error:
            raise ValueError(f"arm {name!r}: {error} in {text!r}") from None
        not_pairs = [item for item in items if "=" not in item]
        if not_pairs:
            raise ValueError(f"arm {name!r}: {not_pairs[0]!r} is not key=value")
        arms[name] = items
    return arms


def parse_seeds(text: str | None, default: int) -> list[int]:
    if text is None:
        return [default]
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text}: expected comma-separated whole numbers, e.g. 1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text}: expected distinct seeds, e.g. 1,2")
    return seeds


def refuse_study_keys(where: str, overrides: Sequence[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in STUDY_SETS:
            raise ValueError(f"{where}: {item!r}: the study sets {key} itself for each run ({', '.join(STUDY_SETS)}; "
                             "seeds with --seeds, folders under --out)")


def uses_demo_corpus(cfg: Mapping[str, Any]) -> bool:
    return not any(cfg["data"][split] for split in SPLITS)


def corpus_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a demo corpus is made of (data.demo, less its folder and the number of synthesis processes)."""
    return {key: value for key, value in cfg["data"]["demo"].items() if key not in ("dir", "workers")}


@dataclass
class PlannedRun:
    arm: str
    seed: int
    run_dir: Path
    overrides: list[str]  # the study's, the arm's, seed=k and the corpus folder
    action: str  # "finished" (not run again), "resume" or "start"


class Study:
    """The study's checked plan: its settings, runs and the commands that run them."""

    def __init__(self, args: argparse.Namespace, registry: TaskRegistry) -> None:
        from osum_core.config import fit_config

        self.args, self.registry = args, registry
        self.out = Path(args.out)
        self.tasks = [task.name for task in registry.select(args.tasks.split(","))]
        self.arms = parse_arms(args.arm)
        self.common = list(args.overrides)
        refuse_study_keys("the study's overrides", self.common)
        for name, overrides in self.arms.items():
            refuse_study_keys(f"arm {name!r}", overrides)
        common = self.checked_config(self.common, "the study's settings")
        self.seeds = parse_seeds(args.seeds, common["seed"])
        # The corpora's root: OUT/demo_data, unless the study's own settings name a folder.
        shipped = fit_config(args.preset, args.stage, (), (), args.strategy)["data"]["demo"]["dir"]
        given = common["data"]["demo"]["dir"]
        self.demo_root = Path(given) if given != shipped else self.out / DEMO_DATA
        self.runs: list[PlannedRun] = []
        self.demo_dirs: dict[str, dict[str, str]] = {}  # arm -> seed -> its corpus folder
        self.own_corpus: list[str] = []  # the arms that change a data.demo setting
        for name, overrides in self.arms.items():
            cfg = self.checked_config([*self.common, *overrides, f"seed={self.seeds[0]}"], f"arm {name!r}")
            for seed in self.seeds:
                items = [*self.common, *overrides, f"seed={seed}"]
                if uses_demo_corpus(cfg):
                    root = Path(cfg["data"]["demo"]["dir"]) if cfg["data"]["demo"]["dir"] != given else self.demo_root
                    if corpus_settings(cfg) != corpus_settings(common):
                        root = root / name
                        self.own_corpus = [*dict.fromkeys([*self.own_corpus, name])]
                    folder = root / f"seed{seed}"
                    items.append(f"data.demo.dir={folder}")
                    self.demo_dirs.setdefault(name, {})[str(seed)] = str(folder)
                self.runs.append(self.planned(name, seed, items))

    def checked_config(self, overrides: Sequence[str], where: str) -> dict[str, Any]:
        """The config ``osum fit`` would run with these overrides, checked as it checks it (`where` names the arm)."""
        from osum_core.cli.fit_checks import fit_config_problems
        from osum_core.config import configured_tasks, fit_config
        from osum_core.demo.prepare import check_recipe_options

        args = self.args
        try:
            cfg = fit_config(args.preset, args.stage, args.config, overrides, args.strategy)
            configured_tasks(self.registry.tasks, self.tasks, cfg["tasks"])
            if uses_demo_corpus(cfg):
                check_recipe_options(cfg["data"]["demo"], self.registry.recipes)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"{where}: {error}") from None
        problems = fit_config_problems(cfg)
        if cfg["trainer"].get("limit_test_batches") in (0, 0.0):  # a study compares the runs' test metrics
            problems.append("trainer.limit_test_batches is 0: a study compares test metrics, and no run would have any")
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        return cfg

    def planned(self, arm: str, seed: int, overrides: list[str]) -> PlannedRun:
        from osum_core.checkpoints.run_dir import CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS, is_checkpoint
        from osum_core.cli.resume import resume_config
        from osum_core.inference.study_report import run_dir

        run = run_dir(self.out, arm, seed)
        planned = PlannedRun(arm, seed, run, overrides, "start")
        finished = (run / METRICS).is_file()
        if finished or is_checkpoint(run / CHECKPOINT_DIR / LAST_CHECKPOINT):
            self.check_same_settings(planned)
        if finished:
            return PlannedRun(arm, seed, run, overrides, "finished")
        if not is_checkpoint(run / CHECKPOINT_DIR / LAST_CHECKPOINT):
            return planned
        args = self.args
        try:  # refused here, before any run starts, rather than when its turn comes
            resume_config(str(run), ",".join(self.tasks), args.preset, args.stage, args.strategy, args.config, overrides)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"arm {arm!r} seed {seed}: {error}") from None
        return PlannedRun(arm, seed, run, overrides, "resume")

    def check_same_settings(self, run: PlannedRun) -> None:
        """A run already in the study's folder counts (finished) or continues (resumed) only if this study
        made it with the settings it plans now: the first attempt's command in its study_run.json, less the
        run's folder flag. Anything else (other overrides, a run not made by a study) is refused, so one arm
        never mixes two settings."""
        from osum_core.inference.study_report import RUN_RECORD, read_attempts

        attempts = read_attempts(run.run_dir)
        where = f"arm {run.arm!r} seed {run.seed}: {run.run_dir}"
        if not attempts:
            raise ValueError(f"{where} holds a run that this study did not start (no {RUN_RECORD}); "
                             "use another --out, or move that folder away")
        if settings_of(attempts[0]["command"]) != settings_of(self.command(run)):
            raise ValueError(f"{where} was run with other settings ({shlex.join(attempts[0]['command'][3:])}); "
                             "a study's arms keep their settings: use another --out, or move that folder away")
        changed = self.changed_settings(run)
        if changed:
            raise ValueError(f"{where} was run with other settings than the same command gives now "
                             f"({'; '.join(changed)}: osum's defaults, a preset or a --config file changed since, or "
                             "relative data paths name other files from here); use another --out, or move that "
                             "folder away")

    def changed_settings(self, run: PlannedRun) -> list[str]:
        """'key old -> new' for each setting of the run's stored config that the same command no longer gives
        (osum's defaults, a preset or a --config file changed since it ran). Its folder, its corpus folder and
        the data paths that the demo corpus fills in are the run's own (the study's folder may have moved:
        `settings_of`)."""
        from osum_core.checkpoints.run_dir import latest_run_config
        from osum_core.cli.resume import EARLIER_DEFAULTS, changed_keys, fixed, stored_run_config
        from osum_core.config import fit_config
        from osum_core.config.load import absolute_data_paths

        args = self.args
        # A setting added to osum since the run counts at the value the run had (EARLIER_DEFAULTS), so a run
        # made before packing was the default is refused as a study that now packs (its batches differ); one
        # that changes no more than rounding (the fused optimiser: not a key resume fixes) is let be.
        stored, _ = stored_run_config(latest_run_config(run.run_dir))
        planned = absolute_data_paths(fit_config(args.preset, args.stage, args.config, run.overrides, args.strategy))
        own = {"out", "resume", "overwrite", *(key for key in EARLIER_DEFAULTS if not fixed(key))}
        if uses_demo_corpus(planned):
            own |= {"data.train", "data.val", "data.test", "data.demo.dir"}
        return changed_keys(stored, planned, lambda key: key not in own)

    def command(self, run: PlannedRun) -> list[str]:
        command = [sys.executable, "-m", "osum_core.cli.main", "fit", "--tasks", ",".join(self.tasks)]
        for flag in ("preset", "stage", "strategy", "config"):
            for value in getattr(self.args, flag):
                command += [f"--{flag}", value]
        command += ["--resume" if run.action == "resume" else "--out", str(run.run_dir)]
        return [*command, *run.overrides]

    def settings(self) -> dict[str, Any]:
        if self.demo_dirs:
            rule = (f"each seed's own, {self.demo_root}/seed<k>, shared by the arms of that seed"
                    + "".join(f"; arm {arm} changes data.demo: its own, {self.demo_root}/{arm}/seed<k>"
                              for arm in self.own_corpus))
        else:
            rule = "none: every run reads the data it is given (data.train/val/test)"
        return {"out": str(self.out), "tasks": self.tasks, "seeds": self.seeds, "arms": self.arms,
                "common": self.common, **{key: getattr(self.args, key) for key in ("preset", "stage", "strategy", "config")},
                "demo_rule": rule, "demo_dirs": self.demo_dirs}

    def headline(self) -> dict[str, str]:
        return {name: self.registry.tasks[name].metric for name in self.tasks}

    def write_report(self) -> list[Any]:
        from osum_core.inference.study_report import read_run, write_study

        results = [read_run(self.out, run.arm, run.seed) for run in self.runs]
        write_study(self.out, results, self.settings(), self.headline())
        return results


def settings_of(command: Sequence[str]) -> list[str]:
    """A run's command without the interpreter, the flag that names its folder (``--out`` on its first
    attempt, ``--resume`` later) and its corpus folder (under the study's folder, which may have moved): what
    must not change between a study's attempts."""
    kept, skip = [], False
    for item in command[1:]:
        if skip:
            skip = False
        elif item in ("--out", "--resume"):
            skip = True
        elif not item.startswith("data.demo.dir="):
            kept.append(item)
    return kept


def echo(chunk: bytes) -> None:
    """A run's output, shown on stderr (stdout carries the study's JSON line)."""
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:
        sys.stderr.write(chunk.decode("utf-8", errors="replace"))
    sys.stderr.flush()


def launch(command: Sequence[str], log: Path, quiet: bool) -> tuple[int, float, bool]:
    """Run `command`, its output appended to `log` (and shown unless `quiet`); (exit status, seconds, whether
    the study was told to stop meanwhile). SIGTERM and Ctrl-C reach the run as SIGTERM: it saves and stops."""
    from osum_core.inference.study_report import ATTEMPT_HEADER

    started = time.monotonic()
    stopping = False
    with log.open("ab") as out:
        out.write(f"{ATTEMPT_HEADER}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC: {shlex.join(command)}\n".encode())
        out.flush()
        # A session of its own: a terminal's Ctrl-C reaches the study alone, which passes it on as SIGTERM (the
        # run saves, then stops); sent to the run directly, Lightning would stop it without saving.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        assert process.stdout is not None

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

        try:
            previous = signal.signal(signal.SIGTERM, stop)
        except ValueError:  # not the main thread: no signals to take
            previous = None
        try:
            while True:
                try:
                    chunk = os.read(process.stdout.fileno(), 1 << 16)
                    if not chunk:
                        returncode = process.wait()
                        break
                    out.write(chunk)
                    out.flush()
                    if not quiet:
                        echo(chunk)
                except KeyboardInterrupt:  # Ctrl-C: the run saves and stops; its output goes on to the end
                    stop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if process.poll() is None:  # the study itself failed: its run must not outlive it unseen
                process.send_signal(signal.SIGTERM)
                process.wait()
            process.stdout.close()
    return returncode, time.monotonic() - started, stopping


def cmd_study(args: argparse.Namespace, registry: TaskRegistry) -> int:
    from osum_core.inference.study_report import RUN_LOG, STUDY_MD, record_attempt

    study = Study(args, registry)  # every check, before anything is written or run
    for run in study.runs:
        shown = f": {shlex.join(study.command(run))}" if args.dry_run and run.action != "finished" else ""
        print(f"{run.arm} seed {run.seed}: {run.action}{shown}", file=sys.stderr)
    if args.dry_run:
        return 0
    study.out.mkdir(parents=True, exist_ok=True)
    stopped = False
    # Seed by seed: an interrupted study already holds every arm of its first seeds, comparable pair by pair.
    for run in sorted(study.runs, key=lambda run: study.seeds.index(run.seed)):
        if run.action == "finished":
            continue
        command = study.command(run)
        print(f"osum study: {run.arm} seed {run.seed} ({run.action}) -> {run.run_dir}", file=sys.stderr)
        attempt = {"command": command, "resumed": run.action == "resume",
                   "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "returncode": None, "seconds": None}
        record_attempt(run.run_dir, attempt)
        returncode, seconds, stopped = launch(command, run.run_dir / RUN_LOG, args.quiet)
        record_attempt(run.run_dir, {**attempt, "returncode": returncode, "seconds": round(seconds, 1),
                                     "interrupted": stopped}, replace_last=True)
        study.write_report()
        if stopped:
            break
    results = study.write_report()
    for result in results:
        print(f"{result.arm} seed {result.seed}: {result.status}", file=sys.stderr)
    print(json.dumps({"study": str(study.out / STUDY_MD), "runs": len(results),
                      "finished": sum(r.status == "finished" for r in results)}))
    if stopped:
        print("osum study: stopped; run the same command again to continue", file=sys.stderr)
        return 0
    return 0 if all(result.status == "finished" for result in results) else 1
