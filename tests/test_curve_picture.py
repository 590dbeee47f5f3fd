"""learning_curve.png: drawn beside learning_curve.jsonl after every validation, from every row the file keeps
(also across resumes), never half written, and absent while there is no row; and the pictures'
drawing functions on their own (`osum_core.inference.curve_picture`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_run_logs import Killed, KilledError, curve, fit

from osum_core.inference.curve_picture import (
    draw_learning_curve,
    draw_study_curves,
    headline_metric,
    mean_series,
    task_headlines,
)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # the whole file decodes: a PNG, not a partial one
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def redrawn(run: Path, tmp_path: Path, headline: dict[str, str] | None = None) -> bytes:
    """The picture of the run's learning_curve.jsonl as it is now, drawn as the run draws it."""
    expected = tmp_path / "expected.png"
    assert draw_learning_curve(expected, curve(run), headline, title=f"learning curve: {run.parent.name}/{run.name}")
    return expected.read_bytes()


def row(step: int, **metrics: dict) -> dict:
    return {"step": step, "minutes": step / 10, "train_loss": 2.0 / step, "val_loss": 3.0 / step, "metrics": metrics}


def test_osum_fit_draws_the_curve_of_its_validations(run_dir, tmp_path):
    picture = run_dir / "learning_curve.png"
    width, height = png_size(picture)
    assert 600 <= width <= 2000 and 300 <= height <= 2000
    # The tasks' own headline metrics (ASR's wer, VED's accuracy), from every row of the file.
    assert picture.read_bytes() == redrawn(run_dir, tmp_path, {"asr": "wer", "ved": "accuracy"})
    assert not list(run_dir.glob("*partial*")) and not list(run_dir.glob(".*partial*"))


def test_a_resumed_run_draws_the_rows_it_kept_and_the_new_ones(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KilledError):
        fit(run, 10, Killed(step=9), checkpoint_every=3)  # checkpoint at step 6; validated at 2, 4, 6, 8
    before = (run / "learning_curve.png").read_bytes()
    assert before == redrawn(run, tmp_path)
    fit(run, 10, resume=True)  # the row of step 8 is dropped and made again, then step 10's
    assert [r["step"] for r in curve(run)] == [2, 4, 6, 8, 10]
    after = (run / "learning_curve.png").read_bytes()
    assert after != before and after == redrawn(run, tmp_path)
    png_size(run / "learning_curve.png")


def test_a_run_without_a_validation_has_no_picture_and_a_fresh_run_removes_an_old_one(tmp_path):
    run = tmp_path / "run"
    fit(run, 2)
    assert (run / "learning_curve.png").is_file()
    fit(run, 1)  # a fresh run in the same folder that stops before its first validation (every 2 steps)
    assert curve(run) == [] and not (run / "learning_curve.png").exists()


def test_no_rows_draw_nothing(tmp_path):
    assert not draw_learning_curve(tmp_path / "a.png", [])
    assert not draw_study_curves(tmp_path / "b.png", {"x": [[], []], "y": []})
    assert list(tmp_path.iterdir()) == []


def test_a_task_s_headline_is_its_plugin_s_metric_else_its_first_number():
    scores = {"accuracy": 0.5, "macro_f1": 0.4, "invalid": 0, "wer": 0.2}
    assert headline_metric("ved", scores, {"ved": "wer"}) == "wer"
    assert headline_metric("ved", scores, {}) == "accuracy"
    assert headline_metric("ved", {}, {"ved": "accuracy"}) is None  # a validation without the task's examples
    rows = [row(2, asr={"wer": 1.0}), row(4, asr={"wer": 0.5}, srwt={"timestamp_error_ms": 90.0, "wer": 0.4})]
    assert task_headlines(rows, {"asr": "wer"}) == {"asr": "wer", "srwt": "timestamp_error_ms"}


def test_the_mean_over_seeds_is_taken_at_the_steps_every_seed_has():
    assert mean_series([([2, 4, 6], [1.0, 2.0, 3.0]), ([2, 4], [3.0, 4.0])]) == ([2, 4], [2.0, 3.0])
    assert mean_series([]) == ([], [])


def test_a_study_picture_has_a_panel_per_task_and_one_for_the_loss(tmp_path):
    def runs(shift: float) -> list[list[dict]]:
        return [[row(step, asr={"wer": shift / step}, ved={"accuracy": 1 - shift / step},
                     ser={"accuracy": 1 - shift / step}) for step in (2, 4, 6)] for _ in range(2)]

    assert draw_study_curves(tmp_path / "study.png", {"asr_x": runs(1.0), "x_only": runs(1.5), "failed": [[]]},
                             {"asr": "wer", "ved": "accuracy"}, title="study")
    width, height = png_size(tmp_path / "study.png")
    assert width > height  # loss, asr, ved, ser: two columns of two
    assert draw_learning_curve(tmp_path / "one.png", runs(1.0)[0])
    one_width, one_height = png_size(tmp_path / "one.png")
    assert one_height > one_width  # loss, wer, accuracy (ved and ser): one column of three


def test_an_error_rate_panel_is_cut_above_1_5_so_a_first_wer_of_4_8_leaves_the_rest_readable():
    from matplotlib.figure import Figure

    from osum_core.inference.curve_picture import _style_panel

    cut, kept = Figure().subplots(), Figure().subplots()
    cut.plot([250, 500, 750], [4.8, 0.3, 0.12])
    kept.plot([250, 500], [1.2, 0.3])
    _style_panel(cut, "wer", "wer")
    _style_panel(kept, "wer", "wer")
    assert cut.get_ylim()[1] == pytest.approx(1.5 * 1.03) and "cut at 1.5" in cut.get_title()
    assert kept.get_ylim()[1] == pytest.approx(1.2 * 1.03) and "cut" not in kept.get_title()
