import os

import pandas as pd
import pytest

from hpa_tf.atomic import write_atomic, write_bytes_atomic, write_csv_atomic, write_json_atomic


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
