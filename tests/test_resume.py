"""`osum fit --resume`: a run continues from its last checkpoint."""


import torch
from conftest import TINY, data_args

from osum_core.cli.main import main


def test_resume_continues_a_run_from_its_last_checkpoint(run_dir, tiny_corpus, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(run_dir, run)
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    args = ["fit", "--tasks", "asr,ved", "--resume", str(run), "--out", str(run), *data_args(tiny_corpus), *TINY,
            "trainer.max_steps=12", "trainer.val_check_interval=4"]
    assert main(args) == 0
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (before, after["global_step"]) == (8, 12)
    assert "optimizer_states" in after


def test_resume_names_a_missing_checkpoint(tmp_path, tiny_corpus, capsys):
    assert main(["fit", "--tasks", "asr", "--resume", str(tmp_path), *data_args(tiny_corpus), *TINY]) == 2
    assert "last.ckpt" in capsys.readouterr().err
