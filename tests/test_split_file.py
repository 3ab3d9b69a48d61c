"""A folder's split file is the user's: used exactly as written, checked row by row, never overwritten."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from clipft_utils import data as D
from clipft_utils.course.cli import main as cli
from clipft_utils.datasets import get_dataset
from clipft_utils.datasets.base import SplitSpec
from clipft_utils.errors import DatasetError, DatasetWarning
from _helpers import make_image_folder as make


@pytest.fixture
def written(tmp_path):
    """(folder, its split file) after a first check drew and wrote the split: 2 classes x 5 images."""
    root = make(tmp_path / "imgs", {"a": 5, "b": 5})
    ds = get_dataset(str(root))
    ds.check()
    return root, ds.split_file


def edit(path, line: int, text: str | None) -> None:
    """Replace (or with None delete) 1-based ``line`` of ``path``."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


BAD_ROWS = {
    "missing file": (2, "a/nope.png,a,train", "'a/nope.png' is not an image of this folder"),
    "escaping path": (2, "../../../../etc/passwd,a,train", "leads outside"),
    "absolute path": (2, "/etc/passwd,a,train", "leads outside"),
    "short row": (3, "a/1.png,a", "2 field(s)"),
    "unknown split": (3, "a/1.png,a,Test", "unknown split 'Test'"),
    "unbalanced quote": (4, '"a/2.png,a,test', "a quote that never closes"),
    "deleted header": (1, None, "not the header 'path,class,split'"),
    "class disagrees with folder": (3, "a/1.png,b,train", "is in the class folder 'a' but the row says class 'b'"),
    "listed twice": (3, None, "is listed again"),
    "missing column": (1, "split,PATH,notes", "has no column 'class'"),
    "column twice": (1, "path,class,split,Split", "names the column 'split' twice"),
    "field too many": (3, "a/1.png,a,train,extra", "4 field(s)"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_a_bad_row_is_an_error_naming_the_file_line_and_fix_and_the_file_is_kept(written, kind):
    root, path = written
    line, text, message = BAD_ROWS[kind]
    if kind == "listed twice":
        lines = path.read_text().splitlines()
        text = lines[1]
    edit(path, line, text)
    before = path.read_bytes()
    with pytest.raises(DatasetError, match=re.escape(message)) as err:
        D.get_split(str(root), "train", 16, (0.5,) * 3, (0.5,) * 3)   # before any decoding
    msg = str(err.value)
    assert str(path) in msg and f"line {line}" in msg and "Fix:" in msg, msg
    assert path.read_bytes() == before and not list(path.parent.glob("*.bak-*"))


def test_columns_are_read_by_name_in_any_order_and_other_columns_are_said_once_and_kept(written):
    """A spreadsheet's export: reordered, capitalised columns and a column of notes is a valid split file."""
    import csv
    root, path = written
    before = {s: get_dataset(str(root)).index(s).files for s in D.SPLITS}
    rows = list(csv.reader(path.read_text().splitlines()))
    path.write_text("\n".join([" Split,notes,PATH,Class"] + [f"{s},note {i},{p},{c}" for i, (p, c, s)
                                                                 in enumerate(rows[1:])]) + "\n")
    written_bytes = path.read_bytes()
    with pytest.warns(DatasetWarning, match="left the column\\(s\\) 'notes' alone") as caught:
        ds = get_dataset(str(root))
        ds.check()
    assert len([w for w in caught if "notes" in str(w.message)]) == 1                  # said once
    assert {s: ds.index(s).files for s in D.SPLITS} == before and path.read_bytes() == written_bytes
    Image.new("RGB", (20, 24)).save(root / "b" / "new.png")
    with pytest.warns(DatasetWarning, match="1 new image"):
        get_dataset(str(root)).check()
    lines = path.read_text().splitlines()
    assert lines[0] == " Split,notes,PATH,Class" and set(written_bytes.decode().splitlines()) < set(lines)
    assert any(line.endswith(",,b/new.png,b") for line in lines)                       # in the user's columns


def test_non_utf8_bytes_name_the_line_and_the_fix(written):
    root, path = written
    path.write_bytes(path.read_bytes().replace(b"a/1.png", b"a/\xe91.png"))
    line = next(i for i, row in enumerate(path.read_bytes().split(b"\n"), 1) if b"\xe9" in row)
    with pytest.raises(DatasetError, match=f"line {line}: byte 0xe9 is not UTF-8.*Fix: save the file as UTF-8"):
        get_dataset(str(root)).check()


def test_a_valid_edit_is_used_as_written_and_the_file_bytes_never_change(written):
    root, path = written
    lines = path.read_text().splitlines()
    i = next(i for i, row in enumerate(lines) if row.startswith("a/") and row.endswith(",train"))
    moved = lines[i].split(",")[0]
    lines[i] = f"{moved},a,test"          # move one image from train to test
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    ds = get_dataset(str(root))
    assert root / moved in ds.index("test").files and root / moved not in ds.index("train").files
    D.get_split(ds, "test", 16, (0.5,) * 3, (0.5,) * 3)
    assert cli(["data", "check", str(root)]) == 0
    assert path.read_bytes() == before and not list(path.parent.glob("*.bak-*"))


def test_new_images_are_added_beside_a_backup_of_the_users_file_and_said_once(written):
    root, path = written
    edit(path, 2, path.read_text().splitlines()[1].rsplit(",", 1)[0] + ",val")   # an edit of the user's
    before = path.read_bytes()
    Image.new("RGB", (20, 24)).save(root / "b" / "new.png")
    with pytest.warns(DatasetWarning, match=r"1 new image\(s\).*your rows kept as written.*bak-") as caught:
        ds = get_dataset(str(root))
        ds.check()
    assert len(caught) == 1
    backup, = path.parent.glob("split.csv.bak-*")
    assert backup.read_bytes() == before                                   # the user's file, byte for byte
    assert path.read_text().startswith(before.decode()[:30]) and "b/new.png,b," in path.read_text()
    assert set(before.decode().splitlines()) < set(path.read_text().splitlines())   # every row of theirs kept


def test_a_removed_split_leaves_a_class_without_images_is_refused(written):
    root, path = written
    rows = path.read_text().splitlines()
    path.write_text("\n".join(r if not (r.startswith("a/") and r.endswith(",val")) else r[:-3] + "train"
                              for r in rows) + "\n")
    with pytest.raises(DatasetError, match="leaves classes without images: 'a' in val.*Fix"):
        get_dataset(str(root)).check()


# ---- THE rule: one function says how many images a class needs ----------------------------------------------
@pytest.mark.parametrize("split", [None, [3, 1], [0.5, 0.25, 0.25], ["rest", 2, 2]])
def test_the_smallest_accepted_folder_passes_and_one_image_fewer_fails_naming_class_count_and_fix(tmp_path, split):
    need = SplitSpec.parse(split).minimum()
    ok = make(tmp_path / "ok", {"a": need, "b": need + 2})
    ds = get_dataset(str(ok), split=split)
    ds.check()
    assert all((np.bincount(ds.labels(s), minlength=2) >= 1).all() for s in D.SPLITS)
    short = make(tmp_path / "short", {"a": need + 2, "b": need - 1})
    with pytest.raises(DatasetError) as err:
        get_dataset(str(short), split=split).check()
    msg = str(err.value)
    assert f"Class 'b' has {need - 1} readable image(s)" in msg and f"at least {need} images per class" in msg
    assert "Fix: add 1 image(s) to 'b'" in msg


def test_the_readme_states_the_same_rule():
    from clipft_utils.paths import PROJECT_ROOT
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert SplitSpec().rule() in " ".join(readme.split()) and f"{SplitSpec()}" in readme
