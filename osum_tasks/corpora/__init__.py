"""The public corpora OSUM trained on, as `CorpusRecipe`s (``osum data prepare``). Each is contributed by the
task module it mainly feeds, through the ``osum_corpus_recipes`` hook, as a third party's would be."""
