"""The trained model as inference sees it: encoder, heads, label-side state and the fused-score settings.

Training builds one (:meth:`ScoringModel.build`) and trains its modules; evaluation, calibration, export
and a bundle's query tower use the same object restored from a checkpoint
(:meth:`ScoringModel.from_checkpoint`) or from a bundle, without optimizer state, data loaders or a
trainer. With several workers every encoding method is a collective: each worker encodes a share and
every worker gets all rows, so the same code serves 1 or N workers. The ``own_*`` methods give instead the
vectors of the labels this worker holds (:attr:`ScoringModel.own_labels`), which is what training-time
mining and evaluation index: no worker then holds every label's vector. They come as
:class:`~xmc.mining.ann.VectorSource` objects too, from which an index is built a chunk at a time. A subset
model (``subset=``) holds the label state of chosen labels only, whatever split trained them: an export
worker builds one index shard of a bundle from one. Read from a checkpoint, it leaves its classifier rows
there and reads them a chunk at a time as the index is built, so they are never held beside the index.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xmc import checkpoint as ckpt
from xmc.data.tokens import load_tokenizer, tokenize_texts
from xmc.distributed import gather_rows, my_share
from xmc.experiment import ExperimentConfig
from xmc.mining.ann import VectorSource, as_source, build_shard_index, index_key
from xmc.mining.config import AnnConfig
from xmc.models.config import HeadsConfig
from xmc.models.encoder import TextEncoder, encode_tokens, precision_dtype, resolve_model_dir
from xmc.models.label_table import ShardedLabelTable
from xmc.models.prototypes import LabelPrototypes
from xmc.models.xmc_model import XMCModel
from xmc.scoring import fusion

#: Pre-tokenised texts: ``(ids int32 [n, max_len], lengths int32 [n])``, the token cache's layout.
TokenArrays = tuple[np.ndarray, np.ndarray]

#: Labels pushed through the prototype network at once (bounds the activation memory of a full pass).
PROTOTYPE_CHUNK = 4096


@dataclass
class HeadVectors:
    """Every label's vector on each side, L2-normalised and unweighted: ``de`` (its prototype with
    prototypes, else its text embedding) and ``clf`` (its classifier row; None without a classifier)."""

    de: np.ndarray
    clf: np.ndarray | None


class ScoringModel:
    """Encoder + DE head + classifier head + label table (this worker's shard) + prototypes, the labels
    without training positives (``cold_start``) and the fused-score settings (``heads``).

    ``label_tokens`` (the label texts, tokenised) are needed for anything label-side; a query tower (a
    bundle's) has none and only encodes queries. A subset model may be given the tokens of its own labels
    alone, in ``subset`` order (what an export task reads of a million-label token cache).
    """

    def __init__(self, model: XMCModel, *, label_tokens: TokenArrays | None = None,
                 classifier: ShardedLabelTable | None = None, prototypes: LabelPrototypes | None = None,
                 cold_start: np.ndarray | None = None, max_len: int = 32, label_max_len: int = 0,
                 batch_size: int = 256,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None, rank: int = 0,
                 world_size: int = 1, subset: np.ndarray | None = None, num_labels: int | None = None,
                 stored_rows: Callable[[np.ndarray], torch.Tensor] | None = None):
        self.model = model
        self.heads: HeadsConfig = model.config
        self.label_tokens = label_tokens
        self.classifier = classifier
        self.prototypes = prototypes
        self.cold_start = np.asarray([] if cold_start is None else cold_start, dtype=np.int64)
        self.max_len, self.batch_size = max_len, batch_size
        self.label_max_len = label_max_len or max_len  # label texts are cut like the token cache's labels
        self.device, self.dtype = torch.device(device), dtype
        self.rank, self.world_size = rank, world_size
        self._own_labels = subset  # a subset model's labels (None: the training split, see own_labels)
        self._num_labels = num_labels
        # a subset model's classifier rows by label id, read where they are stored (else the table's own)
        self._stored_rows = stored_rows
        # the subset's tokens alone, in subset order (else label_tokens rows are label ids)
        self._compact_tokens = (subset is not None and label_tokens is not None
                                and len(label_tokens[1]) == len(subset))
        self._tokenizer = None
        self._label_text: np.ndarray | None = None  # DE embeddings of all label texts, until weights change
        self._own_label_text: np.ndarray | None = None  # the same for the labels this worker holds
        self._de_index: tuple | None = None  # (index_key, index) of own DE vectors, until weights change

    # ------------------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def build(cls, config: ExperimentConfig, num_labels: int, *, label_tokens: TokenArrays | None = None,
              cold_start: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
              device: torch.device | str = "cpu", subset: np.ndarray | None = None,
              table_rows: bool = True) -> ScoringModel:
        """Fresh modules for ``config``: the pre-trained encoder, new heads, a new table shard and new
        prototype state (in that order, which fixes what each draws from the seeded RNG).

        ``subset`` (sorted label ids) makes a subset model of one process: its label state is that of these
        labels alone, whatever the split of the run that trained it (an export worker building one index
        shard of a bundle holds the rows of that shard, nothing else). ``table_rows`` False gives it a
        classifier table of no rows, for one whose rows are read from storage when needed.
        """
        device = torch.device(device)
        if subset is not None:
            subset = np.asarray(subset, dtype=np.int64)
            if world_size != 1:
                raise ValueError("a subset model belongs to one process (world_size 1)")
        model_dir = resolve_model_dir(config.encoder.model)
        heads = config.model
        model = XMCModel(TextEncoder(model_dir, config.encoder.pooling, config.encoder.group_by_length),
                         heads).to(device)
        held = subset if table_rows or subset is None else np.zeros(0, dtype=np.int64)
        classifier = (ShardedLabelTable(num_labels, model.clf_dim, rank, world_size, owned=held).to(device)
                      if heads.classifier else None)
        prototypes = None
        if heads.prototypes:
            num_free = heads.free_vectors or LabelPrototypes.default_num_free(num_labels)
            prototypes = LabelPrototypes(num_labels, model.de_dim, num_free, rank, world_size, device,
                                         subset=subset)
        return cls(model, label_tokens=label_tokens, classifier=classifier, prototypes=prototypes,
                   cold_start=cold_start, max_len=config.dataset.max_len,
                   label_max_len=config.dataset.label_max_len, batch_size=config.encoder.batch_size,
                   device=device,
                   dtype=precision_dtype(config.train.precision, device), rank=rank, world_size=world_size,
                   subset=subset, num_labels=num_labels)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, config: ExperimentConfig, num_labels: int, *,
                        label_tokens: TokenArrays | None = None, cold_start: np.ndarray | None = None,
                        rank: int = 0, world_size: int = 1, device: torch.device | str | None = None,
                        subset: np.ndarray | None = None) -> ScoringModel:
        """The model of a training checkpoint, in eval mode: it reads the model weights, this worker's rows
        of the classifier and prototype shards (those of the labels ``subset`` for a subset model, see
        :meth:`build`, whose classifier rows are read from the checkpoint only as its ``own_*`` vectors are
        made) and the label-level state, never optimizer or loop state.

        ``cold_start`` defaults to what the checkpoint recorded; a checkpoint that recorded none (an
        older layout) needs it given.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        directory = Path(directory)
        labels = ckpt.load_state(directory, ckpt.LABELS) if ckpt.has_state(directory, ckpt.LABELS) else {}
        if cold_start is None:
            if "cold_start" not in labels:
                raise ValueError(f"{directory}: the checkpoint does not record its cold-start labels; "
                                 "pass them")
            cold_start = labels["cold_start"]
        scoring = cls.build(config, num_labels, label_tokens=label_tokens, cold_start=cold_start, rank=rank,
                            world_size=world_size, device=device, subset=subset, table_rows=subset is None)
        if subset is not None and scoring.classifier is not None:
            scoring._stored_rows = ckpt.StoredRows(directory, "table", num_labels)
        scoring.load_checkpoint_weights(directory, labels)
        scoring.model.eval()
        return scoring

    def label_tables(self) -> dict[str, ShardedLabelTable]:
        """The label-sharded tables by their checkpoint names: classifier rows and prototype free vectors."""
        tables = {}
        if self.classifier is not None:
            tables["table"] = self.classifier
        if self.prototypes is not None:
            tables["free"] = self.prototypes.free
        return tables

    def load_checkpoint_weights(self, directory: Path, labels: dict | None = None,
                                keys: tuple[str, ...] = ("weight",)) -> dict[str, dict[str, torch.Tensor]]:
        """Weights and label-side rows of a checkpoint (this worker's shards, re-split as needed).

        ``keys``: what to read of each label table's shards besides its weights (a resumed run also takes
        the optimizer moments); returns what was read, per table, so no shard is read twice.
        """
        self.model.load_state_dict(ckpt.load_state(directory, ckpt.MODEL))
        if self.prototypes is not None:
            if labels is None:
                labels = (ckpt.load_state(directory, ckpt.LABELS) if ckpt.has_state(directory, ckpt.LABELS)
                          else {})
            if "free_of" not in labels:  # an older layout kept it with the loop state
                labels = ckpt.load_state(directory, ckpt.LOOP)
            self.prototypes.free_of = labels["free_of"]
            if self._own_labels is not None:  # a subset model reads the free vectors of its labels' clusters
                self.prototypes.hold_free_vectors_of(self._own_labels)
        read = {}
        for name, table in self.label_tables().items():
            if name == "table" and self._stored_rows is not None:
                continue  # read when asked (own_classifier_source)
            # into the table's own rows, so they are never held twice
            read[name] = ckpt.read_rows(directory, name, keys, table.num_labels, table.owned,
                                        into={"weight": table.rows.weight.data})
        if self.prototypes is not None:
            centroids = self.prototypes.centroids
            rows = ckpt.read_rows(directory, "centroids", ("rows",), self.num_labels, centroids.owned,
                                  into={"rows": centroids.rows})
            centroids.rows = rows["rows"]
        self.weights_changed()
        return read

    def label_state(self) -> dict:
        """Label-level state a checkpoint records beside the weights (``labels`` part)."""
        state = {"cold_start": self.cold_start}
        if self.prototypes is not None:
            state["free_of"] = self.prototypes.free_of
        return state

    # ------------------------------------------------------------------------------------------------------
    # shapes

    @property
    def num_labels(self) -> int:
        if self._num_labels is not None:
            return self._num_labels
        if self.label_tokens is not None:
            return len(self.label_tokens[1])
        if self.classifier is not None:
            return self.classifier.num_labels
        raise ValueError("a query tower has no labels")

    @property
    def de_dim(self) -> int:
        return self.model.de_dim

    @property
    def has_classifier(self) -> bool:
        return self.heads.classifier

    @property
    def dim(self) -> int:
        """Width of the folded vectors that the label index holds and queries are searched with."""
        return (self.model.de_dim + (self.model.clf_dim if self.has_classifier else 0)
                + int(fusion.has_offset_column(self.heads.cold_start_offset)))

    @property
    def own_labels(self) -> np.ndarray:
        """The labels this worker holds: ``l % world_size == rank``, the split of the classifier table and
        the label centroids, so their rows are at hand (a subset model: its ``subset``)."""
        if self._own_labels is not None:
            return self._own_labels
        return np.arange(self.rank, self.num_labels, self.world_size, dtype=np.int64)

    # ------------------------------------------------------------------------------------------------------
    # encoding

    @contextlib.contextmanager
    def eval_mode(self):
        """Dropout off for inference inside training; the previous mode is restored afterwards."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def weights_changed(self) -> None:
        """Forget encodings of the previous weights (the trainer calls this after every optimizer step)."""
        self.release_label_vectors()

    def release_label_vectors(self) -> None:
        """Free the label encodings and the label index kept for reuse (the trainer does before a
        checkpoint, which then holds the table state and nothing more)."""
        self._label_text = self._own_label_text = None
        self._de_index = None

    def prototypes_changed(self) -> None:
        """Forget the index of the DE-side label vectors (PRIME's prototypes move with their centroids)."""
        self._de_index = None

    def tokens(self, texts: Sequence[str], labels: bool = False) -> TokenArrays:
        """Tokenise like the training token cache: same tokenizer, truncated at ``max_len`` (label texts:
        ``label_max_len``)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model.encoder.model_dir)
        return tokenize_texts(self._tokenizer, list(texts), self.label_max_len if labels else self.max_len)

    def encode(self, embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: TokenArrays,
               rows: np.ndarray | None = None) -> np.ndarray:
        """``embed`` of ``rows`` (default: all) of ``tokens``, each worker a share; every worker gets all."""
        ids, lengths = tokens
        rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
        mine = my_share(rows, self.rank, self.world_size)
        with self.eval_mode(), torch.inference_mode():
            local = encode_tokens(embed, ids, lengths, batch_size=self.batch_size, device=self.device,
                                  dtype=self.dtype, rows=mine, progress=False)
        return gather_rows(local, self.device)

    def _encode_own(self, embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: TokenArrays,
                    rows: np.ndarray) -> np.ndarray:
        """``embed`` of ``rows`` of ``tokens`` on this worker alone (not a collective)."""
        with self.eval_mode(), torch.inference_mode():
            return encode_tokens(embed, *tokens, batch_size=self.batch_size, device=self.device,
                                 dtype=self.dtype, rows=np.asarray(rows), progress=False)

    def _as_tokens(self, queries: Sequence[str] | TokenArrays) -> TokenArrays:
        if isinstance(queries, tuple) and len(queries) == 2 and isinstance(queries[0], np.ndarray):
            return queries
        return self.tokens(queries)

    def query_head_vectors(self, queries: Sequence[str] | TokenArrays, rows: np.ndarray | None = None
                           ) -> np.ndarray:
        """``[q_DE ; q_CLF]`` (``q_DE`` alone without a classifier) of raw texts or token arrays."""
        embed = self.model.embed_both if self.has_classifier else self.model.embed_de
        return self.encode(embed, self._as_tokens(queries), rows)

    def query_de_source(self, queries: Sequence[str] | TokenArrays, rows: np.ndarray) -> VectorSource:
        """The DE query vectors of ``rows`` of raw texts or token arrays as a source, made a chunk at a time
        by this worker alone (not a collective): what a memory of training queries is indexed from
        (:mod:`xmc.scoring.neighbours`)."""
        tokens, rows = self._as_tokens(queries), np.asarray(rows, dtype=np.int64)
        return VectorSource(len(rows), lambda positions: self._encode_own(self.model.embed_de, tokens,
                                                                          rows[positions]), self.de_dim)

    def query_vectors(self, queries: Sequence[str] | TokenArrays,
                      rows: np.ndarray | None = None) -> np.ndarray:
        """The vectors the label index is searched with: ``[q_DE ; q_CLF]`` folded with the offset column."""
        return fusion.fold_queries(self.query_head_vectors(queries, rows), self.heads.cold_start_offset)

    def label_text_vectors(self, rows: np.ndarray | None = None) -> np.ndarray:
        """DE embeddings of the texts of labels ``rows`` (default: every label) under the current weights.

        Those of every label are kept until :meth:`weights_changed`, so an epoch's evaluation and the next
        epoch's mining, which see the same weights, encode the labels once.
        """
        if rows is not None:
            return self.encode(self.model.embed_de, self._labels(), rows)
        if self._label_text is None:
            self._label_text = self.encode(self.model.embed_de, self._labels())
        return self._label_text

    def _labels(self) -> TokenArrays:
        if self.label_tokens is None:
            raise ValueError("this model has no label texts (a query tower): it cannot encode labels")
        return self.label_tokens

    def _token_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of :attr:`label_tokens` of label ``ids`` (the ids themselves, but for a subset model given
        its own labels' tokens only)."""
        if not self._compact_tokens:
            return ids
        return np.searchsorted(self._own_labels, ids)

    def _ids(self, rows: np.ndarray | None) -> np.ndarray:
        return np.arange(self.num_labels) if rows is None else np.asarray(rows, dtype=np.int64)

    def de_label_vectors(self, rows: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
        """The DE-side vector of labels ``rows`` (default: all): the prototype with prototypes, else the
        text embedding (``text``: those text embeddings, when the caller has them)."""
        text = self.label_text_vectors(rows) if text is None else text
        if self.prototypes is None:
            return text
        with torch.no_grad():
            free, centroids = self.prototypes.inputs(self._ids(rows))
        return self._prototype_vectors(text, free, centroids)

    def _prototype_vectors(self, text: np.ndarray, free: torch.Tensor, centroids: torch.Tensor) -> np.ndarray:
        out = np.empty_like(text)
        with self.eval_mode(), torch.inference_mode():
            for start in range(0, len(text), PROTOTYPE_CHUNK):
                stop = start + PROTOTYPE_CHUNK
                chunk = torch.from_numpy(text[start:stop]).to(self.device)
                out[start:stop] = self.model.lpn(chunk, free[start:stop],
                                                 centroids[start:stop]).float().cpu().numpy()
        return out

    def text_label_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """The folded vectors (:meth:`label_vectors`) of labels known only by their ``texts``, such as labels
        added after training: DE side the text's embedding, classifier side the text through the classifier
        head (what ``clf_untrained: label_text`` gives a label without training data), plus the cold-start
        offset. With prototypes the DE side is the text embedding too: a new label has no free-vector
        cluster and no training queries to make a prototype from."""
        tokens = self.tokens(texts, labels=True)
        de = self.encode(self.model.embed_de, tokens)
        clf = self.encode(self.model.embed_clf, tokens) if self.has_classifier else None
        return fusion.fold_labels(de, clf, np.arange(len(texts)), self.heads.de_weight,
                                  self.heads.cold_start_offset)

    def untrained_text_vectors(self) -> np.ndarray:
        """Classifier-side embeddings of the cold-start labels' texts, in ``cold_start`` order: what
        ``clf_untrained: label_text`` scores those labels by."""
        return self.encode(self.model.embed_clf, self._labels(), self.cold_start)

    def classifier_vectors(self, rows: np.ndarray | None = None) -> np.ndarray | None:
        """The classifier-side vectors of labels ``rows`` (default: all), L2-normalised (None without a
        classifier).

        With ``clf_untrained: label_text``, labels no training query is tagged with take their label text
        through the current classifier head instead of their table row, which only negatives ever moved.
        """
        if self.classifier is None:
            return None
        if self._own_labels is not None:
            raise ValueError("a subset model holds its own labels' rows only: use own_classifier_vectors")
        table = self.classifier.full_normalized().float().cpu().numpy()
        ids = self._ids(rows)
        return self._cold_rows_by_text(table if rows is None else table[ids], ids, self.encode)

    def _cold_rows_by_text(self, rows: np.ndarray, ids: np.ndarray, encode: Callable) -> np.ndarray:
        """``rows`` (classifier vectors of labels ``ids``) with those of labels without training positives
        replaced by their text through the classifier head, under ``clf_untrained: label_text``; ``encode``
        is :meth:`encode` (a collective) or :meth:`_encode_own`."""
        if self.heads.clf_untrained == "label_text":
            cold = self._cold_positions(ids)
            if len(cold):
                rows[cold] = encode(self.model.embed_clf, self._labels(), self._token_rows(ids[cold]))
        return rows

    def _cold_positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions in ``ids`` of the labels without training positives."""
        return np.flatnonzero(np.isin(ids, self.cold_start))

    def head_vectors(self, rows: np.ndarray | None = None) -> HeadVectors:
        """Both sides of labels ``rows`` (default: all; a collective: every worker calls it with the same
        rows, every worker gets all of them)."""
        return HeadVectors(self.de_label_vectors(rows), self.classifier_vectors(rows))

    def label_vectors(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The folded ``[de_weight · DE ; CLF ; offset column]`` of labels ``rows`` (default: all): what the
        label index holds."""
        heads = self.head_vectors(rows)
        return fusion.fold_labels(heads.de, heads.clf, self._cold_positions(self._ids(rows)),
                                  self.heads.de_weight, self.heads.cold_start_offset)

    # ------------------------------------------------------------------------------------------------------
    # the labels this worker holds
    #
    # Each comes as a VectorSource as well as an array: an index built from a source makes the vectors a
    # chunk at a time, so the vectors exist once, in the index (xmc.mining.ann.build_index).

    def own_label_text_vectors(self) -> np.ndarray:
        """DE embeddings of the texts of :attr:`own_labels` (kept until :meth:`weights_changed`, so an epoch's
        evaluation and the mining after it encode them once)."""
        if self._own_label_text is None:
            self._own_label_text = self._encode_own(self.model.embed_de, self._labels(),
                                                    self._token_rows(self.own_labels))
        return self._own_label_text

    def own_de_source(self, text: np.ndarray | None = None) -> VectorSource:
        """:meth:`de_label_vectors` of :attr:`own_labels` as a source: label texts through the encoder a
        chunk at a time (``text``: their embeddings, when at hand). With prototypes their vectors are made
        whole first, since their inputs come from other workers (a collective)."""
        if self.prototypes is not None:
            return VectorSource.of(self.own_de_label_vectors(text))
        text = self._own_label_text if text is None else text
        if text is not None:
            return VectorSource.of(text)
        rows, tokens = self._token_rows(self.own_labels), self._labels()
        return VectorSource(len(rows), lambda positions: self._encode_own(self.model.embed_de, tokens,
                                                                          rows[positions]), self.de_dim)

    def own_de_label_vectors(self, text: np.ndarray | None = None) -> np.ndarray:
        """:meth:`de_label_vectors` of :attr:`own_labels` (``text``: their text embeddings, when at hand);
        with prototypes a collective, which fetches each owned label's free vector from its owner."""
        text = self.own_label_text_vectors() if text is None else text
        if self.prototypes is None:
            return text
        free, centroids = self.prototypes.own_inputs()
        return self._prototype_vectors(text, free, centroids)

    def own_de_index(self, config: AnnConfig, seed: int = 0, vectors: np.ndarray | None = None):
        """The index of this worker's DE-side label vectors (``vectors``: those, when at hand), of the kind
        ``config`` chooses for all labels (:func:`xmc.mining.ann.build_shard_index`).

        Kept until the weights change, so that the mining refresh right after an evaluation searches the
        index the evaluation built instead of encoding every label again; a request for another kind of
        index replaces it.
        """
        key = index_key(config, self.num_labels, seed)
        if self._de_index is not None and self._de_index[0] == key:
            return self._de_index[1]
        self._de_index = None  # freed before the next one is built
        source = self.own_de_source() if vectors is None else VectorSource.of(vectors)
        index = build_shard_index(source, self.num_labels, config, seed, self.device)
        self._de_index = (key, index)
        return index

    def own_classifier_source(self) -> VectorSource | None:
        """:meth:`own_classifier_vectors` as a source (None without a classifier): the table's rows,
        normalised a chunk at a time."""
        if self.classifier is None:
            return None
        weight, own, stored = self.classifier.rows.weight, self.own_labels, self._stored_rows

        def fetch(positions: np.ndarray) -> np.ndarray:
            positions = np.asarray(positions, dtype=np.int64)
            with torch.no_grad():
                rows = (stored(own[positions]) if stored is not None
                        else weight[torch.from_numpy(positions).to(weight.device)])
                rows = torch.nn.functional.normalize(rows.float(), dim=-1).cpu().numpy()
            return self._cold_rows_by_text(rows, own[positions], self._encode_own)

        return VectorSource(len(own), fetch, self.classifier.dim)

    def own_classifier_vectors(self) -> np.ndarray | None:
        """:meth:`classifier_vectors` of :attr:`own_labels`: this worker's table rows, normalised (cold-start
        labels by their text under ``clf_untrained: label_text``)."""
        source = self.own_classifier_source()
        return None if source is None else source.fetch(np.arange(source.count))

    def own_head_vectors(self) -> HeadVectors:
        """:meth:`head_vectors` of :attr:`own_labels` (a collective with prototypes)."""
        return HeadVectors(self.own_de_label_vectors(), self.own_classifier_vectors())

    def own_label_source(self, de: np.ndarray | VectorSource | None = None) -> VectorSource:
        """:meth:`own_label_vectors` as a source: each chunk's DE-side vectors (``de``: those of every own
        label, when at hand, else :meth:`own_de_source`) folded with its classifier rows."""
        de = self.own_de_source() if de is None else as_source(de)
        clf = self.own_classifier_source()
        cold = np.zeros(len(self.own_labels), dtype=bool)
        cold[self._cold_positions(self.own_labels)] = True
        de_weight, offset = self.heads.de_weight, self.heads.cold_start_offset

        def fetch(positions: np.ndarray) -> np.ndarray:
            return fusion.fold_labels(de.fetch(positions), None if clf is None else clf.fetch(positions),
                                      np.flatnonzero(cold[positions]), de_weight, offset)

        return VectorSource(de.count, fetch, self.dim)

    def own_label_vectors(self, heads: HeadVectors | None = None) -> np.ndarray:
        """The folded vectors (:meth:`label_vectors`) of :attr:`own_labels`."""
        heads = heads or self.own_head_vectors()
        return fusion.fold_labels(heads.de, heads.clf, self._cold_positions(self.own_labels),
                                  self.heads.de_weight, self.heads.cold_start_offset)
