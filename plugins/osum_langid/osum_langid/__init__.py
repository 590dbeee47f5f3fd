"""osum-langid: spoken language identification as an osum task plugin."""
