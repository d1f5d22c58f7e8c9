"""Data: readers for the LF raw-text and sparse layouts, the prepared dataset, token caches.

Submodules are imported directly (``from xmc.data.prepare import prepare_dataset``) so that preparing
data never pays for importing torch.
"""
