"""Time of the label-noise report at HPA's size: 74,000 HPAv18 images of 12,815 antibodies plus 31,072
Kaggle train images without antibody, clustered random 512-d embeddings, one label set per antibody and a
few planted swaps. Prints the time and where the planted images rank.

    python benchmarks/noise_report.py [--ext 74000 --kaggle 31072 --antibodies 12815 --planted 20]

Last line: `noise_report_seconds: <s>`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from hpa_tf.curation.pool import AnnotatedPool
from hpa_tf.curation.report import label_noise_report
from hpa_tf.embeddings import matching_space


def synthetic_pool(rng: np.random.Generator, n_ext: int, n_kaggle: int, n_antibodies: int, planted: int):
    """(pool, planted Ids): images near their antibody's centre with its labels; `planted` HPAv18 images
    get one label swapped."""
    centres = rng.normal(size=(n_antibodies, 512)).astype(np.float32)
    antibody = rng.integers(0, n_antibodies, n_ext + n_kaggle)
    feats = centres[antibody] + 0.5 * rng.normal(size=(len(antibody), 512)).astype(np.float32)
    labels = [sorted(rng.choice(28, 2, replace=False).tolist()) for _ in range(n_antibodies)]
    targets = [list(labels[a]) for a in antibody]
    swapped = rng.choice(n_ext, planted, replace=False)
    for i in swapped:
        targets[i][0] = next(c for c in range(28) if c not in targets[i])
    frame = pd.DataFrame({"Id": [f"e{i}" for i in range(n_ext)] + [f"k{i}" for i in range(n_kaggle)],
                          "set": ["ext"] * n_ext + ["kaggle"] * n_kaggle,
                          "Target": [" ".join(map(str, sorted(t))) for t in targets],
                          "antibody": [str(a) for a in antibody[:n_ext]] + [""] * n_kaggle})
    return AnnotatedPool(frame, matching_space(feats)), {f"e{i}" for i in swapped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ext", type=int, default=74_000)
    parser.add_argument("--kaggle", type=int, default=31_072)
    parser.add_argument("--antibodies", type=int, default=12_815)
    parser.add_argument("--planted", type=int, default=20)
    args = parser.parse_args()
    pool, planted = synthetic_pool(np.random.default_rng(0), args.ext, args.kaggle, args.antibodies,
                                   args.planted)
    start = time.perf_counter()
    report, similarity = label_noise_report(pool)
    seconds = time.perf_counter() - start
    ranks = sorted(report.loc[report["Id"].isin(planted), "rank"].tolist())
    print(f"{len(report)} images, calibrated similarity {similarity:.3f}, "
          f"{int((report['disagreement'] > 0).sum())} disagree; planted swaps at ranks {ranks}")
    print(f"noise_report_seconds: {seconds:.1f}")


if __name__ == "__main__":
    main()
