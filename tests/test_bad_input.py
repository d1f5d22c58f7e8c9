"""Bad input is named, never skipped: each case stops preparation with one line FILE:LINE: what was
expected, and the prepare job turns it into that line on stderr and exit status 2.

The corpus starts from a real subset of cooking-stackexchange (LF layout) or its sparse-layout copy and
breaks one thing per case.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from xmc.data.errors import DataError
from xmc.data.prepare import prepare_dataset

from conftest import read_lines, run_job, write_lf_subset, write_lines

N_TRAIN, N_TEST = 40, 20


def edit_line(path: Path, lineno: int, edit: Callable[[dict], object]) -> None:
    """Replace 1-based line ``lineno`` of a json.gz file by ``edit(obj)`` (a dict is dumped, a str kept)."""
    lines = read_lines(path)
    new = edit(json.loads(lines[lineno - 1]))
    lines[lineno - 1] = new if isinstance(new, str) else json.dumps(new)
    write_lines(path, lines)


def with_field(key, value):
    return lambda obj: {**obj, key: value}


def without_field(key):
    return lambda obj: {k: v for k, v in obj.items() if k != key}


def lf_case(file: str, lineno: int, edit) -> Callable[[Path], None]:
    return lambda src: edit_line(src / file, lineno, edit)


def truncate_gzip(src: Path) -> None:
    data = (src / "tst.json.gz").read_bytes()
    (src / "tst.json.gz").write_bytes(data[: len(data) // 2])


def not_gzip(src: Path) -> None:
    (src / "trn.json.gz").write_bytes(b"this is not gzip data\n")


def remove_labels(src: Path) -> None:
    (src / "lbl.json.gz").unlink()


def filter_row_out_of_range(src: Path) -> None:
    (src / "filter_labels_test.txt").write_text(f"0 5\n{N_TEST} 3\n")


def filter_label_out_of_range(src: Path) -> None:
    (src / "filter_labels_test.txt").write_text("0 5\n1 2\n2 736\n")


def filter_garbage(src: Path) -> None:
    (src / "filter_labels_test.txt").write_text("0 5\n1\n")


def to_sparse(src: Path) -> None:
    """Rewrite the LF files of ``src`` as the sparse layout (and remove the LF files)."""
    (src / "raw").mkdir()
    labels = [json.loads(line)["title"] for line in read_lines(src / "lbl.json.gz")]
    (src / "raw" / "Y.txt").write_text("".join(t + "\n" for t in labels))
    for split in ("trn", "tst"):
        points = [json.loads(line) for line in read_lines(src / f"{split}.json.gz")]
        rows = "".join(" ".join(f"{i}:1.0" for i in p["target_ind"]) + "\n" for p in points)
        (src / f"{split}_X_Y.txt").write_text(f"{len(points)} {len(labels)}\n{rows}")
        (src / "raw" / f"{split}_X.txt").write_text("".join(p["title"] + "\n" for p in points))
        (src / f"{split}.json.gz").unlink()
    (src / "lbl.json.gz").unlink()


def sparse_case(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        to_sparse(src)
        mutate(src)
    return apply


def replace_text(relpath: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        path = src / relpath
        text = path.read_text()
        assert old in text, (relpath, old)
        path.write_text(text.replace(old, new, count))
    return apply


def sparse_rows_fewer_than_header(src: Path) -> None:
    lines = (src / "trn_X_Y.txt").read_text().splitlines()
    (src / "trn_X_Y.txt").write_text("\n".join(lines[:-1]) + "\n")


def sparse_rows_more_than_header(src: Path) -> None:
    lines = (src / "tst_X_Y.txt").read_text().splitlines()
    (src / "tst_X_Y.txt").write_text("\n".join(lines + ["3:1.0"]) + "\n")


def sparse_label_line(src: Path) -> None:
    lines = (src / "trn_X_Y.txt").read_text().splitlines()
    lines[3] = "12:1.0 736:1.0"
    (src / "trn_X_Y.txt").write_text("\n".join(lines) + "\n")


def sparse_missing_text(src: Path) -> None:
    lines = (src / "raw" / "tst_X.txt").read_text().splitlines()
    (src / "raw" / "tst_X.txt").write_text("\n".join(lines[:-2]) + "\n")


def sparse_empty_text(src: Path) -> None:
    lines = (src / "raw" / "trn_X.txt").read_text().splitlines()
    lines[6] = "   "
    (src / "raw" / "trn_X.txt").write_text("\n".join(lines) + "\n")


# (case id, mutation, file named in the error, 1-based line or None, fragment of "what was expected")
CASES = [
    ("malformed-json", lf_case("trn.json.gz", 3, lambda o: json.dumps(o)[:-5]), "trn.json.gz", 3,
     "malformed JSON"),
    ("not-an-object", lf_case("tst.json.gz", 4, lambda o: "[1, 2]"), "tst.json.gz", 4,
     "expected a JSON object"),
    ("missing-title", lf_case("tst.json.gz", 2, without_field("title")), "tst.json.gz", 2,
     "missing field 'title'; expected a non-empty string"),
    ("empty-title", lf_case("trn.json.gz", 5, with_field("title", "  ")), "trn.json.gz", 5,
     "empty 'title'; expected a non-empty string"),
    ("empty-label-title", lf_case("lbl.json.gz", 9, with_field("title", "")), "lbl.json.gz", 9,
     "empty 'title'"),
    ("title-not-a-string", lf_case("trn.json.gz", 7, with_field("title", 42)), "trn.json.gz", 7,
     "field 'title' must be a string"),
    ("missing-uid", lf_case("trn.json.gz", 8, without_field("uid")), "trn.json.gz", 8, "missing field 'uid'"),
    ("missing-targets", lf_case("trn.json.gz", 9, without_field("target_ind")), "trn.json.gz", 9,
     "missing field 'target_ind'"),
    ("label-out-of-range", lf_case("trn.json.gz", 4, with_field("target_ind", [3, 736])), "trn.json.gz", 4,
     "target_ind value 736 is out of range; expected a label index in [0, 736)"),
    ("label-negative", lf_case("tst.json.gz", 1, with_field("target_ind", [-1])), "tst.json.gz", 1,
     "target_ind value -1 is negative"),
    ("label-float", lf_case("trn.json.gz", 2, with_field("target_ind", [1.5])), "trn.json.gz", 2,
     "target_ind value 1.5 is not an integer"),
    ("label-string", lf_case("trn.json.gz", 6, with_field("target_ind", ["3"])), "trn.json.gz", 6,
     "target_ind value '3' is not an integer"),
    ("targets-not-a-list", lf_case("trn.json.gz", 10, with_field("target_ind", 4)), "trn.json.gz", 10,
     "field 'target_ind' must be a list"),
    ("rel-length-mismatch",
     lf_case("tst.json.gz", 3, with_field("target_rel", [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])),
     "tst.json.gz", 3, "field 'target_rel' must be a list as long as 'target_ind'"),
    ("empty-line", lf_case("trn.json.gz", 11, lambda o: ""), "trn.json.gz", 11, "empty line"),
    ("missing-label-file", remove_labels, "lbl.json.gz", None, "file not found"),
    ("truncated-gzip", truncate_gzip, "tst.json.gz", "any", "unreadable gzip data"),
    ("not-gzip", not_gzip, "trn.json.gz", 1, "unreadable gzip data"),
    ("filter-row-out-of-range", filter_row_out_of_range, "filter_labels_test.txt", 2,
     f"row {N_TEST} is out of range; expected a row in [0, {N_TEST})"),
    ("filter-label-out-of-range", filter_label_out_of_range, "filter_labels_test.txt", 3,
     "label 736 is out of range"),
    ("filter-malformed", filter_garbage, "filter_labels_test.txt", 2, "expected 'row label'"),
    ("sparse-header-rows-more",
     sparse_case(replace_text("trn_X_Y.txt", f"{N_TRAIN} 736", f"{N_TRAIN + 1} 736")),
     "trn_X_Y.txt", N_TRAIN + 2, f"file ends after {N_TRAIN} rows but the header says {N_TRAIN + 1}"),
    ("sparse-header-rows-fewer", sparse_case(sparse_rows_more_than_header), "tst_X_Y.txt", N_TEST + 2,
     f"more rows than the header's {N_TEST}"),
    ("sparse-rows-missing", sparse_case(sparse_rows_fewer_than_header), "trn_X_Y.txt", N_TRAIN + 1,
     f"file ends after {N_TRAIN - 1} rows but the header says {N_TRAIN}"),
    ("sparse-header-labels", sparse_case(replace_text("tst_X_Y.txt", f"{N_TEST} 736", f"{N_TEST} 700")),
     "tst_X_Y.txt", 1, "header says 700 labels but the label file has 736"),
    ("sparse-bad-header", sparse_case(replace_text("trn_X_Y.txt", f"{N_TRAIN} 736", "forty 736")),
     "trn_X_Y.txt", 1, "bad header"),
    ("sparse-label-out-of-range", sparse_case(sparse_label_line), "trn_X_Y.txt", 4,
     "label 736 is out of range"),
    ("sparse-bad-pair", sparse_case(replace_text("tst_X_Y.txt", ":1.0", "=1.0")), "tst_X_Y.txt", 2,
     "expected 'label:value'"),
    ("sparse-missing-texts", sparse_case(sparse_missing_text), "tst_X.txt", N_TEST - 1, "missing text"),
    ("sparse-empty-text", sparse_case(sparse_empty_text), "trn_X.txt", 7, "empty point text"),
    ("sparse-missing-label-file", sparse_case(lambda src: (src / "raw" / "Y.txt").unlink()), "Y.txt", None,
     "file not found"),
]


@pytest.fixture
def clean_source(tmp_path, cooking_source) -> Path:
    return write_lf_subset(cooking_source, tmp_path / "src", N_TRAIN, N_TEST)


@pytest.mark.parametrize("case_id, mutate, file, line, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named(tmp_path, clean_source, case_id, mutate, file, line, expected):
    mutate(clean_source)
    out = tmp_path / "out"
    with pytest.raises(DataError) as raised:
        prepare_dataset(clean_source, out)
    message = str(raised.value)
    assert "\n" not in message
    if line is None:
        assert f"{file}: " in message, message
    elif line == "any":
        assert f"{file}:" in message and message.split(f"{file}:")[1].split(":")[0].isdigit(), message
    else:
        assert f"{file}:{line}: " in message, message
    assert expected in message, message
    assert not out.exists(), "nothing is written for bad input"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.integration
def test_the_prepare_job_reports_bad_input_in_one_line(tmp_path, clean_source):
    edit_line(clean_source / "trn.json.gz", 4, with_field("target_ind", [3, 736]))
    proc = run_job("prepare.py", "--source", str(clean_source), "--out", str(tmp_path / "out"), "--no-tokens",
                   check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (lines[0].startswith("error: ")
            and "trn.json.gz:4: target_ind value 736 is out of range" in lines[0])


def test_the_clean_corpus_prepares(tmp_path, clean_source):
    """The unmodified subset (and its sparse copy) is valid: every failure above comes from its mutation."""
    lf, _ = prepare_dataset(clean_source, tmp_path / "lf")
    to_sparse(clean_source)
    sparse, _ = prepare_dataset(clean_source, tmp_path / "sparse")
    assert lf["counts"] == sparse["counts"] == {"train": N_TRAIN, "test": N_TEST, "labels": 736}


def test_empty_titles_can_be_allowed_explicitly(tmp_path, clean_source):
    edit_line(clean_source / "trn.json.gz", 5, with_field("title", ""))
    manifest, _ = prepare_dataset(clean_source, tmp_path / "out", allow_empty_text=True)
    assert manifest["splits"]["train"]["empty_titles"] == 1 and manifest["counts"]["train"] == N_TRAIN


def test_repeated_label_is_merged_and_reported(tmp_path, clean_source):
    edit_line(clean_source / "trn.json.gz", 3,
              lambda o: {**o, "target_ind": [7, 7, 9], "target_rel": [1, 1, 1]})
    manifest, _ = prepare_dataset(clean_source, tmp_path / "out")
    stats = manifest["splits"]["train"]
    assert stats["duplicate_labels_merged"] == 1 and stats["duplicate_labels_merged_at_lines"] == [3]
    from xmc.data.dataset import PreparedDataset

    assert PreparedDataset(tmp_path / "out").label_matrix("train")[2].indices.tolist() == [7, 9]
