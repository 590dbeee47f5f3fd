"""X without ASR (``tasks.<name>.transcript=false``) and the per-task CTC weight (``tasks.<name>.ctc_loss_weight``):
the two settings OSUM's ASR+X claim is measured with (README, "Is ASR+X better than X alone?")."""

import dataclasses
import json

import pytest
import torch
from conftest import TINY, data_args
from test_data_pipeline import WordTokenizer
from test_packing import batch_of, tiny_model

from osum_core.cli.main import main
from osum_core.config import ConfigError, configured_tasks, fit_config
from osum_core.data.dataset import PlanItem, SpeechDataset, TaskPrompts, prepare_examples
from osum_core.data.manifest import read_manifest
from osum_core.demo.recipe import recipe_tag
from osum_core.inference.scoring import example_scores
from osum_core.task import LabelField, tagged_task

TRANSCRIPT_PLUS_LABEL = {"ved": "laugh", "ser": "happy", "ssr": "客服", "sgc": "female", "sap": "old"}


def label_only(registry, name, **more):
    return configured_tasks(registry.tasks, [name], {name: {"transcript": False, **more}})[name]


@pytest.mark.parametrize("name", sorted(TRANSCRIPT_PLUS_LABEL))
def test_each_transcript_plus_label_task_has_a_label_only_form(registry, name):
    label = TRANSCRIPT_PLUS_LABEL[name]
    asr_x, x_only = registry.tasks[name], label_only(registry, name)
    assert asr_x.tag.startswith("<TRANSCRIBE> ") and x_only.tag == asr_x.tag.removeprefix("<TRANSCRIBE> ")
    for language in ("en", "zh"):  # its own prompts, none of which is an ASR+X prompt
        assert x_only.prompt_bank(language) and not set(x_only.prompt_bank(language)) & set(asr_x.prompt_bank(language))
    # It reads the ASR+X task's lines (one corpus for both forms) and lines with its own tag, nothing else.
    assert x_only.selects({"task": asr_x.tag}) and x_only.selects({"task": x_only.tag})
    assert not x_only.selects({"task": "<TRANSCRIBE>"}) and not asr_x.selects({"task": x_only.tag})
    target = x_only.target({"task": asr_x.tag, "txt": f"one two<{label}>"})
    assert target.text == f"<{label}>" and target.transcript == "one two" and not target.transcribed
    assert asr_x.target({"task": asr_x.tag, "txt": f"one two<{label}>"}).text == f"one two<{label}>"
    answer = x_only.parse_output(f"<{label}>")
    assert answer.valid and answer.label == label and answer.transcript == ""
    assert not x_only.parse_output(f"one two<{label}>").valid  # words where only the label belongs
    assert x_only.with_options(transcript=True).tag == asr_x.tag  # and back


def test_a_label_only_answer_is_scored_by_its_label_and_never_by_wer(registry):
    ved = label_only(registry, "ved")
    targets = [ved.target({"txt": "one two<laugh>"}), ved.target({"txt": "three<cough>"})]
    answers = [ved.parse_output("<laugh>"), ved.parse_output("<sigh>")]
    metric = ved.make_metric()
    metric.update(answers, targets)
    scores = metric.compute()
    assert scores["accuracy"] == 0.5 and scores["count"] == 2 and "wer" not in scores
    assert example_scores(ved, answers[0], targets[0]) == {"correct": True}
    asr_x = registry.tasks["ved"]
    assert "wer" in example_scores(asr_x, asr_x.parse_output("one<laugh>"), asr_x.target({"txt": "one two<laugh>"}))


def test_the_label_only_option_keeps_the_configured_weights_and_refuses_a_non_boolean(registry):
    ved = label_only(registry, "ved", label_loss_weight=2.0, ctc_loss_weight=0.0)
    assert (ved.label_loss_weight, ved.ctc_loss_weight, ved.options["transcript"]) == (2.0, 0.0, False)
    with pytest.raises(ConfigError, match=r"tasks\.ved'.*transcript must be true or false, got 'no'"):
        configured_tasks(registry.tasks, ["ved"], {"ved": {"transcript": "no"}})
    with pytest.raises(ConfigError, match=r"tasks\.asr\.transcript"):  # ASR is all transcript
        configured_tasks(registry.tasks, ["asr"], {"asr": {"transcript": False}})
    # Weights set before the option stay (a plugin's or a config's), whatever the option rebuilds.
    assert registry.tasks["ved"].with_weights(sampling_weight=5.0).with_options(transcript=False).sampling_weight == 5.0
    # OSUM's inference script writes tags without spaces: the option is offered all the same.
    kws = tagged_task("kws", "<TRANSCRIBE><KEYWORD>", {"en": ("Spot it.",)}, [LabelField("keyword", ("yes", "no"))],
                      label_prompts={"en": ("Say yes or no.",)})
    assert kws.options == {"transcript": True} and kws.with_options(transcript=False).tag == "<KEYWORD>"


