"""Train/valid splits and external label correction (spec 3.1-3.4): 5-fold multilabel stratified folds of
Kaggle train + HPAv18, their leak-free/clean variant, the per-antibody split for metric learning (plain and
"tr", where Kaggle duplicates replace their HPAv18 twins) and the s10 label correction.

Pure pandas/numpy: every function takes DataFrames and returns new ones; the caller writes the CSVs.

Column conventions (the reference's): ``Id``, ``Target`` (sorted unique space-joined class ints), the 28
one-hot int columns named by ``LABEL_NAMES``, ``External`` (bool: True for an HPAv18 image), ``antibody``
(int, the Id part before the first ``_``) and ``antibody_code`` (int, LabelEncoder over the antibody
strings). In the fold tables ``antibody``/``antibody_code`` are pandas nullable ``Int64``: ``<NA>`` for
Kaggle rows, so a CSV shows an empty field and external rows keep integer text (not ``10580.0``).
Every returned frame has a fresh RangeIndex.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import train_test_split

from hpa_tf.errors import DataError
from hpa_tf.labels import LABEL_NAMES, format_target, parse_target, targets_to_matrix

ID = "Id"
TARGET = "Target"
EXTERNAL = "External"
ANTIBODY = "antibody"
ANTIBODY_CODE = "antibody_code"
MATCH_TRAIN = "Train"
MATCH_EXTRA = "Extra"

META_COLUMNS = [ID, TARGET, *LABEL_NAMES, EXTERNAL]
EXTERNAL_META_COLUMNS = [*META_COLUMNS, ANTIBODY, ANTIBODY_CODE]
FOLD_COLUMNS = [ID, TARGET, EXTERNAL, ANTIBODY, ANTIBODY_CODE, *LABEL_NAMES]
ANTIBODY_SPLIT_COLUMNS = [ID, EXTERNAL, TARGET, ANTIBODY, ANTIBODY_CODE]
MATCH_COLUMNS = [MATCH_TRAIN, MATCH_EXTRA]

SPLIT_SEED = 100  # random_state of every split in the reference (s7, s9)
RESERVED_MATCHES = 1000  # matched Kaggle ids the reference holds out of the "tr" split (s9)
# Peroxisomes, Endosomes, Lysosomes, Lipid droplets, Cytoplasmic bodies: the old label wins (s10).
KEEP_OLD_CLASSES = (8, 9, 10, 20, 26)

_MAX_LISTED = 10  # ids named in an error message


def _require(df: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    """Raise ValueError naming the table and its missing columns, so a wrong CSV fails at the start."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{name} is missing required columns: {missing}")


def _listed(values: Iterable) -> str:
    """At most _MAX_LISTED values for an error message, with the total count."""
    values = list(values)
    head = ", ".join(repr(v) for v in values[:_MAX_LISTED])
    return f"{len(values)}: {head}{', ...' if len(values) > _MAX_LISTED else ''}"


def _require_unique_ids(df: pd.DataFrame, name: str) -> None:
    """Raise ValueError naming duplicated Ids: a split must hold each image once."""
    dup = df[ID][df[ID].duplicated()].unique()
    if len(dup):
        raise DataError(f"{name} has duplicated Ids ({_listed(dup)})")


