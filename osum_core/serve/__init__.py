"""``osum serve``: an OpenAI-compatible HTTP API over a checkpoint, with dynamic request batching.

    engine.py       the checkpoint and its tasks: audio bytes -> model rows; a batch of rows -> text
    batcher.py      concurrent requests gathered into batches, decoded one batch at a time off the event loop
    errors.py       errors in OpenAI's shape, with their HTTP status, and the checks of request fields
    transcripts.py  the transcription formats (json, text, srt, vtt, verbose_json) and segments from word times
    chat.py         the chat request read and checked, and its reply (whole, or streamed as events)
    middleware.py   the API key, cross-origin posts, the request size, and every request counted
    metrics.py      the Prometheus metrics of /metrics
    app.py          the routes (FastAPI): /v1/audio/transcriptions, /v1/chat/completions, /v1/models, ...
    page/           the demo page served at /

Only `osum_core/cli/serve.py` starts a server; tests build the app with `app.build_app`.
"""
