"""jobs/prepare.py on real data: counts, contents, both layouts, token cache, no-op rerun, streaming
memory."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from xmc.data.dataset import PreparedDataset
from xmc.data.prepare import prepare_dataset
from xmc.data.tokens import load_tokenizer
from xmc.models.encoder import resolve_model_dir

from conftest import REPO, read_lines, run_job, shared_set, write_lf_subset


def test_cooking_counts_and_statistics_match_the_data_readme(cooking_prepared):
    manifest = json.loads((cooking_prepared / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 12404, "test": 3000, "labels": 736}
    train = manifest["splits"]["train"]
    assert train["labels_per_point"] == pytest.approx(2.31, abs=0.005)   # README: 2.31
    assert train["points_per_label"] == pytest.approx(38.86, abs=0.005)  # README: 38.86
    assert manifest["schema_version"] == 1 and manifest["format"] == "lf-json"
    assert set(manifest["source"]["files"]) == {"trn.json.gz", "tst.json.gz", "lbl.json.gz"}
    for name, meta in manifest["files"].items():
        assert (cooking_prepared / name).stat().st_size == meta["bytes"]


def test_rows_keep_the_source_order_and_contents(cooking_prepared, cooking_source):
    source_lines = read_lines(cooking_source / "tst.json.gz")
    table = pq.read_table(cooking_prepared / "test.parquet")
    assert table.num_rows == len(source_lines)
    for row in (0, 1234, len(source_lines) - 1):
        obj = json.loads(source_lines[row])
        assert table.column("uid")[row].as_py() == str(obj["uid"])
        assert table.column("title")[row].as_py() == obj["title"]
        assert table.column("label_ids")[row].as_py() == obj["target_ind"]
    dataset = PreparedDataset(cooking_prepared)
    matrix = dataset.label_matrix("train")
    assert matrix.shape == (12404, 736)
    first = json.loads(read_lines(cooking_source / "trn.json.gz")[0])
    assert sorted(matrix[0].indices.tolist()) == sorted(first["target_ind"])
    labels = dataset.texts("labels")
    assert labels[0] == json.loads(read_lines(cooking_source / "lbl.json.gz")[0])["title"]
    assert dataset.filter_matrix("test") is None


def test_rerun_on_unchanged_input_is_a_noop(tmp_path, cooking_source):
    source = write_lf_subset(cooking_source, tmp_path / "src", 300, 100)
    out = tmp_path / "prepared"
    _, changed = prepare_dataset(source, out)
    assert changed
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    _, changed = prepare_dataset(source, out)
    assert not changed
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # a changed source file is noticed and the dataset rebuilt
    lines = read_lines(source / "tst.json.gz")[:50]
    with gzip.open(source / "tst.json.gz", "wt") as handle:
        handle.write("".join(line + "\n" for line in lines))
    _, changed = prepare_dataset(source, out)
    assert changed and PreparedDataset(out).num_points("test") == 50
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary leftovers


@pytest.mark.integration
def test_the_prepare_job_says_what_it_did_and_refuses_to_overwrite_other_data(tmp_path, cooking_source):
    source = write_lf_subset(cooking_source, tmp_path / "src", 20, 20)
    out = tmp_path / "prepared"
    assert "prepared:" in run_job("prepare.py", "--source", str(source), "--out", str(out),
                                  "--no-tokens").stdout
    again = run_job("prepare.py", "--source", str(source), "--out", str(out), "--no-tokens")
    assert "up to date (no-op)" in again.stdout
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    proc = run_job("prepare.py", "--source", str(source), "--out", str(precious), "--no-tokens", check=False)
    assert proc.returncode == 2
    assert "is not a prepared dataset; refusing to overwrite it" in proc.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


def _write_sparse_layout(lf_source, dest, filter_pairs):
    """The same data in the NGAME/DEXML sparse layout."""
    (dest / "raw").mkdir(parents=True)
    labels = [json.loads(line)["title"] for line in read_lines(lf_source / "lbl.json.gz")]
    (dest / "raw" / "Y.txt").write_text("".join(t + "\n" for t in labels))
    for split, short in (("trn", "trn"), ("tst", "tst")):
        points = [json.loads(line) for line in read_lines(lf_source / f"{split}.json.gz")]
        rows = [" ".join(f"{i}:1.0" for i in p["target_ind"]) for p in points]
        (dest / f"{short}_X_Y.txt").write_text(f"{len(points)} {len(labels)}\n"
                                               + "".join(r + "\n" for r in rows))
        (dest / "raw" / f"{short}_X.txt").write_text("".join(p["title"] + "\n" for p in points))
    (dest / "filter_labels_test.txt").write_text("".join(f"{r} {c}\n" for r, c in filter_pairs))


def test_sparse_layout_gives_the_same_dataset_as_lf(tmp_path, cooking_source):
    lf = write_lf_subset(cooking_source, tmp_path / "lf", 500, 200)
    sparse = tmp_path / "sparse"
    _write_sparse_layout(lf, sparse, [(0, 5), (3, 17), (199, 735)])
    a, _ = prepare_dataset(lf, tmp_path / "a")
    b, _ = prepare_dataset(sparse, tmp_path / "b")
    assert b["format"] == "xc-sparse" and b["counts"]["filter_test"] == 3
    da, db = PreparedDataset(tmp_path / "a"), PreparedDataset(tmp_path / "b")
    for split in ("train", "test"):
        assert (da.label_matrix(split) != db.label_matrix(split)).nnz == 0
        assert da.texts(split) == db.texts(split)
    assert da.texts("labels") == db.texts("labels")
    assert sorted(zip(*db.filter_matrix("test").nonzero())) == [(0, 5), (3, 17), (199, 735)]


def test_token_cache_matches_the_tokenizer(cooking_prepared):
    dataset = PreparedDataset(cooking_prepared)
    model_dir = resolve_model_dir("default")
    cache = dataset.token_cache(model_dir, 16, "title", "title", progress=False)
    ids, lengths = cache.arrays("test")
    assert ids.shape == (3000, 16) and isinstance(ids, np.memmap)
    tokenizer = load_tokenizer(model_dir)
    texts = dataset.texts("test")
    for row in (0, 17, 2999):
        expected = tokenizer(texts[row], truncation=True, max_length=16)["input_ids"]
        assert lengths[row] == len(expected)
        assert ids[row, : lengths[row]].tolist() == expected
        assert (ids[row, lengths[row]:] == tokenizer.pad_token_id).all()
    again = dataset.token_cache(model_dir, 16, "title", "title", progress=False)
    assert again.directory == cache.directory  # built once, then reused
    input_ids, mask = cache.batch("test", np.array([0, 17]))
    assert (input_ids.shape[1] == max(lengths[0], lengths[17])
            and mask.sum().item() == lengths[0] + lengths[17])


def test_taking_spread_rows_reads_them_without_keeping_the_file_resident(cooking_prepared, tmp_path,
                                                                         monkeypatch):
    """A shard's labels (every 4th row, in any order, with repeats) come out equal to indexing the memory map,
    across read windows; and from a large file the reader holds those rows and a window, not the file."""
    from xmc.data import tokens

    cache = PreparedDataset(cooking_prepared).token_cache(resolve_model_dir("default"), 16, "title", "title",
                                                          progress=False)
    monkeypatch.setattr(tokens, "TAKE_WINDOW_BYTES", 64 * 16 * 4)  # 64 rows a window: many windows
    ids, lengths = cache.arrays("test")
    rows = np.concatenate([np.arange(2999, 0, -4), [5, 5, 0]])
    taken_ids, taken_lengths = cache.take("test", rows)
    assert np.array_equal(taken_ids, ids[rows]) and np.array_equal(taken_lengths, lengths[rows])
    assert not isinstance(taken_ids, np.memmap)

    # in a fresh interpreter: this process's heap, shaped by every test before this one, stays out of it
    big = tmp_path / "big"
    big.mkdir()
    (big / "meta.json").write_text(json.dumps({"max_len": 64, "pad_id": 0}))
    rng = np.random.default_rng(0)
    file_ids = np.lib.format.open_memmap(big / "labels.ids.npy", mode="w+", dtype=np.int32,
                                         shape=(1_000_000, 64))  # 244 MiB
    for first in range(0, 1_000_000, 100_000):
        file_ids[first:first + 100_000] = rng.integers(0, 30000, (100_000, 64), dtype=np.int32)
    file_ids.flush()
    del file_ids
    np.save(big / "labels.len.npy", np.full(1_000_000, 64, dtype=np.int32))
    proc = subprocess.run([sys.executable, "-c", TAKE_PROBE, str(big)], capture_output=True, text=True,
                          check=True, cwd=REPO)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if report is None:
        pytest.skip("this kernel does not let a process reset its peak memory mark")
    assert report["ends"] == np.load(big / "labels.ids.npy", mmap_mode="r")[[3, 999_999]].tolist()
    # its quarter (61 MiB), a read window, the row order and the lengths file: far under the file's 244 MiB
    # that a memory-mapped read of every 4th row keeps resident
    assert report["grew_mib"] < 244 / 4 + 50, report


TAKE_PROBE = r"""
import json, sys
import numpy as np
from xmc.data.tokens import TokenCache
from xmc.memory import PhaseMeter, resident_mib
meter = PhaseMeter()
if not meter.resettable:
    print(json.dumps(None))
    sys.exit(0)
