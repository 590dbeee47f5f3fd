import types

import pytest

from osum_core.plugins import hookimpl, load_tasks
from osum_core.task import Prediction, Target, Task, TranscriptMetric


def plugin_module(name: str, tasks_factory):
    module = types.ModuleType(name)

    @hookimpl
    def osum_tasks():
        return tasks_factory()

    module.osum_tasks = osum_tasks
    return module


def simple_task(name: str) -> Task:
    return Task(
        name=name,
        tag="<TRANSCRIBE> <KWS>",
        prompts={"en": ["Spot the keyword."]},
        build_target=lambda ex: Target(ex["txt"]),
        parse_output=lambda text: Prediction(text, text),
        make_metric=TranscriptMetric,
        metric="wer",
    )


def test_builtin_tasks_come_through_the_entry_point_group():
    registry = load_tasks()
    assert {"asr", "ved"} <= set(registry.tasks)
    assert registry.packages["asr"] == "osum"
    assert registry.tasks["ved"].tag == "<TRANSCRIBE> <CAPTION>"
    assert registry.tasks["ved"].labels == (
        "laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other"
    )
    assert registry.problems == []


def test_a_plugin_adds_a_task_beside_the_builtins():
    registry = load_tasks(extra_plugins=[plugin_module("kws_plugin", lambda: [simple_task("kws")])])
    assert "kws" in registry.tasks and "asr" in registry.tasks
    assert [t.name for t in registry.select(["kws", "asr"])] == ["kws", "asr"]


def test_broken_plugins_are_reported_and_the_rest_keep_working():
    def raises():
        raise RuntimeError("boom")

    broken = [
        plugin_module("dup_plugin", lambda: [simple_task("asr")]),
        plugin_module("raising_plugin", raises),
        plugin_module("wrong_type_plugin", lambda: ["not a task"]),
    ]
    registry = load_tasks(extra_plugins=broken)
    reasons = {p.plugin: p.reason for p in registry.problems}
    assert "duplicate task name 'asr'" in reasons["dup_plugin"]
    assert "boom" in reasons["raising_plugin"]
    assert "must return a list" in reasons["wrong_type_plugin"]
    assert registry.packages["asr"] == "osum"  # the first registration wins
    assert {"asr", "ved"} <= set(registry.tasks)


def test_misspelled_hook_is_an_error_not_a_silent_no_op():
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def osum_taks():
        return []

    module.osum_taks = osum_taks
    registry = load_tasks(extra_plugins=[module])
    assert any(p.plugin == "typo_plugin" and "osum_taks" in p.reason for p in registry.problems)


def test_blocking_a_plugin_by_name():
    assert "ved" not in load_tasks(blocked=["ved"]).tasks


def test_unknown_task_names_list_the_installed_ones():
    registry = load_tasks()
    with pytest.raises(ValueError, match=r"unknown task\(s\) nope; installed tasks: age_gender, asr, asr_age_gender, "):
        registry.select(["asr", "nope"])
    assert [t.name for t in registry.select(["all"])] == list(registry.tasks)


def test_the_example_in_plugins_md_works_as_written(tmp_path):
    """PLUGINS.md's complete minimal plugin, run as a module: its task loads, targets build, demo data plans."""
    import re
    from pathlib import Path

    from osum_core.demo.corpus import plan_corpus
    from osum_core.config import load_config
    from osum_core.plugins import CorpusSpec

    text = (Path(__file__).parents[1] / "PLUGINS.md").read_text()
    source = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def osum_tasks" in block)
    module = types.ModuleType("osum_kws_example")
    exec(compile(source, "PLUGINS.md", "exec"), module.__dict__)
    registry = load_tasks(extra_plugins=[module])
    assert registry.problems == [] and "kws" in registry.tasks
    kws = registry.tasks["kws"]
    assert kws.build_target({"txt": "one seven<yes>"}) == Target("one seven", "<yes>")
    spec = CorpusSpec.from_config({**load_config()["data"]["demo"], "train_per_task": 30, "eval_per_task": 5}, 0, (kws.tag,))
    utterances = plan_corpus(spec, registry.recipes)
    assert {u.labels["keyword"] for u in utterances} == {"yes", "no"}
    assert all((u.labels["keyword"] == "yes") == ("seven" in u.words) for u in utterances)
