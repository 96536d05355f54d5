"""Which union of tests should the anomaly ensemble serve, now that the tuned suite asks the
content question? (issue 24, a thirteenth pass; docs/anomaly.md "Thirteenth pass").

The served ensemble is max(GAN Dknn, encoder kNN, format): a union of three tests, each
calibrated on validation normals. On the content-only kinds the GAN's Dknn alone is ahead of it
(the other two tests spend part of the false-positive budget without seeing content). With the
content proxy in the tuned suite (`mirrored`, `upside_down`: pipelines/evaluation/anomalies.py)
the choice between unions can be made on the tuned suite.

Each variant is the product's ensemble (pipelines.stages.ensemble.fit_configured, fitted on
validation normals, the training split as the views' reference) built from the run's trained
models with one setting of params.yaml `ensemble` changed, and measured as evaluation measures a
family (detection_metrics):

  served         params.yaml as it is
  no-eknn        encoder_knn 0, members [gan]
  no-format      format_test false
  format         format_test true
  format-<s>     format_test true, format_share <s> (0.5, 0.2, 0.1, 0.05): the format view
                 calibrated at that share of the false-positive budget (a fourteenth pass)
  mean           combine mean
  entropy[-<s>]  class_entropy true at entropy_share 1 (or <s>: 0.5, 0.2): a seventh pass
  surprise[-<s>] label_surprise true at surprise_share 1 (or <s>): an eighth pass
  no-surprise    label_surprise false (the union before the eighth pass changed params.yaml)

The thirteenth pass (params.yaml then: max(Dknn, Eknn, format)) ran served, no-eknn, no-format
and mean; the fourteenth (params.yaml: max(Dknn, Eknn); the tuned suite with the format proxy
`resized`, `off_centre`) runs served, format and the format-<s> variants.

A fifth pass (fixed before its run, after bench_negatives' fourth pass: docs/anomaly.md
"Fifteenth pass"): the served union (params.yaml as it is) built on GANs trained 3,600 steps
against 1,800, two training seeds each (`bench_negatives.py --save-dir`, seed 0 is the
pipeline's), one `--models` directory per GAN (the run's autoencoder beside it), `--variants
served`. Rule: the mean over the seeds of the union's tuned mean; the longer training only if
it beats the served one by at least 0.002.

A sixth pass (fixed before its run, docs/anomaly.md "Sixteenth pass"): the same, on the tuned
suite with `pen_mnist` (fourteen kinds: content asked by two flips and two stroke kinds), on
GANs trained afresh the same way; the same rule and margin.

A seventh pass (fixed before its run, docs/anomaly.md "Sixteenth pass", after
`bench_class_confidence.py` had shown the GAN encoder's class entropy in a p-value union on the
tuned suite): the served union with the class-entropy view at the whole budget, 0.5 and 0.2
(`--variants served entropy entropy-0.5 entropy-0.2`), on the run's models. Rule: the highest
tuned mean (fourteen kinds); a product change only if it beats `served` by at least 0.001.

An eighth pass (fixed before its run, docs/anomaly.md "Eighteenth pass", after
`bench_class_neighbours.py` had shown the label surprise in a p-value union on the tuned suite):
the served union (with the class-entropy view at 0.2) plus the label-surprise view at the whole
budget, 0.5 and 0.2 (`--variants served surprise surprise-0.5 surprise-0.2`), on the run's
models. Rule: the highest tuned mean (fourteen kinds); a product change only if it beats
`served` by at least 0.001.

A ninth pass (fixed before its run, docs/anomaly.md "Twenty-second pass"): the served views
combined by Fisher's method (`fisher`: each view's atypicality as an upper-tail p-value against
the validation normals, an exponential tail beyond their 99th percentile, the score -sum(log p),
floored at the validation median; `FisherUnion`) against their maximum (`served`), on the served
3,600-step GAN at both training seeds of the twenty-first pass (`--models <dir>/served-s<seed>`,
`--variants served fisher`). Rule: the mean over the seeds of fisher's tuned mean (sixteen
kinds) minus served's; a product change only if it is at least 0.001 and the test FPR stays
within 0.01 of the target.

The rule, fixed before the first run: the highest tuned-suite mean AUROC (every kind of it, the
content and format proxies included); a product change only if it beats `served` by at least
0.001. The held-out benchmark is printed once, beside, and never chooses.

    .venv/bin/python benchmarks/bench_union.py --models artifacts/models --data-dir data

Not a test: it reads a finished run's models and data. Prints time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.io import load_model
from pipelines.data.dataset import SPLITS, load_tensors
from pipelines.evaluation.anomalies import ANOMALY_KINDS
from pipelines.evaluation.evaluator import EvalConfig, detection_metrics, scored_normals
from pipelines.evaluation.heldout import REAL_KINDS
from pipelines.settings import load_params, section
from pipelines.stages.ensemble import EnsembleParams, fit_configured

VARIANTS: dict[str, dict[str, Any]] = {
    "served": {},
    "no-eknn": {"encoder_knn": 0, "members": ("gan",), "view_only": ()},
    "no-format": {"format_test": False},
    "mean": {"combine": "mean"},
    "format": {"format_test": True, "format_share": 1.0},
    **{
        f"format-{share:g}": {"format_test": True, "format_share": share}
        for share in (0.5, 0.2, 0.1, 0.05)
    },
    **{
        (f"entropy-{share:g}" if share < 1 else "entropy"): {
            "class_entropy": True,
            "entropy_share": share,
        }
        for share in (1.0, 0.5, 0.2)
    },
    **{
        (f"surprise-{share:g}" if share < 1 else "surprise"): {
            "label_surprise": True,
            "surprise_share": share,
        }
        for share in (1.0, 0.5, 0.2)
    },
    "no-surprise": {"label_surprise": False},
    # v6's union (no class view) and the bare GAN Dknn + encoder kNN: a diagnosis, not a choice
    "no-class": {"class_entropy": False, "label_surprise": False},
    "dknn-eknn": {"class_entropy": False, "label_surprise": False, "format_test": False},
    # the served views combined by Fisher's method instead of their maximum (a twenty-second pass)
    "fisher": {},
}
COMBINED_BY_FISHER = ("fisher",)
TAIL_QUANTILE = 0.99
PROXY_KINDS = ("mirrored", "upside_down", "resized", "off_centre", "strokes_mnist", "pen_mnist",
               "pieces_mnist", "traced_mnist")  # fmt: skip


def build(settings: EnsembleParams, models: Path, splits: dict, cfg: EvalConfig) -> Any:
    members = {f: load_model(models / f).eval() for f in settings.members}
    train_images, train_labels = splits["train"]
    model = fit_configured(settings, cfg, members, splits["val"][0], train_images, train_labels)
    return model.eval()


class FisherUnion:
    """The served views, combined by Fisher's method (a twenty-second pass, docs/anomaly.md).

    The served union takes the maximum of the views' atypicalities, so every view's own false
    alarms raise the union's threshold, and a figure that several views find a little atypical
    ranks no higher than one that a single view finds so. Fisher's method sums the evidence:
    each view's atypicality becomes an upper-tail p-value against the validation normals (the
    very images the views were calibrated on; rank-based, so the budget shares play no part),
    and the score is -sum(log p). Beyond a view's 99th validation percentile the p-value is an
    exponential tail fitted to the normals' exceedances (the mean excess), so the views that see
    far beyond every normal (the format view on a resized digit) are not capped at 1/(n+1).
    Scores below the validation normals' median are raised to it (the ensemble's floor)."""

    def __init__(self, model: Any, val_images: np.ndarray) -> None:
        self.model = model
        ref = self._stats(val_images)
        self.ref = np.sort(ref, axis=0)
        self.q = np.quantile(ref, TAIL_QUANTILE, axis=0)
        excess = [ref[ref[:, v] > self.q[v], v] - self.q[v] for v in range(ref.shape[1])]
        self.mean_excess = np.array([max(float(e.mean()) if e.size else 0.0, 1e-12)
                                     for e in excess])  # fmt: skip
        self.floor = None
        self.floor = float(np.quantile(self._combined(ref), 0.5, method="higher"))

    def _stats(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            parts = [np.stack(list(self.model.member_statistics(
                torch.from_numpy(images[i : i + 500])).values()), axis=1)
                for i in range(0, len(images), 500)]  # fmt: skip
        return np.concatenate(parts)

    def _combined(self, stats: np.ndarray) -> np.ndarray:
        n = self.ref.shape[0]
        logp = np.empty_like(stats, dtype=np.float64)
        for v in range(stats.shape[1]):
            at_least = n - np.searchsorted(self.ref[:, v], stats[:, v], side="left")
            logp[:, v] = np.log((1.0 + at_least) / (n + 1.0))
            tail = stats[:, v] > self.q[v]
            logp[tail, v] = (
                np.log(1.0 - TAIL_QUANTILE) - (stats[tail, v] - self.q[v]) / self.mean_excess[v]
            )
        combined = -logp.sum(axis=1)
        return combined if self.floor is None else np.maximum(combined, self.floor)

    def anomaly_score(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._combined(self._stats(images.numpy())))


def scorer(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The model's anomaly score of (N, 1, 28, 28) float images, 500 at a time, float64."""

    def score(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            parts = [model.anomaly_score(torch.from_numpy(images[i : i + 500]))
                     for i in range(0, len(images), 500)]  # fmt: skip
        return torch.cat(parts).double().numpy()

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write every metric here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    params = load_params(args.params)
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    base = section(params, "ensemble")
    splits = {s: load_tensors(args.data_dir, s) for s in SPLITS}
    scored = scored_normals(splits, cfg)
    results: dict[str, dict[str, float]] = {}
    for name in args.variants:
        t0 = time.perf_counter()
        settings = EnsembleParams.from_dict(base | VARIANTS[name])
        model = build(settings, args.models, splits, cfg)
        if name in COMBINED_BY_FISHER:
            model = FisherUnion(model, splits["val"][0].numpy())
        score = scorer(model)
        fitted = time.perf_counter() - t0

        with tempfile.TemporaryDirectory() as tmp:
            metrics, _ = detection_metrics(score, scored, cfg, Path(tmp))
        results[name] = metrics | {"fit_s": fitted, "seconds": time.perf_counter() - t0}
        print(f"{name}: tuned {metrics['suite_auroc_mean']:.4f} "
              f"({results[name]['seconds']:.0f} s)", flush=True)  # fmt: skip
    chosen = max(results, key=lambda n: results[n]["suite_auroc_mean"])
    content = [k for k in ANOMALY_KINDS if k in PROXY_KINDS]
    kinds = [k for k in REAL_KINDS if f"heldout_auroc/{k}" in results[chosen]]
    head = ["variant", "tuned mean (chooses)", *content, "test FPR", "gate metric",
            *[f"{k} (flagged)" for k in kinds]]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, m in results.items():
        tuned = [f"{m[f'anomaly_auroc/{k}']:.3f} ({m[f'anomaly_tpr/{k}']:.0%})" for k in content]
        held = [f"{m[f'heldout_auroc/{k}']:.3f} ({m[f'heldout_tpr/{k}']:.0%})" for k in kinds]
        cells = [f"{m['suite_auroc_mean']:.4f}", *tuned, f"{m['test_fpr']:.3f}",
                 f"{m['anomaly_auroc_mean']:.4f}", *held]  # fmt: skip
        print(f"| {'**' + name + '**' if name == chosen else name} | " + " | ".join(cells) + " |")
    gain = (
        results[chosen]["suite_auroc_mean"]
        - results.get("served", results[chosen])["suite_auroc_mean"]
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    wall = time.perf_counter() - start
    print(f"\nchosen: {chosen} (+{gain:.4f} tuned over served; a product change needs >= "
          f"0.001); wall {wall:.0f} s, peak RSS {rss:.2f} GB")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"chosen": chosen, "wall_s": wall, "peak_rss_gb": rss,
                                         "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
