"""Per-kind AUROC with bootstrap intervals, and paired differences between families, from what
evaluation saved (artifacts/eval/<family>/paired.npz, `pipelines.evaluation.paired.Evidence`:
the calibrated atypicality of every test normal and every tuned-suite and held-out image). No
model runs; a few seconds per kind.

Each draw resamples the test normals and each kind's images with replacement, the same draws
for every family, so a difference between two families is paired (the gate's bootstrap,
`paired_bootstrap`, does the same for the task metric). Prints a markdown table: per kind, each
family's AUROC with its percentile interval, and each family minus `--against`.

    .venv/bin/python benchmarks/bench_kind_ci.py                       # the content-only kinds
    .venv/bin/python benchmarks/bench_kind_ci.py --kind heldout/letters --against ensemble
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipelines.cli.common import ARTIFACTS
from pipelines.evaluation.heldout import CONTENT_KINDS
from pipelines.evaluation.paired import HELDOUT_PREFIX, Evidence, _auroc


def kind_intervals(
    evidence: dict[str, Evidence],
    kinds: list[str],
    against: str,
    draws: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict]:
    """One row per kind: {"kind", "n", family: (auroc, low, high), "<family>-<against>": (...)}."""
    first = evidence[against]
    for ev in evidence.values():
        ev.check_paired_with(first)  # the same items in the same order, or refuse
    tail = 100 * (1 - confidence) / 2
    rng = np.random.default_rng(seed)
    normals = np.arange(len(first.test_scores))
    rows = []
    for kind in kinds:
        items = np.flatnonzero(first.suite_kinds == kind)
        if len(items) == 0:
            raise ValueError(f"no images of kind {kind!r} in the evidence")
        idx = [(rng.choice(normals, len(normals)), rng.choice(items, len(items)))
               for _ in range(draws)]  # fmt: skip
        boots = {
            name: np.array([_auroc(ev.test_scores[n], ev.suite_scores[a]) for n, a in idx])
            for name, ev in evidence.items()
        }
        row: dict = {"kind": kind, "n": len(items)}
        for name, ev in evidence.items():
            point = _auroc(ev.test_scores, ev.suite_scores[items])
            row[name] = (point, *np.percentile(boots[name], [tail, 100 - tail]))
        for name in evidence:
            if name != against:
                diff = boots[name] - boots[against]
                point = row[name][0] - row[against][0]
                row[f"{name}-{against}"] = (point, *np.percentile(diff, [tail, 100 - tail]))
        rows.append(row)
    return rows


def markdown(rows: list[dict], families: list[str], against: str) -> str:
    others = [f for f in families if f != against]
    head = ["kind", "n", *families, *(f"{f} − {against}" for f in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["kind"], str(row["n"])]
        cells += [f"{row[f][0]:.3f} [{row[f][1]:.3f}, {row[f][2]:.3f}]" for f in families]
        cells += ["{:+.3f} [{:+.3f}, {:+.3f}]".format(*row[f"{f}-{against}"]) for f in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-dir", type=Path, default=ARTIFACTS / "eval")
    parser.add_argument(
        "--family",
        dest="families",
        action="append",
        help="a family whose evaluation to read (repeatable; default: every one with evidence)",
    )
    parser.add_argument(
        "--kind",
        dest="kinds",
        action="append",
        help="a kind as the evidence names it, e.g. heldout/letters_mnist or rotation90 "
        "(repeatable; default: the held-out content-only kinds)",
    )
    parser.add_argument("--against", default="ensemble", help="the family differences are to")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    families = args.families or sorted(p.parent.name for p in args.eval_dir.glob("*/paired.npz"))
    if args.against not in families:
        parser.error(f"--against {args.against!r} is not among the families {families}")
    if args.draws < 100:
        parser.error("--draws must be >= 100")
    evidence = {f: Evidence.load(args.eval_dir / f) for f in families}
    kinds = args.kinds or [HELDOUT_PREFIX + k for k in CONTENT_KINDS]
    rows = kind_intervals(evidence, kinds, args.against, args.draws, seed=args.seed)
    print(
        f"AUROC [95 % percentile interval], {args.draws} paired bootstrap draws over the test "
        f"normals and each kind's images (seed {args.seed}); evidence: {args.eval_dir}\n"
    )
    print(markdown(rows, families, args.against))


if __name__ == "__main__":
    main()
