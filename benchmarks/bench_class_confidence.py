"""A content signal on the tuned suite: the conditional GAN encoder's class confidence (issue 24;
docs/anomaly.md "A first look at a content signal on `pen_mnist`").

The GAN's encoder predicts a digit class; a figure that is no digit (a letter, a pen scribble)
may get a flat prediction. Printed for the tuned suite's kinds (the product's suite, as the
evaluation builds it on the test digits): AUROC against the test normals of 1 - max probability
and of the entropy alone, of the served union's raw statistic (params.yaml `ensemble`, built as
`bench_union.py` builds it), and of a max-union of the two, each view as a validation-normal
p-value and the entropy's scaled to spend a share w of a view's budget. Exploratory: it chooses
nothing.

    .venv/bin/python benchmarks/bench_class_confidence.py --data-dir data --models artifacts/models

Not a test: it reads a finished run's models and data. Prints time and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_union import build, scorer  # noqa: E402
from models.io import load_model  # noqa: E402
from pipelines.data.dataset import SPLITS, load_tensors  # noqa: E402
from pipelines.evaluation import metrics as M  # noqa: E402
from pipelines.evaluation.anomalies import ANOMALY_KINDS, build_anomaly_suite  # noqa: E402
from pipelines.evaluation.evaluator import EvalConfig  # noqa: E402
from pipelines.settings import load_params, section  # noqa: E402
from pipelines.stages.ensemble import EnsembleParams  # noqa: E402

SHARES = (1.0, 0.5, 0.2)


@torch.no_grad()
def class_probabilities(gan, images: np.ndarray) -> np.ndarray:
    """(N, 10) the encoder's class probabilities."""
    out = []
    for i in range(0, len(images), 512):
        enc = gan.e(gan._to_net(torch.as_tensor(images[i : i + 512])))
        out.append(enc.label_logits.float().softmax(1))
    return torch.cat(out).numpy()


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + 1e-12)).sum(1)


def p_value(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The share of `reference` scores at or above each score (plus one, of one more)."""
    ref = np.sort(reference)
    return (1 + len(ref) - np.searchsorted(ref, scores, side="left")) / (len(ref) + 1)


def parse_args(doc: str) -> argparse.Namespace:
    """The command line this bench and bench_class_neighbours.py share."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def load_setting(args: argparse.Namespace) -> dict[str, Any]:
    """params, the evaluate section (`cfg`), the splits, the tuned suite (`suite`, `kinds`) as
    the evaluation builds it on the test digits, the conditional GAN, and the served union's
    raw statistic of the validation normals, the test normals and the suite (`union`)."""
    params = load_params(args.params)
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    splits = {s: load_tensors(args.data_dir, s) for s in SPLITS}
    val_x, test_x = splits["val"][0].numpy(), splits["test"][0].numpy()
    suite, kinds = build_anomaly_suite(
        test_x, splits["test"][1].numpy(), n_per_kind=cfg.anomaly_per_kind, seed=cfg.anomaly_seed
    )
    gan = load_model(args.models / "gan").eval()
    if not gan.config.conditional:
        raise SystemExit("the GAN is not conditional: its encoder predicts no class")
    union = scorer(build(EnsembleParams.from_dict(section(params, "ensemble")), args.models,
                         splits, cfg))  # fmt: skip
    return {"params": params, "cfg": cfg, "splits": splits, "val": val_x, "test": test_x,
            "suite": suite, "kinds": kinds, "gan": gan,
            "union": tuple(union(x) for x in (val_x, test_x, suite))}  # fmt: skip


def with_union(union: tuple, signal: tuple, name: str) -> dict[str, tuple]:
    """Rows of a max-union of the served union's and `signal`'s (val, test, suite) p-values on
    the validation normals, the signal's scaled to spend a share w of a view's budget."""
    (uv, un, us), (ev, en, es) = union, signal
    return {
        f"union + {name}, w {w:g}": tuple(
            -np.log(np.minimum(p_value(uv, u), np.minimum(1.0, p_value(ev, e) / w)))
            for u, e in ((un, en), (us, es))
        )
        for w in SHARES
    }


def print_table(rows: dict[str, tuple], kinds: np.ndarray, start: float) -> None:
    """AUROC of each row's (test normals, suite) per tuned kind, then wall time and peak RSS."""
    head = ["signal", "tuned mean", *ANOMALY_KINDS]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, (normal, odd) in rows.items():
        aurocs = [M.auroc(normal, odd[kinds == k]) for k in ANOMALY_KINDS]
        cells = " | ".join(f"{a:.3f}" for a in aurocs)
        print(f"| {name} | {np.mean(aurocs):.4f} | {cells} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"\nwall {time.perf_counter() - start:.0f} s, peak RSS {rss:.2f} GB")


def main() -> None:
    args = parse_args(__doc__)
    start = time.perf_counter()
    setting = load_setting(args)
    gan = setting["gan"]
    pv, pn, ps = (class_probabilities(gan, setting[x]) for x in ("val", "test", "suite"))
    _, un, us = setting["union"]
    rows = {
        "1 - max probability": (1 - pn.max(1), 1 - ps.max(1)),
        "entropy": (entropy(pn), entropy(ps)),
        "served union": (un, us),
    }
    rows |= with_union(setting["union"], (entropy(pv), entropy(pn), entropy(ps)), "entropy")
    print_table(rows, setting["kinds"], start)


if __name__ == "__main__":
    main()
