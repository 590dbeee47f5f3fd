"""What `osum` imports to answer: help and the task list without torch, Lightning or transformers.

That is what makes them answer at once (bench/startup.py measures how fast; a test does not time)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "transformers", "torchmetrics")

# Runs `osum ARGS` in a fresh interpreter, as the console script does, then prints the heavy modules loaded.
RUN = (
    "import sys\n"
    "from osum_core.cli.main import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit:\n"  # --help exits
    "    pass\n"
    f"print('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
)


@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"], ["data", "check", "--help"], ["test", "--help"],
                                  ["tasks"], ["tasks", "--json"]], ids=" ".join)
def test_help_and_the_task_list_import_no_torch(args):
    result = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True)
    loaded = [line for line in result.stdout.splitlines() if line.startswith("LOADED=")]
    assert loaded == ["LOADED="], result.stderr[-2000:]


def test_the_metric_classes_are_still_exported_by_the_task_contract():
    import osum_core.task
    from osum_core.task import FieldsMetric, LabelMetric, TranscriptMetric
    from osum_core.task.metrics import LabelMetric as Defined

    assert LabelMetric is Defined and {FieldsMetric.__name__, TranscriptMetric.__name__} <= set(osum_core.task.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Metric'"):
        osum_core.task.Metric  # noqa: B018


def test_a_full_disk_is_still_a_one_line_error(monkeypatch, tmp_path, capsys):
    # main() recognises DiskFullError without importing its module (which imports torch) when nothing saved.
    import errno

    import osum_core.cli.main as cli
    from osum_core.checkpoints.atomic import DiskFullError

    def full(args):
        raise DiskFullError(tmp_path / "last.ckpt", True, errno.ENOSPC)

    monkeypatch.setattr(cli, "cmd_tasks", full)
    assert cli.main(["tasks"]) == 2
    assert capsys.readouterr().err.startswith(f"osum: error: [Errno {errno.ENOSPC}] No space left on device while "
                                              f"saving {tmp_path / 'last.ckpt'}")
