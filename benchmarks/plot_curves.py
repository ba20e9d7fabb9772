"""Plot learning curves of finished runs into one PNG (for BENCHMARKS.md).

    python benchmarks/plot_curves.py --run madi=runs/quick_s0 \
        --out docs/learning_curve_sim_quick.png \
        --ref "random policy=29.3" --ref "scripted servo=396.8"
"""

import argparse
from pathlib import Path

from learner.plots import plot_learning_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR")
    parser.add_argument("--ref", action="append", default=[], metavar="LABEL=RETURN")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="madi train --sync, sim UR5 visual reacher")
    args = parser.parse_args()
    runs = dict(r.split("=", 1) for r in args.run)
    refs = {k: float(v) for k, v in (r.split("=", 1) for r in args.ref)}
    print(plot_learning_curves(runs, args.out, args.title, refs))


if __name__ == "__main__":
    main()
