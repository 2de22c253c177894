"""Fit how real glass (and the re-shot exposure) changes the transmission: blended ~ g * T.

Per saggy361 TRAINING pair (scene_split(names, 0.1, seed=0); the val scenes and the dev sets are
never read), g is the per-channel linear-light gain where the photo has no reflection
(real_reflections.fit_glass_gain: the mode of log(blended/T)). Prints the distribution that
synth.glass_gain draws from: quantiles of the overall gain (geometric mean of the channels) and
the covariance of the tint (log gain of each channel minus their mean), with a square-root
factor to draw it. Paste the printed constants into dereflect/data/synth.py.

    .venv/bin/python tools/fit_glass.py --shared /work/shared/data [--json glass_fit.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.data.datasets import scene_of  # noqa: E402
from dereflect.data.real_reflections import fit_glass_gain, saggy_training_pairs, srgb_to_linear  # noqa: E402
from dereflect.images import read_rgb  # noqa: E402

QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def summarise(gains: np.ndarray) -> dict:
    """Quantiles of the overall gain and the tint's covariance and square-root factor."""
    logs = np.log(gains)
    overall = logs.mean(axis=1)
    tint = logs - overall[:, None]
    cov = np.cov(tint.T)
    w, v = np.linalg.eigh(cov)
    factor = v @ np.diag(np.sqrt(np.clip(w, 0.0, None))) @ v.T  # symmetric square root: tint = factor @ z
    return {
        "n": int(len(gains)),
        "quantiles": list(QUANTILES),
        "gain_quantiles": [round(float(np.exp(q)), 3) for q in np.quantile(overall, QUANTILES)],
        "tint_log_std": [round(float(s), 4) for s in tint.std(axis=0)],
        "tint_cov": np.round(cov, 5).tolist(),
        "tint_factor": np.round(factor, 4).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pairs = saggy_training_pairs(args.shared)
    gains = np.stack([fit_glass_gain(srgb_to_linear(read_rgb(b) / 255.0), srgb_to_linear(read_rgb(t) / 255.0)) for _, b, t in pairs])
    fit = summarise(gains)
    fit["scenes"] = len({scene_of(n) for n, _, _ in pairs})
    print(json.dumps(fit, indent=1))
    if args.json:
        per_pair = {n: g.round(4).tolist() for (n, _, _), g in zip(pairs, gains)}
        args.json.write_text(json.dumps({**fit, "per_pair": per_pair}, indent=1))


if __name__ == "__main__":
    main()
