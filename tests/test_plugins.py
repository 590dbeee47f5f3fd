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


def unmarked_plugin(name: str, **functions):
    """A plugin module whose hook functions lack @hookimpl."""
    module = types.ModuleType(name)
    for hook, function in functions.items():
        setattr(module, hook, function)
    return module


def test_a_hook_function_without_hookimpl_is_reported():
    tasks_only = unmarked_plugin("no_marker_plugin", osum_tasks=lambda: [simple_task("kws")])
    recipes_only = unmarked_plugin("no_marker_recipes", osum_demo_recipes=lambda: {})
    registry = load_tasks(extra_plugins=[tasks_only, recipes_only])
    reasons = {p.plugin: p.reason for p in registry.problems}
    assert reasons == {
        "no_marker_plugin": "defines osum_tasks() without @hookimpl (from osum_core.plugins import hookimpl)",
        "no_marker_recipes": "defines osum_demo_recipes() without @hookimpl (from osum_core.plugins import hookimpl)",
    }
    assert "kws" not in registry.tasks  # pluggy did ignore it: the report is all the user gets


def test_marked_hooks_beside_an_unmarked_one_still_load():
    module = plugin_module("half_marked_plugin", lambda: [simple_task("kws")])
    module.osum_demo_recipes = lambda: {}
    registry = load_tasks(extra_plugins=[module])
    assert "kws" in registry.tasks
    assert [str(p) for p in registry.problems] == [
        "plugin 'half_marked_plugin' from package 'half_marked_plugin': defines osum_demo_recipes() without "
        "@hookimpl (from osum_core.plugins import hookimpl)"
    ]


def test_a_missing_prompt_language_warns_once_naming_task_and_languages():
    import dataclasses
    import warnings

    task = dataclasses.replace(simple_task("prompt_fallback_probe"), prompts={"en": ("Spot the keyword.",)})
    with pytest.warns(UserWarning, match=r"task 'prompt_fallback_probe' has no 'zh' prompts .*using its 'en' prompts"):
        assert task.prompt_bank("zh") == ("Spot the keyword.",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert task.prompt_bank("zh") == ("Spot the keyword.",)  # once per task and language
        assert task.prompt_bank("en") == ("Spot the keyword.",)  # the language it has: no warning
        assert task.prompt_bank("both") == ("Spot the keyword.",)  # zh or en: it has en
    only_de = dataclasses.replace(task, name="prompt_fallback_probe_de", prompts={"de": ("Finde das Wort.",)})
    with pytest.warns(UserWarning, match=r"'prompt_fallback_probe_de' has no zh or en prompts .*using its 'de'"):
        assert only_de.prompt_bank("both") == ("Finde das Wort.",)
