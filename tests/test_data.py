import json

import pandas as pd
import pytest
from conftest import SECRET, make_rows, write_csv

from medclf import MedclfError
from medclf.core.labels import check_classes, load_labeled
from medclf.core.tables import demo_data_path, read_table
from medclf.training.splits import stratified_split

OPTS = {"text_columns": None, "label_column": None, "drop_empty": False}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_every_table_format_reads_the_same_rows(tmp_path, fmt):
    rows = make_rows(3)
    frame = pd.DataFrame(rows)
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    data = load_labeled(str(path), **OPTS)
    assert data.texts == [r["text"] for r in rows]
    assert data.labels == [r["label"] for r in rows]
    assert data.text_columns == ["text"] and data.label_column == "label"


def test_integer_labels_become_strings_and_sort_numerically(tmp_path):
    path = tmp_path / "ints.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 11}) for i in range(33)), encoding="utf-8")
    data = load_labeled(str(path), **OPTS)
    assert check_classes(data.labels, source="x") == [str(i) for i in range(11)]


def test_several_text_columns_are_joined_and_columns_guessed(tmp_path):
    path = write_csv(tmp_path / "abs.csv", [
        {"condition_label": "1", "title": "Title one", "abstract": "Body one"},
        {"condition_label": "2", "title": "Title two", "abstract": ""},
    ])
    data = load_labeled(str(path), text_columns=["title", "abstract"], label_column=None, drop_empty=False)
    assert data.label_column == "condition_label"
    assert data.texts == ["Title one\nBody one", "Title two"]


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(MedclfError, match="File not found: .*nope.csv"):
        read_table(str(tmp_path / "nope.csv"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(MedclfError, match=r"Unknown file format '\.xlsx'.*\.csv"):
        read_table(str(tmp_path / "data.xlsx"))


def test_non_utf8_file_names_the_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,a\n".encode("latin-1"))
    with pytest.raises(MedclfError, match="not valid UTF-8.*iconv"):
        read_table(str(path))


def test_missing_column_lists_existing_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", make_rows(2))
    with pytest.raises(MedclfError, match="'body'.*columns are: note_id, text, label"):
        load_labeled(str(path), text_columns=["body"], label_column=None, drop_empty=False)
    with pytest.raises(MedclfError, match="Label column 'y' is not in .*note_id, text, label"):
        load_labeled(str(path), text_columns=None, label_column="y", drop_empty=False)


def test_empty_texts_are_counted_or_dropped(tmp_path):
    rows = make_rows(4)
    rows[1]["text"] = ""
    rows[5]["text"] = "   "
    path = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(MedclfError, match=r"2 empty or missing text\(s\).*rows 2, 6.*--drop-empty") as err:
        load_labeled(str(path), **OPTS)
    assert SECRET not in str(err.value)
    data = load_labeled(str(path), text_columns=None, label_column=None, drop_empty=True)
    assert len(data) == len(rows) - 2 and data.n_dropped == 2
    assert 1 not in data.rows and 5 not in data.rows


def test_one_class_is_refused():
    with pytest.raises(MedclfError, match="only one class .*'a'.*at least 2"):
        check_classes(["a", "a", "a"], source="t.csv")


def test_a_class_too_small_to_stratify_is_named():
    labels = ["a"] * 10 + ["b"] * 10 + ["rare"]
    with pytest.raises(MedclfError, match="Class 'rare' has only 1 row.*--test-data"):
        stratified_split(labels, fraction=0.2, seed=1, source="t.csv", part="test", option="--test-data")


def test_stratified_split_is_seeded_and_keeps_proportions():
    labels = ["a"] * 40 + ["b"] * 10
    keep, held = stratified_split(labels, fraction=0.2, seed=42, source="t", part="test", option="x")
    again = stratified_split(labels, fraction=0.2, seed=42, source="t", part="test", option="x")
    assert (keep, held) == again
    assert sorted(keep + held) == list(range(50))
    assert [labels[i] for i in held].count("b") == 2


def test_demo_data_is_embedded_and_big_enough():
    frame = pd.read_csv(demo_data_path())
    assert len(frame) >= 500
    assert frame["specialty"].nunique() >= 5
    assert frame["text"].str.len().min() > 20
