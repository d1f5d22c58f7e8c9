"""Serving artifacts: the export bundle (query encoder, label index shards, label texts, manifest), loading it
with checksum verification, sharded faiss search and the top-k merge shared by offline evaluation and Serve."""
