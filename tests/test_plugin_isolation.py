"""Plugins are isolated: only installed ``osum`` entry points load; a plugin that breaks (at import, in a hook)
is named and the others keep working; a task cannot change the manifest lines other tasks read, nor another
task's metrics.

Installed plugins are made for real: a ``*.dist-info`` folder (METADATA, entry_points.txt) and the plugin
module in a folder put on sys.path, which is what pip leaves in site-packages."""

from __future__ import annotations

import copy
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from osum_core.data.dataset import assign_tasks, task_target
from osum_core.inference.scoring import Scorer
from osum_core.plugins import load_tasks
from osum_core.plugins.manager import installed_entry_points
from osum_core.task import Prediction, RecordView, Target, Task, TranscriptMetric

TASK_MODULE = '''
from osum_core.plugins import hookimpl
from osum_core.task import Prediction, Target, Task, TranscriptMetric

TASK = Task(
    name="{task}", tag="<TRANSCRIBE> <{tag}>", prompts={{"en": ("Say it.",)}},
    build_target=lambda example: Target(str(example["txt"])), parse_output=lambda text: Prediction(text, text),
    make_metric=TranscriptMetric, metric="wer",
)


@hookimpl
def osum_tasks():
    return [TASK]
'''


def unique(prefix: str) -> str:
    """A module / task name no other test uses (imported modules stay in sys.modules)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def install(site: Path, package: str, plugins: dict[str, str]) -> None:
    """Write distribution `package` into `site` as pip would: its dist-info, and one module per plugin
    (entry-point name -> module source; the module is named after the entry point)."""
    dist = site / f"{package.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[osum]\n" + "".join(f"{name} = {name}\n" for name in plugins))
    for name, source in plugins.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


def task_plugin(task: str) -> str:
    return TASK_MODULE.format(task=task, tag=task.upper())


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A site-packages folder on sys.path, for distributions a test installs."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_an_installed_plugin_loads_beside_the_builtins(site):
    name = unique("kws")
    install(site, "osum-kws", {name: task_plugin(name)})
    registry = load_tasks()
    assert name in registry.tasks and registry.packages[name] == "osum-kws"
    assert "asr" in registry.tasks and registry.problems == []


def test_nothing_in_the_current_directory_loads_even_when_it_is_on_sys_path(site, tmp_path, monkeypatch):
    """``python -m`` and ``python -c`` put the current directory first on sys.path: a stray distribution there
    (a downloaded folder, a build's leftover ``osum.egg-info``) must neither add plugins nor shadow the
    installed ones, and none of its modules may be imported."""
    here = tmp_path / "work"
    here.mkdir()
    stray, shadow = unique("stray"), unique("shadow")
    marker = here / "imported"
    trap = f"open({str(marker)!r}, 'w').close()\n" + task_plugin(stray)
    install(here, "osum-stray", {stray: trap})
    # A stale egg-info of osum itself, whose asr entry point names another module.
    egg = here / "osum.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: osum\nVersion: 0.0.1\n")
    (egg / "entry_points.txt").write_text(f"[osum]\nasr = {shadow}\n{stray}_too = {stray}\n")
    (here / f"{shadow}.py").write_text(trap)
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))
    monkeypatch.setattr(sys, "path", ["", *sys.path])

    assert not any(e.value in (stray, shadow) for e in installed_entry_points())
    registry = load_tasks()
    assert stray not in registry.tasks and f"{stray}_too" not in registry.tasks
    assert registry.packages["asr"] == "osum" and registry.tasks["asr"].tag == "<TRANSCRIBE>"
    assert registry.problems == []
    assert stray not in sys.modules and shadow not in sys.modules and not marker.exists()


def test_plugins_come_from_entry_points_only():
    """No config key or search path adds plugins: `load_tasks` reads the entry-point group and the plugin
    objects a caller passes, nothing else."""
    import inspect

    assert list(inspect.signature(load_tasks).parameters) == ["blocked", "extra_plugins"]
    registry = load_tasks()
    assert set(registry.packages.values()) <= {e.dist.name for e in installed_entry_points() if e.dist}


def test_a_plugin_that_fails_to_import_is_named_and_the_others_keep_working(site):
    broken, exits, fine = unique("broken"), unique("exits"), unique("fine")
    install(site, "osum-broken", {broken: "raise RuntimeError('no such model')\n", exits: "import sys\nsys.exit(3)\n"})
    install(site, "osum-fine", {fine: task_plugin(fine)})
    registry = load_tasks()
    problems = {(p.package, p.plugin): p for p in registry.problems}
    assert set(problems) == {("osum-broken", broken), ("osum-broken", exits)}
    assert problems["osum-broken", broken].reason == "import failed: RuntimeError('no such model')"
    assert "SystemExit(3)" in problems["osum-broken", exits].reason
    assert all(p.hook == "" for p in problems.values())
    assert str(problems["osum-broken", broken]).startswith(f"plugin {broken!r} from package 'osum-broken': ")
    assert fine in registry.tasks and {"asr", "ved", "srwt"} <= set(registry.tasks)


def test_a_hook_that_raises_is_named_and_the_rest_keep_working(site):
    tasks_fail, recipes_fail, fine = unique("tasks_fail"), unique("recipes_fail"), unique("fine")
    install(
        site,
        "osum-flaky",
        {
            tasks_fail: """
                from osum_core.plugins import hookimpl

                @hookimpl
                def osum_tasks():
                    raise RuntimeError("label file missing")
            """,
            recipes_fail: task_plugin(recipes_fail)
            + """
@hookimpl
def osum_demo_recipes():
    raise KeyError("voice")
""",
            fine: task_plugin(fine),
        },
    )
    registry = load_tasks()
    problems = {(p.package, p.plugin, p.hook): p.reason for p in registry.problems}
    assert problems == {
        ("osum-flaky", tasks_fail, "osum_tasks"): "osum_tasks() failed: RuntimeError: label file missing",
        ("osum-flaky", recipes_fail, "osum_demo_recipes"): "osum_demo_recipes() failed: KeyError: 'voice'",
    }
    assert recipes_fail in registry.tasks  # its other hook still counts
    assert fine in registry.tasks and {"asr", "ved", "srwt"} <= set(registry.tasks)
    assert f"<TRANSCRIBE> <{recipes_fail.upper()}>" not in registry.recipes


# --- data: what a task gets cannot be changed for osum or another task ------------------------------------


def line() -> dict:
    return {
        "key": "u1", "wav": "a.wav", "txt": "one two<laugh>", "task": "<TRANSCRIBE> <CAPTION>",
        "extra": {"words": [["one", 0.0, 0.4]], "speaker": {"id": 7}}, "_source": "train.jsonl:1",
    }  # fmt: skip


def meddling_task(attempts: list[str], name: str = "meddler") -> Task:
    """A task whose select and build_target try to change the line in every way they can."""

    def meddle(example):
        for attempt, change in {
            "set": lambda: example.__setitem__("task", "<TRANSCRIBE>"),
            "delete": lambda: example.__delitem__("txt"),
            "pop": lambda: example.pop("wav"),
            "update": lambda: example.update(txt="hacked"),
            "nested set": lambda: example["extra"].__setitem__("words", []),
            "nested list": lambda: example["extra"]["words"].append(["x", 0, 1]),
            "nested item": lambda: example["extra"]["words"][0].__setitem__(0, "x"),
            "deeper": lambda: example["extra"]["speaker"].__setitem__("id", 8),
        }.items():
            try:
                change()
            except (TypeError, AttributeError):
                continue
            attempts.append(attempt)

    def select(example):
        meddle(example)
        return False

    def build_target(example):
        meddle(example)
        return Target("")

    return Task(
        name=name, tag="<TRANSCRIBE> <MEDDLE>", prompts={"en": ("x",)}, build_target=build_target,
        parse_output=lambda text: Prediction(text, text), make_metric=TranscriptMetric, metric="wer", select=select,
    )  # fmt: skip


def test_a_task_cannot_change_the_lines_other_tasks_select_from(registry):
    succeeded: list[str] = []
    ved = registry.tasks["ved"]
    examples = [line(), line()]
    pairs, unselected = assign_tasks(examples, [meddling_task(succeeded), ved])
    assert succeeded == []
    assert examples == [line(), line()] and unselected == 0
    assert [task.name for _, task in pairs] == ["ved", "ved"]
    assert ved.target(pairs[0][0]) == Target("one two", "<laugh>")


def test_a_task_cannot_change_the_line_it_builds_a_target_from():
    succeeded: list[str] = []
    example = line()
    meddling_task(succeeded).target(example)
    assert succeeded == [] and example == line()


def test_osum_builds_targets_through_the_read_only_view():
    succeeded: list[str] = []
    example = line()
    task_target(example, meddling_task(succeeded))
    assert succeeded == [] and example == line()


def test_the_read_only_view_reads_like_the_line():
    example = line()
    view = RecordView(example)
    assert dict(view)["txt"] == "one two<laugh>" and view.get("missing") is None and "extra" in view
    assert len(view) == len(example) and list(view) == list(example)
    assert view["extra"]["words"] == (("one", 0.0, 0.4),) and view["extra"]["speaker"]["id"] == 7
    assert copy.deepcopy(view)["key"] == "u1"
    copied = dict(view)
    copied["txt"] = "changed"  # a copy is the task's own
    assert example["txt"] == "one two<laugh>"


# --- metrics: each task's metric object is its own --------------------------------------------------------


def test_every_installed_task_makes_a_new_metric_each_time(registry):
    metrics = {name: (task.make_metric(), task.make_metric()) for name, task in registry.tasks.items()}
    for name, (first, second) in metrics.items():
        assert first is not second, name
    objects = [id(metric) for pair in metrics.values() for metric in pair]
    assert len(set(objects)) == len(objects)


def test_scoring_one_task_leaves_another_task_s_metrics_alone(registry):
    asr, ved = registry.tasks["asr"], registry.tasks["ved"]
    scorer = Scorer({"asr": asr, "ved": ved})
    scorer.add("asr", "a", "one two", asr.build_target({"txt": "one two"}))
    before = scorer.evaluation().metrics["asr"]
    for key in range(5):
        scorer.add("ved", f"v{key}", "nine<cough>", ved.build_target({"txt": "one two<laugh>"}))
    assert scorer.evaluation().metrics["asr"] == before == {"wer": 0.0, "cer": 0.0, "count": 1}
    assert scorer.evaluation().metrics["ved"]["accuracy"] == 0.0


def test_a_metric_object_shared_between_tasks_is_refused():
    shared = TranscriptMetric()
    one, two = (
        Task(
            name=name, tag="<TRANSCRIBE>", prompts={"en": ("x",)}, build_target=lambda ex: Target(str(ex["txt"])),
            parse_output=lambda text: Prediction(text, text), make_metric=lambda: shared, metric="wer",
        )
        for name in ("one", "two")
    )  # fmt: skip
    scorer = Scorer({"one": one, "two": two})
    scorer.add("one", "a", "x", Target("x"))
    with pytest.raises(ValueError, match="task 'two': make_metric\\(\\) returned the metric object of task 'one'"):
        scorer.add("two", "b", "y", Target("y"))
