"""How a manifest line's ``task`` is matched to a task's tag, alike for every installed task: whitespace
around and between the ``<...>`` parts is optional (OSUM's data writes ``<TRANSCRIBE> <EMOTION>``, its
inference script ``<TRANSCRIBE><EMOTION>``), case counts (OSUM's tags are keys of its prompt file), and a
value that no task takes is an error that points to the tag most likely meant."""

import pytest

from osum_core.data.check import NoTokens
from osum_core.data.dataset import ExampleError, ExamplePreparer
from osum_core.plugins import load_tasks
from osum_core.task.contract import normalize_task_tag

INSTALLED = load_tasks()
TASKS = list(INSTALLED.tasks.values())


def spellings(tag: str) -> list[str]:
    """The ways a manifest may write `tag`: as is, without spaces between its parts, with more whitespace."""
    return [tag, tag.replace("> <", "><"), " \t" + tag.replace("> <", ">  \t<") + " "]


def line(task: str) -> dict:
    return {"key": "u1", "wav": "a.wav", "txt": "one two", "task": task, "_source": "m.jsonl:3"}


def unknown_tag_error(task: str) -> str:
    preparer = ExamplePreparer(TASKS, NoTokens(), tuple(TASKS))
    with pytest.raises(ExampleError) as error:
        preparer.select(line(task))
    return str(error.value)


@pytest.mark.parametrize("name", sorted(INSTALLED.tasks))
def test_every_task_takes_its_tag_with_or_without_whitespace_between_the_parts(name):
    task = INSTALLED.tasks[name]
    for spelled in spellings(task.tag):
        assert normalize_task_tag(spelled) == task.tag
        assert [t.name for t in TASKS if t.selects(line(spelled))] == [name], repr(spelled)
        assert ExamplePreparer([task], NoTokens(), tuple(TASKS)).select(line(spelled)) is task


@pytest.mark.parametrize("name", sorted(INSTALLED.tasks))
def test_a_tag_in_another_case_is_no_task_and_the_error_names_the_tag(name):
    task = INSTALLED.tasks[name]
    for spelled in (task.tag.lower(), task.tag.replace("> <", "><").lower()):
        assert not any(t.selects(line(spelled)) for t in TASKS)
        assert unknown_tag_error(spelled) == (
            f"m.jsonl:3: key u1: unknown task tag {spelled!r}; did you mean {task.tag!r} (task {name})? "
            "tags are case-sensitive"
        )


def test_a_task_name_given_as_the_tag_points_to_its_tag():
    assert unknown_tag_error("sgc") == ("m.jsonl:3: key u1: unknown task tag 'sgc'; did you mean "
                                        "'<TRANSCRIBE> <GENDER>' (task sgc)? the task field holds a task's tag, "
                                        "not its name")


def test_a_misspelt_tag_points_to_the_closest_and_a_far_one_lists_them_all():
    assert unknown_tag_error("<TRANSCRIBE> <EMOTIONS>").endswith(
        "unknown task tag '<TRANSCRIBE> <EMOTIONS>'; did you mean '<TRANSCRIBE> <EMOTION>' (task ser)?")
    far = unknown_tag_error("<KEYWORD>")
    assert far.startswith("m.jsonl:3: key u1: unknown task tag '<KEYWORD>'; installed tasks' tags: ")
    assert all(t.tag in far for t in TASKS) and "did you mean" not in far