def _check_meta(df: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    """Columns present, Ids unique, one-hot columns equal to Target (the folds stratify on them)."""
    _require(df, name, columns)
    _require_unique_ids(df, name)
    expected = targets_to_matrix(df[TARGET].tolist())
    onehot = df[LABEL_NAMES].to_numpy(dtype=np.float32)
    bad = np.flatnonzero((expected != onehot).any(axis=1))
    if len(bad):
        raise DataError(f"{name}: the one-hot label columns disagree with Target for Ids "
                         f"({_listed(df[ID].iloc[bad])})")


def _normalised_targets(targets: pd.Series) -> pd.Series:
    """Target strings in canonical form (sorted, unique, single spaces); ValueError on a bad token."""
    return targets.map(lambda t: format_target(parse_target(t)))


def _stratified_folds(meta: pd.DataFrame, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, valid) positional indices of MultilabelStratifiedKFold on the 28 one-hot columns (s7)."""
    kfold = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    labels = meta[LABEL_NAMES].to_numpy()
    return list(kfold.split(np.zeros((len(meta), 1)), labels))


def _fold_frame(meta: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """Rows of meta at positions, in FOLD_COLUMNS with nullable Int64 antibody fields."""
    part = meta.iloc[positions].reset_index(drop=True)
    out = pd.DataFrame({
        ID: part[ID].to_numpy(),
        TARGET: part[TARGET].to_numpy(),
        EXTERNAL: part[EXTERNAL].astype(bool).to_numpy(),
    })
    for column in (ANTIBODY, ANTIBODY_CODE):
        values = part[column] if column in part.columns else pd.Series(pd.NA, index=part.index)
        out[column] = values.astype("Int64").to_numpy()
    for name in LABEL_NAMES:
        out[name] = part[name].astype(int).to_numpy()
    return out


def random_ext_folds(
    train_meta: pd.DataFrame, external_meta: pd.DataFrame, n_splits: int = 5, seed: int = SPLIT_SEED
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Spec 3.1 `random_ext_folds5`: Kaggle train and HPAv18 each split by its own multilabel stratified
    K-fold (same settings); fold k = Kaggle fold k + external fold k, for train and for valid.

    Rows: the Kaggle part, then the external part, each in the order the K-fold yields its indices.
    An empty external_meta gives Kaggle-only folds (the reference's `random_folds5`).
    """
    _check_meta(train_meta, "train_meta", META_COLUMNS)
    _check_meta(external_meta, "external_meta", EXTERNAL_META_COLUMNS)
    kaggle = _stratified_folds(train_meta, n_splits, seed)
    external = _stratified_folds(external_meta, n_splits, seed) if len(external_meta) else None
    folds = []
    for k, (kaggle_train, kaggle_valid) in enumerate(kaggle):
        train_parts = [_fold_frame(train_meta, kaggle_train)]
        valid_parts = [_fold_frame(train_meta, kaggle_valid)]
        if external is not None:
            train_parts.append(_fold_frame(external_meta, external[k][0]))
            valid_parts.append(_fold_frame(external_meta, external[k][1]))
        folds.append((pd.concat(train_parts, ignore_index=True), pd.concat(valid_parts, ignore_index=True)))
    return folds


def _tagged_matches(
    train_match_external: pd.DataFrame, train_meta: pd.DataFrame, external_meta: pd.DataFrame
) -> pd.DataFrame:
    """Match pairs with an `Equal` column: Kaggle and HPAv18 Target sets identical (s7 load_match_info)."""
    _require(train_match_external, "train_match_external", MATCH_COLUMNS)
    _require(train_meta, "train_meta", [ID, TARGET])
    _require(external_meta, "external_meta", [ID, TARGET])
    _require_unique_ids(train_meta, "train_meta")
    _require_unique_ids(external_meta, "external_meta")
    matches = train_match_external[MATCH_COLUMNS].reset_index(drop=True)
    kaggle_targets = _normalised_targets(train_meta.set_index(ID)[TARGET])
    external_targets = _normalised_targets(external_meta.set_index(ID)[TARGET])
    for column, targets, table in ((MATCH_TRAIN, kaggle_targets, "train_meta"),
                                   (MATCH_EXTRA, external_targets, "external_meta")):
        unknown = matches.loc[~matches[column].isin(targets.index), column].unique()
        if len(unknown):
            raise DataError(f"train_match_external column {column!r} has Ids not in {table} "
                             f"({_listed(unknown)})")
    train_target = matches[MATCH_TRAIN].map(kaggle_targets)
    extra_target = matches[MATCH_EXTRA].map(external_targets)
    return matches.assign(Equal=(train_target == extra_target).to_numpy())


def noleak_clean_folds(
    folds: Sequence[tuple[pd.DataFrame, pd.DataFrame]],
    train_match_external: pd.DataFrame,
    train_meta: pd.DataFrame,
    external_meta: pd.DataFrame,
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Spec 3.2 `random_ext_noleak_clean_folds5`, built from `random_ext_folds` output.

    "clean": HPAv18 images in any pHash pair whose Kaggle and HPAv18 labels differ leave train and valid of
    every fold. "noleak": for fold k, HPAv18 images whose equal-label Kaggle twin is in fold k's train leave
    fold k's valid. Like the reference, the reverse leak (a Kaggle valid image whose equal-label HPAv18
    twin is in train) is kept, and equal-label twins both stay in train.
    """
    matches = _tagged_matches(train_match_external, train_meta, external_meta)
    conflicting = matches.loc[~matches["Equal"], MATCH_EXTRA].unique()
    equal = matches[matches["Equal"]]
    cleaned = []
    for k, (train, valid) in enumerate(folds):
        _require(train, f"folds[{k}] train", [ID])
        _require(valid, f"folds[{k}] valid", [ID])
        train = train[~train[ID].isin(conflicting)].reset_index(drop=True)
        leaked = equal.loc[equal[MATCH_TRAIN].isin(train[ID]), MATCH_EXTRA].unique()
        valid = valid[~valid[ID].isin(conflicting) & ~valid[ID].isin(leaked)].reset_index(drop=True)
        cleaned.append((train, valid))
    return cleaned


def antibody_split(external_meta: pd.DataFrame, seed: int = SPLIT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spec 3.3 (s9): per antibody of n HPAv18 images, floor(n/4) go to valid by
    `train_test_split(test_size=floor(n/4), random_state=seed)`, the rest (a whole group if n < 4) to train.

    The input is `external_antibody_split` = external_meta[[Id, External, Target, antibody, antibody_code]]
    deduplicated. Groups are visited in ascending antibody order (the reference visits them in order of
    first appearance); membership does not depend on that order, since every group is split with the same
    fixed random_state, only the row order of the outputs does. Within a group rows follow the split's order.
    """
    _require(external_meta, "external_meta", ANTIBODY_SPLIT_COLUMNS)
    table = external_meta[ANTIBODY_SPLIT_COLUMNS].drop_duplicates().reset_index(drop=True)
    _require_unique_ids(table, "external_meta (after dropping duplicate rows)")
    positions_by_size: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # one split per group size and seed
    train_rows, valid_rows = [], []
    for _, rows in table.groupby(ANTIBODY, sort=True).indices.items():
        n = len(rows)
        n_valid = n // 4
        if n_valid == 0:
            train_rows.append(rows)
            continue
        if n not in positions_by_size:
            positions_by_size[n] = tuple(train_test_split(np.arange(n), test_size=n_valid, random_state=seed))
        train_pos, valid_pos = positions_by_size[n]
        train_rows.append(rows[train_pos])
        valid_rows.append(rows[valid_pos])

    def take(parts: list[np.ndarray]) -> pd.DataFrame:
        positions = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return table.iloc[positions].reset_index(drop=True)

    return take(train_rows), take(valid_rows)


def _antibody_of(external_ids: pd.Series) -> pd.Series:
    """HPAv18 Id -> antibody int (the part before the first `_`); ValueError naming unparseable Ids."""
    prefix = external_ids.astype(str).str.split("_", n=1).str[0]
    numbers = pd.to_numeric(prefix, errors="coerce")
    bad = external_ids[numbers.isna() | (numbers != numbers.round())].unique()
    if len(bad):
        raise DataError(f"train_match_external column 'Extra' has Ids without an integer antibody prefix "
                         f"({_listed(bad)})")
    return numbers.astype(np.int64)


def antibody_split_tr(
    train_split: pd.DataFrame,
    valid_split: pd.DataFrame,
    train_match_external: pd.DataFrame,
    reserved: int = RESERVED_MATCHES,
    seed: int = SPLIT_SEED,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spec 3.3 "tr" variant (the metric-learning split): HPAv18 images that duplicate a Kaggle train image
    leave train and valid, the Kaggle image joins train under the HPAv18 image's antibody, and some matched
    Kaggle ids are held out of both sets.

    A Kaggle row takes Target and antibody_code from the first train_split row of that antibody and is read
    from the Kaggle dirs (External False); a Kaggle id in several pairs keeps its first pair. The reserved
    ids are `RandomState(seed).choice(sorted unique matched Kaggle ids, n, replace=False)` (the reference's
    `np.random.seed(100)` draw) with n = min(reserved, matched // 4): deliberate difference, the reference
    fixes n = 1000, which on a small dataset would remove every match. The match table is an argument, so
    the reference's wrong file name (spec 12, bug 1) cannot occur.
    """
    _require(train_split, "train_split", ANTIBODY_SPLIT_COLUMNS)
    _require(valid_split, "valid_split", ANTIBODY_SPLIT_COLUMNS)
    _require(train_match_external, "train_match_external", MATCH_COLUMNS)
    matches = train_match_external[MATCH_COLUMNS].reset_index(drop=True)
    matches = matches.assign(**{ANTIBODY: _antibody_of(matches[MATCH_EXTRA]).to_numpy()})

    by_antibody = train_split.drop_duplicates(ANTIBODY).set_index(ANTIBODY)
    missing = matches.loc[~matches[ANTIBODY].isin(by_antibody.index), MATCH_EXTRA].unique()
    if len(missing):
        raise DataError(f"train_match_external has HPAv18 Ids whose antibody has no image in train_split "
                         f"({_listed(missing)})")
    first_pairs = matches.drop_duplicates(MATCH_TRAIN)
    kaggle_rows = pd.DataFrame({
        ID: first_pairs[MATCH_TRAIN].to_numpy(),
        EXTERNAL: False,
        TARGET: first_pairs[ANTIBODY].map(by_antibody[TARGET]).to_numpy(),
        ANTIBODY: first_pairs[ANTIBODY].to_numpy(),
        ANTIBODY_CODE: first_pairs[ANTIBODY].map(by_antibody[ANTIBODY_CODE]).to_numpy(),
    })

    matched_external = matches[MATCH_EXTRA].unique()
    train = train_split.loc[~train_split[ID].isin(matched_external), ANTIBODY_SPLIT_COLUMNS]
    train = pd.concat([train, kaggle_rows], ignore_index=True).drop_duplicates(ID)
    valid = valid_split.loc[~valid_split[ID].isin(matched_external), ANTIBODY_SPLIT_COLUMNS]

    matched_kaggle = np.sort(matches[MATCH_TRAIN].unique())
    n_reserved = min(int(reserved), len(matched_kaggle) // 4)
    held_out = np.random.RandomState(seed).choice(matched_kaggle, size=n_reserved, replace=False)
    train = train[~train[ID].isin(held_out)].reset_index(drop=True)
    valid = valid[~valid[ID].isin(held_out)].reset_index(drop=True)
    return train, valid


def _corrected_target(old: str, new: object) -> str:
    """s10 rule, one image: new labels but old membership of KEEP_OLD_CLASSES; old if the result is empty."""
    old_classes = set(parse_target(old))
    if not isinstance(new, str) or not new.strip():
        return format_target(old_classes)
    classes = set(parse_target(new))
    for cls in KEEP_OLD_CLASSES:
        if cls in old_classes:
            classes.add(cls)
        else:
            classes.discard(cls)
    return format_target(classes if classes else old_classes)


def correct_external_labels(antibody_split_all: pd.DataFrame, train_extra: pd.DataFrame) -> pd.DataFrame:
    """Spec 3.4 (s10): replace HPAv18 Targets by the forum's `train_extra` labels, except that the old labels
    decide classes 8, 9, 10, 20 and 26; an image without a (non-empty) new Target keeps its old one.

    `train_extra` Ids get `/` -> `_`, then exact duplicate rows are dropped; an Id left with two different
    Targets raises ValueError (the reference would emit that image twice). Output: the input's columns.
    """
    _require(antibody_split_all, "antibody_split_all", [ID, TARGET])
    _require(train_extra, "train_extra", [ID, TARGET])
    extra = pd.DataFrame({ID: train_extra[ID].astype(str).str.replace("/", "_", regex=False),
                          TARGET: train_extra[TARGET].to_numpy()}).drop_duplicates()
    conflicting = extra.loc[extra[ID].duplicated(), ID].unique()
    if len(conflicting):
        raise DataError(f"train_extra gives different Targets for the same Id ({_listed(conflicting)})")
    new_targets = antibody_split_all[ID].map(extra.set_index(ID)[TARGET])
    out = antibody_split_all.reset_index(drop=True).copy()
    out[TARGET] = [_corrected_target(old, new) for old, new in zip(out[TARGET], new_targets, strict=True)]
    return out
