"""Mining: ANN index over label vectors, hard-negative shortlists, query clustering for batches."""
