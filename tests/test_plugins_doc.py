"""PLUGINS.md's code blocks, run as written.

What runs, by the block's fence:
- ```toml: the example package's ``pyproject.toml``;
- ```python whose first line is a ``# path.py`` comment (``# osum_kws/kws.py: ...``): a file of that package;
- the package is built and installed by pip (no network, no build isolation) into a folder put on PYTHONPATH of
  one fresh interpreter, where `load_tasks()` must list its tasks and report no problem; the demo recipes of
  its tasks are drawn, pickled and synthesised for a few utterances;
- every other ```python block is a snippet, executed in its own namespace in that interpreter (the package
  installed); a `DemoRecipe` it defines is drawn and synthesised the same way.
```bash / ```sh (commands) and ```text (layouts) blocks are not run. A block with any other fence fails the
test, so that no block goes unchecked by accident.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from osum_core.plugins import load_tasks
from osum_core.task import Target

DOC = Path(__file__).parents[1] / "PLUGINS.md"
RUN = {"python", "toml"}
NOT_RUN = {"bash", "sh", "text"}
FILE_COMMENT = re.compile(r"# ([\w./-]+\.py)\b")


@dataclass(frozen=True)
class Block:
    fence: str
    line: int  # line of PLUGINS.md where the code starts
    source: str

    @property
    def file(self) -> str | None:
        """The package file a python block is, from its first line (``# osum_kws/kws.py: ...``)."""
        match = FILE_COMMENT.match(self.source)
        return match.group(1) if self.fence == "python" and match else None


def code_blocks(text: str) -> list[Block]:
    return [
        Block(m.group(1), text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in re.finditer(r"^```(\S*)\n(.*?)^```", text, re.M | re.S)
    ]


# Runs in the interpreter that sees the installed package: argv[1] holds the snippets, argv[2] the site folder.
RUNNER = r'''
import importlib.metadata, json, pickle, sys, tempfile, traceback
from pathlib import Path

from osum_core.config import load_config
from osum_core.demo.corpus import plan_corpus, render
from osum_core.plugins import CorpusSpec, DemoRecipe, load_tasks


def exercise(tag, recipe):
    """Draw a small corpus with `recipe`, synthesise one utterance per split: what `osum data synth` does."""
    demo = {**load_config()["data"]["demo"], "train_per_task": 20, "eval_per_task": 3}
    utterances = plan_corpus(CorpusSpec.from_config(demo, 0, (tag,)), {tag: recipe})
    with tempfile.TemporaryDirectory() as out:
        for split in ("train", "dev", "test"):
            render(next(u for u in utterances if u.split == split), recipe, Path(out))


result = {"failures": []}
registry = load_tasks()
(dist,) = importlib.metadata.distributions(path=[sys.argv[2]])
ours = [task for name, task in registry.tasks.items() if registry.packages[name] == dist.name]
result.update(package=dist.name, tasks=sorted(t.name for t in ours), problems=[str(p) for p in registry.problems])
for task in ours:
    if task.tag in registry.recipes:
        try:
            pickle.dumps(registry.recipes[task.tag])  # synthesis workers receive recipes by pickling
            exercise(task.tag, registry.recipes[task.tag])
        except Exception:
            result["failures"].append(f"the demo recipe of task {task.name!r}:\n{traceback.format_exc()}")
for line, source in json.loads(Path(sys.argv[1]).read_text()):
    try:
        namespace = {"__name__": f"plugins_md_line_{line}"}
        exec(compile("\n" * (line - 1) + source, "PLUGINS.md", "exec"), namespace)
        for name, value in namespace.items():
            if isinstance(value, DemoRecipe):
                exercise("<TRANSCRIBE> <DOC>", value)
    except Exception:
        result["failures"].append(f"the block at PLUGINS.md:{line}:\n{traceback.format_exc()}")
print("RESULT " + json.dumps(result))
'''


def check_doc(text: str, tmp_path: Path) -> dict:
    """Run `text`'s blocks (see the module docstring); AssertionError says which one is wrong."""
    assert importlib.util.find_spec("setuptools"), "building without isolation needs setuptools: pip install setuptools"
    blocks = code_blocks(text)
    unknown = [f"```{b.fence} at line {b.line - 1}" for b in blocks if b.fence not in RUN | NOT_RUN]
    assert not unknown, f"blocks this test does not know how to check: {unknown}"
    pyprojects = [b for b in blocks if b.fence == "toml"]
    assert len(pyprojects) == 1, f"expected one ```toml block (the pyproject.toml), found {len(pyprojects)}"

    package = tmp_path / "package"
    package.mkdir()
    (package / "pyproject.toml").write_text(pyprojects[0].source)
    for block in blocks:
        if block.file:
            (package / block.file).parent.mkdir(parents=True, exist_ok=True)
            (package / block.file).write_text(block.source)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    installed = subprocess.run(
        [*pip, "--disable-pip-version-check", "--target", str(site), str(package)], capture_output=True, text=True
    )
    assert installed.returncode == 0, f"pip install of the documented package failed:\n{installed.stderr[-3000:]}"

    snippets = [(b.line, b.source) for b in blocks if b.fence == "python" and not b.file]
    (tmp_path / "snippets.json").write_text(json.dumps(snippets))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    ran = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "snippets.json"), str(site)],
        capture_output=True, text=True, env=env, cwd=tmp_path,  # cwd: only the installed copy is importable
    )  # fmt: skip
    lines = [line for line in ran.stdout.splitlines() if line.startswith("RESULT ")]
    assert ran.returncode == 0 and lines, f"the blocks' interpreter failed:\n{ran.stderr[-3000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert not result["failures"], "\n".join(result["failures"])
    assert result["tasks"], f"the documented package {result['package']!r} contributes no task: {result['problems']}"
    ours = [p for p in result["problems"] if f"from package {result['package']!r}" in p]
    assert not ours, ours
    return result


