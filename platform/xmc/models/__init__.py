"""Models: the text encoder (any HF directory) and the heads trained on top of it."""
