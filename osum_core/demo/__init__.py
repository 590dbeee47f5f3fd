"""The synthetic demo corpus (eSpeak NG speech, procedural vocal events), the demo tokenizer, and the
recipe types task plugins use to contribute demo data (see PLUGINS.md, "Demo data")."""
