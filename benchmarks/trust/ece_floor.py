"""How large the ECE of a perfectly calibrated model would be on a test part of this size.

python benchmarks/trust/ece_floor.py --run RUN_DIR [--draws 2000] [--out bench-out/ece-floor.json]

Takes the run's test-part confidences (predictions_test.csv, `score`: the top probability after
calibration), draws "right or wrong" for each text with exactly that probability (a model calibrated
by construction), and computes the 15-bin ECE of every draw. The spread is the ECE a finite test part
shows by chance alone: a measured ECE inside it cannot be told from perfect calibration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/ece-floor.json")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd

    from medclf.core.calibration import reliability
    from medclf.core.tasks import SINGLE_LABEL

    confidence = pd.read_csv(Path(args.run) / "predictions_test.csv")["score"].to_numpy()
    probs = np.stack([confidence, 1 - confidence], axis=1)
    rng = np.random.default_rng(args.seed)
    eces = [reliability(probs, np.where(rng.random(len(confidence)) < confidence, 0, 1), SINGLE_LABEL)["ece"]
            for _ in range(args.draws)]
    p5, p50, p95 = np.percentile(eces, [5, 50, 95])
    write_result(Path(args.out),
                 {"run": args.run, "texts": len(confidence), "draws": args.draws, "mean": float(np.mean(eces)),
                  "p5": float(p5), "median": float(p50), "p95": float(p95)})


if __name__ == "__main__":
    main()
