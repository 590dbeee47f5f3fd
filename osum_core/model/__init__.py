"""The backbone: speech encoder -> adapter -> LLM. Tensors in, tensors out; no files, tasks or Lightning."""