with meter.phase("take"):
    base = resident_mib()
    taken, _ = TokenCache(sys.argv[1]).take("labels", np.arange(3, 1_000_000, 4))
print(json.dumps({"grew_mib": meter.take()["take"]["peak_rss_mib"] - base, "ends": taken[[0, -1]].tolist()}))
"""


MEMORY_PROBE = r"""
import json, sys
from xmc.data.prepare import prepare_dataset
def status_mb(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) / 1024
prepare_dataset(sys.argv[1], sys.argv[2])          # warm-up: loads code pages, Arrow and gzip machinery
with open('/proc/self/clear_refs', 'w') as handle:  # "5" resets the peak-RSS mark (VmHWM) to the current RSS
    handle.write('5')
before = status_mb('VmRSS')
manifest, _ = prepare_dataset(sys.argv[3], sys.argv[4])
print(json.dumps({"rss_before_mb": before, "peak_mb": status_mb('VmHWM'), "counts": manifest["counts"]}))
"""


def test_preparing_wordnet_streams(tmp_path, cooking_source):
    """Peak memory growth stays well under 3x the uncompressed input (27 MB for wordnet)."""
    source = shared_set("wordnet-reverse-dictionary")
    uncompressed_mb = sum(len(gzip.open(p).read()) for p in source.glob("*.json.gz")) / 2**20
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(cooking_source), str(tmp_path / "warm"),
                           str(source), str(tmp_path / "wordnet")], capture_output=True, text=True,
                          check=True, cwd=REPO)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["counts"] == {"train": 100011, "test": 17648, "labels": 147306}
    growth = report["peak_mb"] - report["rss_before_mb"]
    assert growth < 3 * uncompressed_mb, (growth, uncompressed_mb)
    assert growth < uncompressed_mb, (growth, uncompressed_mb)  # "well under": not even 1x
