"""Tests of hpa_tf.data.splits (spec 3.1-3.4) on small synthetic meta tables built here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import train_test_split

from hpa_tf.data import splits
from hpa_tf.labels import KAGGLE_TRAIN_COUNTS, LABEL_NAMES, format_target, parse_target, targets_to_matrix

N_KAGGLE_PLAIN = 900
N_ANTIBODIES = 144  # group sizes cycle 1..12 -> 936 HPAv18 images
N_EQUAL = 80
N_CONFLICT = 30


def _draw_target(rng: np.random.Generator) -> set[int]:
    """1-3 classes drawn with the Kaggle class frequencies: a long tail of rare classes."""
    weights = np.asarray(KAGGLE_TRAIN_COUNTS, dtype=float)
    size = int(rng.choice([1, 1, 1, 2, 2, 3]))
    return set(rng.choice(len(weights), size=size, replace=False, p=weights / weights.sum()).tolist())


def _meta(ids: list[str], targets: list[set[int]], external: bool) -> pd.DataFrame:
    """A meta table as spec 1.4: Id, Target, 28 one-hot int columns, External."""
    strings = [format_target(t) for t in targets]
    table = pd.DataFrame({"Id": ids, "Target": strings})
    onehot = targets_to_matrix(strings).astype(int)
    for i, name in enumerate(LABEL_NAMES):
        table[name] = onehot[:, i]
    table["External"] = external
    return table


def _build(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # HPAv18: antibody numbers whose string order differs from their numeric order.
    numbers = rng.choice(np.arange(100, 60000), size=N_ANTIBODIES, replace=False)
    sizes = [(i % 12) + 1 for i in range(N_ANTIBODIES)]
    ext_ids, ext_targets, ext_antibody = [], [], []
    for number, size in zip(numbers, sizes, strict=True):
        base = _draw_target(rng)
        plate = int(rng.integers(1000, 2000))
        for field in range(size):
            target = set(base)
            if rng.uniform() < 0.2:  # images of one antibody need not share a Target
                target |= _draw_target(rng)
            ext_ids.append(f"{number}_{plate}_{'ABCDEFGH'[field % 8]}{field // 8 + 1}_{field + 1}")
            ext_targets.append(target)
            ext_antibody.append(int(number))
    order = np.argsort(ext_ids)  # the reference's CSV is sorted by Id
    ext_ids = [ext_ids[i] for i in order]
    ext_targets = [ext_targets[i] for i in order]
    ext_antibody = [ext_antibody[i] for i in order]
    external = _meta(ext_ids, ext_targets, True)
    external["antibody"] = ext_antibody
    codes = {s: i for i, s in enumerate(sorted({str(a) for a in ext_antibody}))}  # LabelEncoder on strings
    external["antibody_code"] = [codes[str(a)] for a in ext_antibody]

    # Kaggle train: plain images plus twins of HPAv18 images (equal or different labels).
    picked = rng.permutation(len(ext_ids))[: N_EQUAL + N_CONFLICT]
    k_ids = [f"{i:08x}-{int(rng.integers(16**4)):04x}-kaggle" for i in range(N_KAGGLE_PLAIN)]
    k_targets = [_draw_target(rng) for _ in range(N_KAGGLE_PLAIN)]
    pairs = []
    for n, e in enumerate(picked):
        twin = f"twin{n:04d}-{int(rng.integers(16**4)):04x}"
        target = set(ext_targets[e])
        if n >= N_EQUAL:  # different labels: toggle one class
            target ^= {int(rng.integers(28))}
            target = target or {0, 25} - set(ext_targets[e]) or {1}
        k_ids.append(twin)
        k_targets.append(target)
        pairs.append((twin, ext_ids[e]))
    # One Kaggle image in two pairs (its first pair decides its antibody in the tr split), and one HPAv18
    # image with an equal-label twin that also has a different-label twin (so "clean" removes it).
    pairs.append((pairs[0][0], ext_ids[picked[N_EQUAL]]))
    other = next(i for i in range(N_KAGGLE_PLAIN) if k_targets[i] != ext_targets[picked[1]])
    pairs.append((k_ids[other], pairs[1][1]))
    kaggle_order = rng.permutation(len(k_ids))
    train = _meta([k_ids[i] for i in kaggle_order], [k_targets[i] for i in kaggle_order], False)
    matches = pd.DataFrame(pairs, columns=["Train", "Extra"]).sample(frac=1.0, random_state=1)
    matches = matches.reset_index(drop=True)
    for c in ("SimR", "SimG", "SimB"):
        matches[c] = rng.integers(0, 13, size=len(matches))
    return {"train": train, "external": external, "matches": matches}


@pytest.fixture(scope="module")
def data() -> dict:
    return _build()


@pytest.fixture(scope="module")
def folds(data) -> list:
    return splits.random_ext_folds(data["train"], data["external"])


@pytest.fixture(scope="module")
def target_sets(data) -> dict[str, frozenset]:
    both = pd.concat([data["train"], data["external"]])
    return {i: frozenset(parse_target(t)) for i, t in zip(both["Id"], both["Target"], strict=True)}


# ---------------------------------------------------------------------------------------------- 3.1 folds
def test_folds_partition_every_row_once(data, folds):
    all_ids = set(data["train"]["Id"]) | set(data["external"]["Id"])
    assert len(folds) == 5
    valid_ids = [list(v["Id"]) for _, v in folds]
    assert sum(len(v) for v in valid_ids) == len(all_ids)
    assert set().union(*map(set, valid_ids)) == all_ids
    for k, (train, valid) in enumerate(folds):
        assert train["Id"].is_unique and valid["Id"].is_unique
        assert set(train["Id"]) == all_ids - set(valid["Id"]), k
        assert len(train) + len(valid) == len(all_ids)
        for part in (train, valid):  # the Kaggle part first, then the external part
            ext = part["External"].to_numpy()
            assert not ext[: (~ext).sum()].any() and ext[(~ext).sum():].all()


def test_folds_split_parts_independently(data, folds):
    for meta, external in ((data["train"], False), (data["external"], True)):
        kfold = MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=100)
        expected = list(kfold.split(meta, meta[LABEL_NAMES].values))
        for k, (train, valid) in enumerate(folds):
            got_train = train.loc[train["External"] == external, "Id"].tolist()
            got_valid = valid.loc[valid["External"] == external, "Id"].tolist()
            assert got_train == meta["Id"].iloc[expected[k][0]].tolist()
            assert got_valid == meta["Id"].iloc[expected[k][1]].tolist()
    # The Kaggle folds do not change when the external table does.
    half = data["external"].iloc[: len(data["external"]) // 2].reset_index(drop=True)
    other = splits.random_ext_folds(data["train"], half)
    for (_, valid_a), (_, valid_b) in zip(folds, other, strict=True):
        kaggle_a, kaggle_b = valid_a[~valid_a["External"]], valid_b[~valid_b["External"]]
        assert kaggle_a["Id"].tolist() == kaggle_b["Id"].tolist()


def test_fold_columns_and_values(data, folds):
    ext = data["external"].set_index("Id")
    for train, valid in folds:
        for part in (train, valid):
            assert list(part.columns) == ["Id", "Target", "External", "antibody", "antibody_code",
                                          *LABEL_NAMES]
            assert part["External"].dtype == bool
            kaggle, external = part[~part["External"]], part[part["External"]]
            assert kaggle["antibody"].isna().all() and kaggle["antibody_code"].isna().all()
            assert (external["antibody"].to_numpy() == ext.loc[external["Id"], "antibody"].to_numpy()).all()
            assert (external["antibody_code"].to_numpy()
                    == ext.loc[external["Id"], "antibody_code"].to_numpy()).all()
            np.testing.assert_array_equal(part[LABEL_NAMES].to_numpy(), targets_to_matrix(part["Target"]))
    csv_line = folds[0][1].iloc[[0, -1]].to_csv(index=False).splitlines()
    assert ",False,,," in csv_line[1] and ",True,,," not in csv_line[2]  # empty antibody fields for Kaggle


def test_fold_label_frequencies_match_the_whole(data, folds):
    spreads = {}
    for name, meta, external in (("kaggle", data["train"], False), ("external", data["external"], True)):
        counts = meta[LABEL_NAMES].sum()
        classes = [c for c in LABEL_NAMES if counts[c] >= 20]
        assert len(classes) >= 8
        whole = meta[classes].mean()
        spreads[name] = max(
            float((valid.loc[valid["External"] == external, classes].mean() - whole).abs().max())
            for _, valid in folds
        )
    print(f"max |valid-fold class rate - whole class rate| (classes >= 20 images): {spreads}")
    assert max(spreads.values()) < 0.05


def test_folds_deterministic(data, folds):
    again = splits.random_ext_folds(data["train"].copy(), data["external"].copy())
    for (train_a, valid_a), (train_b, valid_b) in zip(folds, again, strict=True):
        pd.testing.assert_frame_equal(train_a, train_b)
        pd.testing.assert_frame_equal(valid_a, valid_b)
    other = splits.random_ext_folds(data["train"], data["external"], seed=7)
    assert other[0][1]["Id"].tolist() != folds[0][1]["Id"].tolist()


def test_folds_reject_inconsistent_one_hot_and_duplicate_ids(data):
    bad = data["train"].copy()
    bad.loc[3, LABEL_NAMES[5]] = 1 - bad.loc[3, LABEL_NAMES[5]]
    with pytest.raises(ValueError, match=bad.loc[3, "Id"]):
        splits.random_ext_folds(bad, data["external"])
    dup = pd.concat([data["train"], data["train"].iloc[[7]]], ignore_index=True)
    with pytest.raises(ValueError, match="duplicated Ids"):
        splits.random_ext_folds(dup, data["external"])


# ------------------------------------------------------------------------------------ 3.2 noleak / clean
@pytest.fixture(scope="module")
def clean(data, folds):
    return splits.noleak_clean_folds(folds, data["matches"], data["train"], data["external"])


def _pairs(data, target_sets, equal: bool) -> list[tuple[str, str]]:
    return [(t, e) for t, e in zip(data["matches"]["Train"], data["matches"]["Extra"], strict=True)
            if (target_sets[t] == target_sets[e]) == equal]


def test_clean_drops_conflicting_twins_everywhere(data, folds, clean, target_sets):
    conflicting = {e for _, e in _pairs(data, target_sets, equal=False)}
    assert len(conflicting) >= N_CONFLICT // 2
    for (train, valid), (orig_train, orig_valid) in zip(clean, folds, strict=True):
        assert not conflicting & set(train["Id"]) and not conflicting & set(valid["Id"])
        # nothing else leaves train; the Kaggle twins themselves stay
        assert train["Id"].tolist() == [i for i in orig_train["Id"] if i not in conflicting]
        pd.testing.assert_frame_equal(
            train, orig_train[~orig_train["Id"].isin(conflicting)].reset_index(drop=True))
        assert set(orig_valid.loc[~orig_valid["External"], "Id"]) == set(valid.loc[~valid["External"], "Id"])
    # The HPAv18 image with an equal twin and a different-label twin is gone too.
    both = {e for _, e in _pairs(data, target_sets, equal=True)} & conflicting
    assert both and not any(both & set(t["Id"]) | both & set(v["Id"]) for t, v in clean)


def test_noleak_drops_valid_twin_of_a_train_image(data, folds, clean, target_sets):
    conflicting = {e for _, e in _pairs(data, target_sets, equal=False)}
    dropped = kept = 0
    for t, e in _pairs(data, target_sets, equal=True):
        if e in conflicting:
            continue
        for k, ((train, valid), (orig_train, orig_valid)) in enumerate(zip(clean, folds, strict=True)):
            if e not in set(orig_valid["Id"]):
                assert e in set(train["Id"]), (e, k)  # equal-label twins stay in train
                continue
            if t in set(orig_train["Id"]):
                assert e not in set(valid["Id"]), (t, e, k)
                dropped += 1
            else:  # both twins in fold k's valid: no leak, so it stays
                assert e in set(valid["Id"]), (t, e, k)
                kept += 1
    assert dropped >= 20 and kept >= 3, (dropped, kept)


def test_noleak_does_not_clean_the_reverse_direction(data, clean, target_sets):
    reverse = 0
    for t, e in _pairs(data, target_sets, equal=True):
        for train, valid in clean:
            if t in set(valid["Id"]) and e in set(train["Id"]):
                reverse += 1  # Kaggle valid image with its equal-label twin in train: left as is
    assert reverse >= 5


def test_noleak_rejects_unknown_match_ids(data, folds):
    unknown = pd.DataFrame({"Train": ["nope"], "Extra": [data["external"]["Id"][0]]})
    bad = pd.concat([data["matches"], unknown], ignore_index=True)
    with pytest.raises(ValueError, match="nope"):
        splits.noleak_clean_folds(folds, bad, data["train"], data["external"])


# ------------------------------------------------------------------------------------ 3.3 antibody split
@pytest.fixture(scope="module")
def ab_split(data):
    return splits.antibody_split(data["external"])


def test_antibody_split_sizes(data, ab_split):
    train, valid = ab_split
    ext = data["external"]
    assert list(train.columns) == ["Id", "External", "Target", "antibody", "antibody_code"]
    assert list(valid.columns) == list(train.columns)
    assert not set(train["Id"]) & set(valid["Id"])
    assert sorted(train["Id"].tolist() + valid["Id"].tolist()) == sorted(ext["Id"])
    assert set(train["antibody"]) == set(ext["antibody"])
    sizes = ext.groupby("antibody").size()
    assert set(sizes) == set(range(1, 13))
    n_train = train.groupby("antibody").size()
    n_valid = valid.groupby("antibody").size().reindex(sizes.index, fill_value=0)
    assert (n_valid == sizes // 4).all()
    assert (n_train == sizes - sizes // 4).all()
    assert train["antibody"].is_monotonic_increasing and valid["antibody"].is_monotonic_increasing


def test_antibody_split_equals_train_test_split_per_group(data, ab_split):
    train, valid = ab_split
    cols = ["Id", "External", "Target", "antibody", "antibody_code"]
    for antibody, group in data["external"][cols].groupby("antibody"):
        if len(group) < 4:
            continue
        exp_train, exp_valid = train_test_split(group, test_size=len(group) // 4, random_state=100)
        assert train.loc[train["antibody"] == antibody, "Id"].tolist() == exp_train["Id"].tolist()
        assert valid.loc[valid["antibody"] == antibody, "Id"].tolist() == exp_valid["Id"].tolist()


def test_antibody_split_deterministic_and_dedups(data, ab_split):
    doubled = pd.concat([data["external"], data["external"].iloc[:5]], ignore_index=True)
    again = splits.antibody_split(doubled)
    pd.testing.assert_frame_equal(ab_split[0], again[0])
    pd.testing.assert_frame_equal(ab_split[1], again[1])


# --------------------------------------------------------------------------------------- 3.3 "tr" variant
@pytest.mark.parametrize("reserved", [1000, 3])
def test_antibody_split_tr(data, ab_split, reserved):
    train_split, valid_split = ab_split
    matches = data["matches"]
    train, valid = splits.antibody_split_tr(train_split, valid_split, matches, reserved=reserved)
    assert list(train.columns) == list(valid.columns) == list(train_split.columns)
    matched_ext = set(matches["Extra"])
    assert not matched_ext & set(train["Id"]) and not matched_ext & set(valid["Id"])
    assert train["Id"].is_unique and not set(train["Id"]) & set(valid["Id"])
    # HPAv18 rows: the splits minus the matched images, order kept
    kept = [i for i in train_split["Id"] if i not in matched_ext]
    assert train.loc[train["External"], "Id"].tolist() == kept
    assert valid["Id"].tolist() == [i for i in valid_split["Id"] if i not in matched_ext]
    assert valid["External"].all()
    # Kaggle rows: antibody of the first pair, Target/code of that antibody's first train_split row
    kaggle = train[~train["External"]].set_index("Id")
    first_pair = matches.drop_duplicates("Train").set_index("Train")["Extra"]
    first_row = train_split.drop_duplicates("antibody").set_index("antibody")
    matched_kaggle = sorted(set(matches["Train"]))
    reserved_ids = set(matched_kaggle) - set(kaggle.index)
    assert set(kaggle.index) <= set(matched_kaggle)
    for kid, row in kaggle.iterrows():
        antibody = int(first_pair[kid].split("_")[0])
        assert row["antibody"] == antibody
        assert row["Target"] == first_row.loc[antibody, "Target"]
        assert row["antibody_code"] == first_row.loc[antibody, "antibody_code"]
    assert kaggle["antibody"].dtype.kind == "i" and kaggle["antibody_code"].dtype.kind == "i"
    # reserved: in neither set, min(reserved, n // 4) of them, the reference's draw
    n_expected = min(reserved, len(matched_kaggle) // 4)
    assert len(reserved_ids) == n_expected > 0
    assert not reserved_ids & set(valid["Id"])
    expected = np.random.RandomState(100).choice(np.array(matched_kaggle), size=n_expected, replace=False)
    assert reserved_ids == set(expected)


def test_antibody_split_tr_rejects_bad_extra_ids(ab_split, data):
    bad = pd.DataFrame({"Train": ["k1"], "Extra": ["abc_1_A1_1"]})
    with pytest.raises(ValueError, match="abc_1_A1_1"):
        splits.antibody_split_tr(*ab_split, bad)


# -------------------------------------------------------------------------------------- 3.4 label fix
def test_correct_external_labels_rules():
    table = pd.DataFrame({
        "Id": ["1_1_A1_1", "2_1_A1_1", "3_1_A1_1", "4_1_A1_1", "5_1_A1_1", "6_1_A1_1", "7_1_A1_1",
               "8_1_A1_1", "9_1_A1_1"],
        "External": True,
        "Target": ["0 8", "0", "3 10", "26", "2 25", "8", "0", "4", "1 20"],
        "antibody": [1, 2, 3, 4, 5, 6, 7, 8, 9],
        "antibody_code": [0, 1, 2, 3, 4, 5, 6, 7, 8],
    })
    extra = pd.DataFrame({
        "Id": ["1/1_A1_1", "2_1_A1_1", "3_1_A1_1", "4_1_A1_1", "5_1_A1_1", "6_1_A1_1", "7_1_A1_1",
               "9_1_A1_1", "9_1_A1_1"],
        "Target": ["1", "0 9", "", "26 5", "25 11", "9", "20", "21 1", "21 1"],
    })
    out = splits.correct_external_labels(table, extra)
    assert list(out.columns) == list(table.columns)
    assert out["Target"].tolist() == [
        "1 8",    # 8 only in old: added ('/' in the new Id becomes '_')
        "0",      # 9 only in new: removed
        "3 10",   # empty new -> old
        "5 26",   # other classes take the new labels; numeric order
        "11 25",  # 2 dropped and 11 added: outside the five classes the new labels win
        "8",      # 9 removed, 8 added
        "0",      # 20 removed -> empty -> old
        "4",      # no new row -> old
        "1 20 21",  # duplicate new rows are one; 20 kept from old
    ]
    pd.testing.assert_frame_equal(out.drop(columns="Target"), table.drop(columns="Target"))
    missing = splits.correct_external_labels(table, extra.assign(Target=[None] * 9))
    assert missing["Target"].tolist() == table["Target"].tolist()


def test_correct_external_labels_rejects_conflicting_new_targets():
    table = pd.DataFrame({"Id": ["1_1_A1_1"], "Target": ["0"]})
    extra = pd.DataFrame({"Id": ["1/1_A1_1", "1_1_A1_1"], "Target": ["1", "2"]})
    with pytest.raises(ValueError, match="1_1_A1_1"):
        splits.correct_external_labels(table, extra)


# ---------------------------------------------------------------------------------------- missing columns
def test_missing_columns_are_named(data, folds, ab_split):
    train, external, matches = data["train"], data["external"], data["matches"]
    cases = [
        (lambda: splits.random_ext_folds(train.drop(columns=["Target", "Lysosomes"]), external),
         "train_meta", ["Target", "Lysosomes"]),
        (lambda: splits.random_ext_folds(train, external.drop(columns=["antibody_code"])),
         "external_meta", ["antibody_code"]),
        (lambda: splits.noleak_clean_folds(folds, matches.drop(columns=["Extra"]), train, external),
         "train_match_external", ["Extra"]),
        (lambda: splits.antibody_split(external.drop(columns=["antibody"])), "external_meta", ["antibody"]),
        (lambda: splits.antibody_split_tr(ab_split[0], ab_split[1].drop(columns=["External"]), matches),
         "valid_split", ["External"]),
        (lambda: splits.antibody_split_tr(*ab_split, matches.drop(columns=["Train"])),
         "train_match_external", ["Train"]),
        (lambda: splits.correct_external_labels(ab_split[0], pd.DataFrame({"Id": ["x"]})),
         "train_extra", ["Target"]),
    ]
    for call, table, columns in cases:
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert table in message and "missing" in message, message
        assert all(repr(c) in message for c in columns), message
