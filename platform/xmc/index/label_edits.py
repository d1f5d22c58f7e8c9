"""Labels added to or removed from a bundle after training, without retraining.

Added labels come in the label file layout of the LF datasets (``lbl.json[.gz]``: one JSON object per line
with ``uid``, ``title`` and optional ``content``); they get the ids after the run's labels and are scored by
their text through the trained towers, the way ``clf_untrained: label_text`` scores labels that had no
training data (:meth:`xmc.scoring.model.ScoringModel.text_label_vectors`). Removed labels are listed by uid,
one per line; they keep their id and their row in ``labels.parquet``, but no index shard holds them, so no
search can return them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmc import storage
from xmc.data.errors import DataError
from xmc.data.readers import iter_lines, read_lf_labels
from xmc.data.tokens import join_text


@dataclass
class LabelEdits:
    """What to change in the run's label set: ``added`` (uid, text) pairs and ``removed`` label ids."""

    added_uids: list[str] = field(default_factory=list)
    added_texts: list[str] = field(default_factory=list)
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __bool__(self) -> bool:
        return bool(self.added_uids) or bool(len(self.removed))

    @classmethod
    def read(cls, add: str | os.PathLike | None, remove: str | os.PathLike | None, uids: list[str],
             label_text: str = "title") -> LabelEdits:
        """The edits in the files ``add`` and ``remove`` (paths or storage URIs; either may be None) against
        the run's label ``uids``; ``label_text`` composes an added label's text as the run's labels were.
        Unknown, repeated or clashing uids are errors naming the file and line."""
        edits = cls()
        known = {uid: number for number, uid in enumerate(uids)}
        if remove:
            with _local_copy(remove) as path:
                removed = {}
                for lineno, line in iter_lines(path):
                    uid = line.strip()
                    if not uid:
                        raise DataError(path, lineno, "empty line; expected one label uid per line")
                    if uid not in known:
                        raise DataError(path, lineno, f"no label with uid {uid!r} in the run's labels")
                    if uid in removed:
                        raise DataError(path, lineno, f"label {uid!r} is listed twice (first on line "
                                                      f"{removed[uid]})")
                    removed[uid] = lineno
            edits.removed = np.array(sorted(known[uid] for uid in removed), dtype=np.int64)
        if add:
            with _local_copy(add) as path:
                seen: dict[str, int] = {}
                lineno = 0
                for chunk in read_lf_labels(path):
                    for uid, title, content in zip(chunk.uid, chunk.title, chunk.content):
                        lineno += 1
                        if uid in known:  # a uid names one label for good, in every bundle version
                            raise DataError(path, lineno, f"label {uid!r} is already one of the run's "
                                                          "labels; give the new label another uid")
                        if uid in seen:
                            raise DataError(path, lineno, f"label {uid!r} is added twice (first on line "
                                                          f"{seen[uid]})")
                        seen[uid] = lineno
                        edits.added_uids.append(uid)
                        edits.added_texts.append(join_text(title, content, label_text))
        return edits

    def describe(self) -> dict:
        """What the bundle's manifest records of the edits."""
        return {"added": len(self.added_uids), "removed": int(len(self.removed))}


@contextlib.contextmanager
def _local_copy(location: str | os.PathLike) -> Iterator[Path]:
    """A local path for ``location``: itself when local, else a temporary download named like the original
    (so a ``.gz`` is read as one)."""
    location = storage.resolve(location)
    if storage.is_local(location):
        yield storage.local_path(location)  # a missing file is reported by the reader, with its name
        return
    if not storage.is_file(location):
        raise DataError(location, None, "file not found")
    with tempfile.TemporaryDirectory(prefix="xmc-labels-") as tmp:
        yield storage.download_file(location, Path(tmp) / storage.name(location))
