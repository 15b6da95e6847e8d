import numpy as np
import pytest

from hpa_tf.labels import (
    KAGGLE_TRAIN_COUNTS,
    LABEL_NAMES,
    NUM_CLASSES,
    format_target,
    multihot_to_target,
    parse_target,
    target_to_multihot,
    targets_to_matrix,
)


def test_label_names_follow_the_spec_order():
    assert NUM_CLASSES == 28 == len(LABEL_NAMES) == len(set(LABEL_NAMES))
    assert LABEL_NAMES[0] == "Nucleoplasm"
    assert LABEL_NAMES[18] == "Microtubule organizing center"
    assert LABEL_NAMES[25] == "Cytosol"
    assert LABEL_NAMES[27] == "Rods & rings"


def test_kaggle_counts_have_the_known_long_tail():
    assert len(KAGGLE_TRAIN_COUNTS) == NUM_CLASSES
    order = np.argsort(KAGGLE_TRAIN_COUNTS)[::-1]
    assert list(order[:4]) == [0, 25, 21, 2]  # Nucleoplasm, Cytosol, Plasma membrane, Nucleoli
    assert list(order[-3:]) == [10, 15, 27]  # Lysosomes, Microtubule ends, Rods & rings


def test_parse_target_sorts_and_deduplicates():
    assert parse_target("16 0 16 7") == [0, 7, 16]
    assert parse_target("  5 ") == [5]
    assert parse_target("") == []


@pytest.mark.parametrize("bad, token", [("0 28", "28"), ("-1", "-1"), ("3 a", "a"), ("1.5", "1.5")])
def test_parse_target_names_the_offending_token(bad, token):
    with pytest.raises(ValueError, match=f"'{token}'"):
        parse_target(bad)


def test_parse_target_rejects_non_strings():
    with pytest.raises(ValueError, match="string"):
        parse_target(5)


def test_multihot_round_trip():
    vector = target_to_multihot("25 0 2")
    assert vector.dtype == np.float32 and vector.shape == (28,)
    assert np.flatnonzero(vector).tolist() == [0, 2, 25]
    assert multihot_to_target(vector) == "0 2 25"
    assert format_target([27, 3, 3]) == "3 27"
    with pytest.raises(ValueError, match="28"):
        format_target([28])
    with pytest.raises(ValueError, match="shape"):
        multihot_to_target(np.zeros(27))


def test_targets_to_matrix():
    matrix = targets_to_matrix(["0", "1 2", "27"])
    expected = np.zeros((3, 28), np.float32)
    expected[0, 0] = expected[1, 1] = expected[1, 2] = expected[2, 27] = 1
    np.testing.assert_array_equal(matrix, expected)
    assert targets_to_matrix([]).shape == (0, 28)