@pytest.mark.parametrize("ctc_target", ["transcript", "target"])
def test_label_only_examples_teach_the_llm_the_label_and_the_ctc_head_the_words(registry, tiny_corpus, ctc_target):
    tasks = {"asr": registry.tasks["asr"], "ved": label_only(registry, "ved", ctc_loss_weight=0.5)}
    examples, _ = prepare_examples(read_manifest(tiny_corpus / "train.jsonl"), list(tasks.values()), WordTokenizer())
    ved = next(e for e in examples if e.task == "ved")
    assert ved.body_ids == () and ved.transcript_ids and ved.suffix_ids
    prompts = TaskPrompts.of_tasks(tasks, WordTokenizer(), "en")
    dataset = SpeechDataset(tasks, prompts, 1, ctc_target=ctc_target, n_mels=80, train=True, seed=1, spec_augment=None)
    item = dataset[PlanItem(ved, 0, "0")]
    assert item["target_ids"].tolist() == [*ved.suffix_ids, 1]  # the label and end-of-text, no words
    spoken = [*ved.transcript_ids, *(ved.suffix_ids if ctc_target == "target" else ())]
    assert item["ctc_ids"].tolist() == spoken and item["ctc_weight"] == 0.5
    assert dataset[PlanItem(next(e for e in examples if e.task == "asr"), 0, "1")]["ctc_weight"] == 1.0
    # A label-only line that does not say what was spoken (OSUM-EChat's "<CAPTION>" lines) teaches the CTC
    # head nothing, rather than that its speech is all blank.
    records = [{**r, "task": "<CAPTION>", "txt": "<laugh>"} for r in read_manifest(tiny_corpus / "train.jsonl")
               if r["task"] == "<TRANSCRIBE> <CAPTION>"][:1]
    (unspoken,), _ = prepare_examples(records, list(tasks.values()), WordTokenizer())
    assert unspoken.task == "ved" and unspoken.transcript_ids == ()
    assert dataset[PlanItem(unspoken, 0, "2")]["ctc_weight"] == 0.0


def test_ctc_loss_weight_scales_each_examples_ctc_loss_and_zero_sends_it_no_gradient():
    model = tiny_model()
    batch = batch_of([300, 200], [4, 5], [6, 3])
    plain = model(**batch)["ctc_loss"].detach()
    weighted = model(**batch, ctc_weights=torch.tensor([0.0, 0.5]))["ctc_loss"]
    torch.testing.assert_close(weighted.detach(), plain * torch.tensor([0.0, 0.5]))
    # An example whose task has ctc_loss_weight 0 gives the CTC head no gradient.
    single = {k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}
    single["features"] = single["features"][:, :300]
    model.zero_grad(set_to_none=True)
    model(**single, ctc_weights=torch.tensor([0.0]))["ctc_loss"].sum().backward()
    assert model.ctc_head.weight.grad is None or not model.ctc_head.weight.grad.any()
    model(**single, ctc_weights=torch.tensor([1.0]))["ctc_loss"].sum().backward()
    assert model.ctc_head.weight.grad.abs().sum() > 0


def test_the_label_only_form_reads_its_asr_x_tasks_demo_corpus(registry):
    ved = label_only(registry, "ved")
    assert recipe_tag(ved, registry.recipes) == "<TRANSCRIBE> <CAPTION>" == recipe_tag(registry.tasks["ved"], registry.recipes)
    assert recipe_tag(registry.tasks["age_gender"], registry.recipes) == "<AGE> <GENDER>"


def test_fit_with_a_label_only_task_trains_and_scores_it_without_wer(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    args = ["fit", "--tasks", "asr,ved", "--out", str(run), *data_args(tiny_corpus), *TINY,
            "tasks.ved.transcript=false", "tasks.ved.ctc_loss_weight=0"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "wer" in metrics["asr"] and "accuracy" in metrics["ved"] and "wer" not in metrics["ved"]
    assert metrics["ved"]["count"] == 6
    saved = (run / "config.yaml").read_text()
    assert "transcript: false" in saved and "ctc_loss_weight: 0" in saved


def test_both_forms_split_the_transcripts_alike_with_the_demo_tokenizer(registry, all_tasks_corpus):
    """The label-only form's transcripts are still CTC targets: its demo tokenizer must learn them as the ASR+X
    form's does (SER's cue words, "great", "sorry", are in no other task's transcripts)."""
    from osum_core.train.tokenizer import demo_tokenizer_for

    cfg = fit_config(overrides=data_args(all_tasks_corpus))
    asr = registry.tasks["asr"]
    lines = [json.loads(line) for line in (all_tasks_corpus / "train.jsonl").read_text().splitlines()]
    spoken = [registry.tasks["ser"].target(line).transcript for line in lines if registry.tasks["ser"].selects(line)]
    assert spoken and any(not word.isdigit() and word not in asr_words(lines, asr) for t in spoken for word in t.split())
    with_words = demo_tokenizer_for(cfg, {"asr": asr, "ser": registry.tasks["ser"]})
    label_alone = demo_tokenizer_for(cfg, {"asr": asr, "ser": label_only(registry, "ser")})
    # The prompts differ between the forms by design and move a few of the BPE's merges (a rare word may split
    # once more or less); without the transcripts, the label-only form would spell SER's words byte by byte.
    alone = sum(len(label_alone.tokenize(text)) for text in spoken)
    assert abs(alone - sum(len(with_words.tokenize(text)) for text in spoken)) <= 0.1 * alone


def asr_words(lines, asr):
    return {word for line in lines if asr.selects(line) for word in asr.target(line).transcript.split()}


def test_two_selected_tasks_reading_one_tag_are_refused(registry):
    from osum_core.config import shared_tags

    label_only_ved = configured_tasks(registry.tasks, ["ved"], {"ved": {"transcript": False}})["ved"]
    other = dataclasses.replace(label_only_ved, name="ved_events")  # reads <CAPTION> and <TRANSCRIBE> <CAPTION>
    (message,) = shared_tags([registry.tasks["ved"], other])
    assert message.startswith("tasks ved and ved_events both read lines tagged <TRANSCRIBE> <CAPTION>")
    assert shared_tags(list(registry.tasks.values())) == []  # the installed tasks keep to their own tags
