"""SSR: transcription plus a speaking-style tag, OSUM tag ``<TRANSCRIBE> <STYLE>``, target ``transcript<客服>``.

OSUM's eight Chinese style classes; its data's fifteen raw labels are mapped onto them (OSUM.md §2.3), in
references and in predictions. Demo data: each style opens with its cue word ("report" for 新闻科普) in a
share ``content_cues`` of utterances (recipe option, ``data.demo.options.content_cues``), and has its own
prosody; the manifests carry the raw fifteen-class labels, so the mapping is exercised."""

from __future__ import annotations

import dataclasses
import random

from osum_core.plugins import CorpusSpec, DemoRecipe, Utterance, hookimpl, with_prosody
from osum_core.task import LabelField, Task, tagged_task

LABELS = ("新闻科普", "恐怖故事", "童话故事", "客服", "诗歌散文", "有声书", "日常口语", "其他")

# OSUM's global_style_dict: raw label -> class.
RAW_STYLES = {
    "朗读": "新闻科普",
    "科普百科": "新闻科普",
    "悬疑恐怖": "恐怖故事",
    "童话故事": "童话故事",
    "客服": "客服",
    "诗歌": "诗歌散文",
    "散文": "诗歌散文",
    "武侠评书": "有声书",
    "小说": "有声书",
    "历史": "有声书",
    "科幻": "有声书",
    "对话": "日常口语",
    "口语": "日常口语",
    "幽默": "其他",
    "其他": "其他",
}

PROMPTS = {
    "zh": (
        # OSUM's prompt_config.yaml, then its Gradio demo's wording; the last three are ours in their style.
        "请将以下音频内容进行转录，并在结尾处给出<风格>标签，风格共分为8类：新闻科普、恐怖故事、童话故事、客服、"
        "诗歌散文、有声书、日常口语、其他。",
        "请将音频内容进行文字转录，并在最后添加<风格>标签，标签共8种：新闻科普、恐怖故事、童话故事、客服、诗歌散文、"
        "有声书、日常口语、其他。",
        "转录这段音频，并在文本末尾附加说话<风格>标签：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
        "请写出音频中的内容，最后用<>标出说话风格，共8类：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、"
        "日常口语、其他。",
        "识别语音并判断其说话风格，在转写结果后添加<风格>标签（新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、"
        "日常口语、其他）。",
    ),
    "en": (
        "Transcribe the audio and end with a <style> tag, one of: 新闻科普 (news), 恐怖故事 (horror story), "
        "童话故事 (fairy tale), 客服 (customer service), 诗歌散文 (poetry and prose), 有声书 (audiobook), "
        "日常口语 (everyday talk), 其他 (other).",
        "Write down what is said, then the speaking style in angle brackets.",
        "Transcribe the speech and tag its speaking style at the end.",
        "What is said, and in which style? Answer with the transcript followed by <style>.",
        "Convert the speech to text and append the speaking-style label.",
    ),
}

# For tasks.ssr.transcript=false (the style alone, tag <STYLE>); ours, in the style of OSUM's.
LABEL_PROMPTS = {
    "zh": (
        "请判断以下音频的说话风格，并给出<风格>标签，风格共分为8类：新闻科普、恐怖故事、童话故事、客服、诗歌散文、"
        "有声书、日常口语、其他。",
        "请识别这段语音的风格，只用<>给出风格类别：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
    ),
    "en": (
        "In which style is this spoken? Answer with one <style> tag: 新闻科普 (news), 恐怖故事 (horror story), "
        "童话故事 (fairy tale), 客服 (customer service), 诗歌散文 (poetry and prose), 有声书 (audiobook), "
        "日常口语 (everyday talk), 其他 (other).",
        "Name the speaking style in angle brackets, without transcribing.",
        "Tag the speaking style of this audio.",
    ),
}

TASK = tagged_task(
    name="ssr",
    tag="<TRANSCRIBE> <STYLE>",
    prompts=PROMPTS,
    label_prompts=LABEL_PROMPTS,
    fields=[LabelField("style", LABELS, aliases={raw: style for raw, style in RAW_STYLES.items() if raw != style})],
)

# class: (rate wpm, pitch 0-100, pitch range 0-100, cue word)
PROSODY = {
    "新闻科普": (185, 50, 35, "report"),
    "恐怖故事": (115, 25, 30, "midnight"),
    "童话故事": (150, 70, 95, "once"),
    "客服": (175, 60, 55, "hello"),
    "诗歌散文": (105, 50, 75, "moon"),
    "有声书": (155, 40, 50, "chapter"),
    "日常口语": (210, 55, 65, "hey"),
    "其他": (170, 50, 0, "anyway"),
}


def draw(utt: Utterance, rng: random.Random, spec: CorpusSpec) -> Utterance:
    raw = rng.choice(sorted(RAW_STYLES))
    rate, pitch, pitch_range, cue = PROSODY[RAW_STYLES[raw]]
    voice = with_prosody(utt.voice, rng, rate, pitch, pitch_range)
    words = (cue,) + utt.words if rng.random() < spec.options["content_cues"] else utt.words
    return dataclasses.replace(utt, words=words, voice=voice, labels={"style": raw})


def label_text(utt: Utterance) -> str:
    return f"<{utt.labels['style']}>"


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    # content_cues: share of utterances that also say their class's cue word (0: prosody alone).
    return {TASK.tag: DemoRecipe(draw=draw, label_text=label_text, options={"content_cues": 1.0})}
