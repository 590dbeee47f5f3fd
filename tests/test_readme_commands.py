"""Every `osum` command README shows is one osum takes: it parses, every `osum fit` among them resolves its
config (`--print-config`: presets, stages, strategies and keys exist), including the multi-node ones that need
GPUs or a cluster (torchrun, srun, DeepSpeed). The other commands run for real in the tests named in
`RUN_BY`."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from osum_core.cli.main import build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"

# Where each command (other than `osum fit`) runs for real.
RUN_BY = {
    "tasks": "tests/test_cli.py",
    "data": "tests/test_shards.py, tests/test_bad_inputs.py, tests/test_demo_corpus.py, tests/test_batch_sizes.py",
    "export": "tests/test_checkpoint_dir.py",
    "import-osum": "tests/test_checkpoint_import.py",
    "predict": "tests/test_inference_cli.py",
    "test": "tests/test_inference_cli.py",
    "serve": "tests/test_serve.py",
}


def readme_commands() -> list[str]:
    """The osum command lines of README's code blocks (fenced and indented), continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    fenced = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    blocks = [body for language, body in fenced if language in ("bash", "sh", "")]
    blocks += re.findall(r"((?:\n {4}.*)+)", text)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            line = re.sub(r"\s+#\s.*$", "", line)  # a comment after the command
            line = re.sub(r"\s*>\s*\S+$", "", line)  # a redirection of its output
            found = re.search(r"(?:^|\s)(?:osum|-m osum_core\.cli\.main) ((?:fit|test|predict|export|import-osum|tasks|data|serve)\b.*)", line)
            if found and not line.startswith("#"):
                commands.append(found.group(1))
    return commands


COMMANDS = readme_commands()


def test_readme_shows_the_commands_this_test_checks():
    kinds = {shlex.split(c)[0] for c in COMMANDS}
    assert {"fit", "test", "predict", "export", "import-osum", "tasks", "data", "serve"} <= kinds
    assert any("torchrun" in line for line in README.read_text().splitlines())  # the cluster forms are there
    assert sum("--strategy deepspeed_zero2" in c for c in COMMANDS) >= 2


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_parses_and_an_osum_fit_resolves_its_config(command, run_dir, tmp_path, monkeypatch, capsys):
    argv = shlex.split(command)
    args, extra = build_parser().parse_known_args(argv)
    assert all("=" in item and not item.startswith("-") for item in extra), extra
    if argv[0] != "fit":
        assert argv[0] in RUN_BY
        return
    monkeypatch.chdir(tmp_path)
    for index, item in enumerate(argv[:-1]):
        if item == "--config":  # the repository's own, or a user's file (an empty one stands in)
            shipped = README.parent / argv[index + 1]
            if shipped.is_file():
                argv[index + 1] = str(shipped)
            else:
                (tmp_path / argv[index + 1]).write_text("{}\n")
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), args.resume)
    if resume:  # the run it continues
        shutil.copytree(run_dir, tmp_path / resume)
    assert main([*argv, "--print-config"]) == 0, capsys.readouterr().err
