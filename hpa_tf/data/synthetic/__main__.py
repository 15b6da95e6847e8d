"""The command line: `python -m hpa_tf.data.synthetic --out DIR [--preset tiny|demo] [--seed N]`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from hpa_tf.data.synthetic.plan import PRESETS
from hpa_tf.data.synthetic.write import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpa_tf.data.synthetic",
        description="Write a small synthetic HPA dataset (Kaggle HPA 2018 + HPAv18 layout) to --out.",
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="tiny: ~120 train/40 test/120 HPAv18 at 64 px (tests); "
                             "demo: ~2000/500/2000 at 256 px (the embedded default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate(args.out, args.preset, args.seed, args.workers, args.overwrite, not args.quiet)
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    info = json.loads((out / "raw" / "synthetic_info.json").read_text())
    counts = info["counts"]
    print(f"wrote {out}: {counts['train']} train, {counts['test']} test, {counts['external']} HPAv18 "
          f"images at {info['image_size']} px in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