def test_every_block_of_plugins_md_works_as_written(tmp_path):
    result = check_doc(DOC.read_text(encoding="utf-8"), tmp_path)
    assert result["package"] == "osum-kws" and result["tasks"] == ["kws"]


def test_the_check_fails_for_a_pyproject_without_version(tmp_path):
    """What PLUGINS.md once said: pip refuses a [project] without version, and so must this check."""
    text = re.sub(r"^version = .*\n", "", DOC.read_text(encoding="utf-8"), count=1, flags=re.M)
    with pytest.raises(AssertionError, match="must contain \\['version'\\]"):
        check_doc(text, tmp_path)


def test_blocks_of_unknown_kinds_are_refused(tmp_path):
    with pytest.raises(AssertionError, match="```yaml at line 2"):
        check_doc("x\n```yaml\na: 1\n```\n", tmp_path)


def test_the_minimal_plugin_labels_its_demo_data(tmp_path):
    """PLUGINS.md's complete minimal plugin, run as a module: its task loads, targets build, demo data plans."""
    from osum_core.config import load_config
    from osum_core.demo.corpus import plan_corpus
    from osum_core.plugins import CorpusSpec

    (block,) = [b for b in code_blocks(DOC.read_text(encoding="utf-8")) if b.file == "osum_kws/kws.py"]
    module = types.ModuleType("osum_kws_example")
    exec(compile(block.source, "PLUGINS.md", "exec"), module.__dict__)
    registry = load_tasks(extra_plugins=[module])
    assert registry.problems == [] and "kws" in registry.tasks
    kws = registry.tasks["kws"]
    assert kws.build_target({"txt": "one seven<yes>"}) == Target("one seven", "<yes>")
    demo = {**load_config()["data"]["demo"], "train_per_task": 30, "eval_per_task": 5}
    utterances = plan_corpus(CorpusSpec.from_config(demo, 0, (kws.tag,)), registry.recipes)
    assert {u.labels["keyword"] for u in utterances} == {"yes", "no"}
    assert all((u.labels["keyword"] == "yes") == ("seven" in u.words) for u in utterances)


def test_the_documented_corpus_recipe_prepares_a_folder(tmp_path):
    """PLUGINS.md's corpus recipe, beside its task: a folder of clips becomes a manifest and a report."""
    import numpy as np
    import soundfile

    from osum_core.data.corpus_preparation import prepare_corpus

    modules = {}
    for name in ("osum_kws/kws.py", "osum_kws/corpora.py"):
        (block,) = [b for b in code_blocks(DOC.read_text(encoding="utf-8")) if b.file == name]
        modules[name] = types.ModuleType(name.replace("/", "_").removesuffix(".py"))
        exec(compile(block.source, "PLUGINS.md", "exec"), modules[name].__dict__)
    registry = load_tasks(extra_plugins=list(modules.values()))
    assert registry.problems == [] and "kws-clips" in registry.corpora
    noise = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
    for stem in ("a_yes", "b_no", "c_maybe"):
        (tmp_path / "src" / "clips").mkdir(parents=True, exist_ok=True)
        soundfile.write(tmp_path / "src" / "clips" / f"{stem}.wav", noise, 16000)
    report = prepare_corpus(registry.corpora["kws-clips"], tmp_path / "src", tmp_path / "out", registry.tasks,
                            workers=0, log=lambda message: None)
    part = report["subsets"]["all"]
    assert part["labels"] == {"kws": {"<no>": 1, "<yes>": 1}}
    assert part["left_out"]["unmapped_labels"] == {"maybe": 1}
    assert [json.loads(x)["key"] for x in (tmp_path / "out" / "all.jsonl").read_text().splitlines()] == ["a_yes_kws", "b_no_kws"]
