"""Serving artifacts: the export bundle (query tower, label index shards, label texts, manifest), loading it
with checksum verification, sharded faiss search and the top-k merge, and
:class:`~xmc.index.predictor.Predictor`, the one object that answers queries from a bundle offline, in Python
and in Serve."""
