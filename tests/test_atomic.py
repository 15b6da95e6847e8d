import os

import pandas as pd
import pytest

from hpa_tf.atomic import (
    remove_temporaries,
    write_atomic,
    write_bytes_atomic,
    write_csv_atomic,
    write_folder_atomic,
    write_json_atomic,
)


def test_outputs_have_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.txt", b"x")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_unchanged_content_is_not_rewritten(tmp_path):
    frame = pd.DataFrame({"Id": ["a", "b"], "Target": ["0", "1 2"]})
    assert write_csv_atomic(frame, tmp_path / "f.csv")
    stamp = (tmp_path / "f.csv").stat().st_mtime_ns
    assert not write_csv_atomic(frame, tmp_path / "f.csv")
    assert (tmp_path / "f.csv").stat().st_mtime_ns == stamp
    assert (tmp_path / "f.csv").read_text() == "Id,Target\na,0\nb,1 2\n"
    assert write_json_atomic({"b": 1, "a": [1.5]}, tmp_path / "d" / "x.json")
    assert (tmp_path / "d" / "x.json").read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def fail(temp):
        temp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_temporary_names_keep_every_suffix(tmp_path):
    """Keras saves weights only to names ending in .weights.h5: the temporary keeps both suffixes."""
    seen = []
    write_atomic(tmp_path / "best.weights.h5", lambda temp: seen.append(temp.name) or temp.write_bytes(b"w"))
    assert seen[0].startswith(".best.weights.h5.") and seen[0].endswith(".tmp.weights.h5")
    assert (tmp_path / "best.weights.h5").read_bytes() == b"w"


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "index"

    def write(version):
        def fill(folder):
            (folder / "a.npy").write_text(version)
            (folder / "info.json").write_text(version)
        return fill

    write_folder_atomic(target, write("1"))
    write_folder_atomic(target, write("2"))
    assert sorted(p.name for p in target.iterdir()) == ["a.npy", "info.json"]
    assert (target / "info.json").read_text() == "2"

    def fail(folder):
        (folder / "a.npy").write_text("3")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomic(target, fail)
    assert (target / "a.npy").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary folder left


def test_temporaries_of_a_killed_run_are_removed(tmp_path):
    """What a SIGKILL leaves: a temporary file of a checkpoint and a temporary folder of an index."""
    (tmp_path / ".best.weights.h5.ab12cd34.tmp.weights.h5").write_bytes(b"half")
    (tmp_path / ".index_ext.x9y8z7w6.tmp").mkdir()
    (tmp_path / ".index_ext.x9y8z7w6.tmp" / "references.npy").write_bytes(b"half")
    (tmp_path / "best.weights.h5").write_bytes(b"kept")
    removed = remove_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".best.weights.h5.ab12cd34.tmp.weights.h5",
                                               ".index_ext.x9y8z7w6.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5"]
