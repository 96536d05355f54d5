"""Anomaly verdicts beyond the tuned suite: held-out AUROC per kind and family, degenerate-input
flag rates, test FPR, and the /score cost per image of the champion.

Measures each trained family exactly as evaluation does (`pipelines.evaluation.evaluator._anomaly`:
the two-sided calibrated verdict, the tuned suite, the held-out benchmark), and beside it the
old one-sided rule (raw score above the threshold) for comparison, and an offline ensemble of
the families (the mean of their calibrated atypicalities, thresholded at the target FPR on
validation normals; docs/anomaly.md). With `--ensemble`, the registered ensemble candidate
instead (models/ensemble: built from the same members exactly as `genops build-ensemble` builds
it, on validation normals only, then measured like a family). Not a test: costs depend on the
machine and its load.

    .venv/bin/python benchmarks/bench_anomaly.py                          # artifacts/models/*
    .venv/bin/python benchmarks/bench_anomaly.py --ensemble               # + the candidate
    .venv/bin/python benchmarks/bench_anomaly.py --models DIR --data-dir DIR --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.calibration import Calibration
from models.io import load_model
from models.spec import FAMILIES, TASKS, rank
from pipelines.data.dataset import SPLITS, load_tensors
from pipelines.evaluation import metrics as M
from pipelines.evaluation.evaluator import EvalConfig, _anomaly
from pipelines.evaluation.heldout import DEGENERATE_KINDS, HELDOUT_KINDS, REAL_KINDS
from pipelines.evaluation.paired import HELDOUT_PREFIX
from pipelines.settings import load_params, section


def _per_image_cost(
    model: Any, calibration: Calibration, image: torch.Tensor, n: int
) -> dict[str, float]:
    """What /score does per image after decoding, median over `n` calls (3 warm-up calls
    excluded): the model's raw score (ms), then the verdict, calibrated score and percentile
    (us)."""
    model_ms, verdict_us = [], []
    pixels = image.numpy()
    with torch.no_grad():
        for i in range(n + 3):
            start = time.perf_counter()
            score = float(model.anomaly_score(image).reshape(-1)[0])
            middle = time.perf_counter()
            calibration.is_anomaly(score, pixels)
            calibration.percentile(float(calibration.statistic(np.array([score]), pixels)[0]))
            if i >= 3:
                model_ms.append(1e3 * (middle - start))
                verdict_us.append(1e6 * (time.perf_counter() - middle))
    return {
        "score_ms_single_image": statistics.median(model_ms),
        "verdict_us_single_image": statistics.median(verdict_us),
    }


def measure_family(
    model_dir: Path, splits: dict, cfg: EvalConfig, cost_calls: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    model = load_model(model_dir).eval()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out, raw = _anomaly(model, splits, cfg, Path(tmp))
        calibration = Calibration.load(Path(tmp))
    kinds, scores = raw["kinds"], raw["scores"]
    one_sided = {  # the old rule: raw score, one-sided threshold at the whole target FPR
        kind: M.auroc(scores["test"], scores["suite"][kinds == kind])
        for kind in dict.fromkeys(kinds.tolist())
    }
    old = Calibration.fit(scores["val"], cfg.target_fpr)
    for kind in DEGENERATE_KINDS:
        pick = scores["suite"][kinds == HELDOUT_PREFIX + kind]
        out[f"one_sided_flagged/{kind}"] = float(np.mean(pick > old.threshold))
    out["one_sided_test_fpr"] = float(np.mean(scores["test"] > old.threshold))
    out["one_sided_auroc"] = one_sided
    out["anomaly_eval_s"] = time.perf_counter() - t0  # calibration, suite and held-out scoring
    out |= _per_image_cost(model, calibration, splits["test"][0][:1], cost_calls)
    return out, raw


def measure_ensemble(
    params: dict, models: Path, data_dir: Path, splits: dict, cfg: EvalConfig, cost_calls: int
) -> dict[str, Any]:
    """The registered candidate: `genops build-ensemble` on these members, then measured."""
    from pipelines.stages.ensemble import build_ensemble

    with tempfile.TemporaryDirectory() as tmp:
        info = build_ensemble(params, data_dir, models, Path(tmp) / "ensemble")
        out, _ = measure_family(Path(tmp) / "ensemble", splits, cfg, cost_calls)
    return out | {"fit_s": info["fit_seconds"]}


def ensemble(raws: dict[str, dict[str, Any]], target_fpr: float) -> dict[str, Any]:
    """Mean of the families' calibrated atypicalities, thresholded on validation normals."""
    mean = {
        key: np.mean([raw[key] for raw in raws.values()], axis=0)
        for key in ("val", "test", "suite")
    }
    threshold = float(np.quantile(mean["val"], 1 - target_fpr, method="higher"))
    kinds = next(iter(raws.values()))["kinds"]
    out: dict[str, Any] = {"test_fpr": float(np.mean(mean["test"] > threshold))}
    for kind in dict.fromkeys(kinds.tolist()):
        values = mean["suite"][kinds == kind]
        heldout = kind.startswith(HELDOUT_PREFIX)
        name = kind.removeprefix(HELDOUT_PREFIX)
        out[f"{'heldout' if heldout else 'anomaly'}_auroc/{name}"] = M.auroc(mean["test"], values)
        out[f"{'heldout' if heldout else 'anomaly'}_tpr/{name}"] = float(
            np.mean(values > threshold)
        )
    tuned = [v for k, v in out.items() if k.startswith("anomaly_auroc/")]
    held = [v for k, v in out.items() if k.startswith("heldout_auroc/")]
    out |= {"suite_auroc_mean": float(np.mean(tuned)), "heldout_auroc_mean": float(np.mean(held))}
    out["anomaly_auroc_mean"] = (out["suite_auroc_mean"] + out["heldout_auroc_mean"]) / 2
    out["heldout_auroc_min"] = float(min(held))
    real = [out[f"heldout_auroc/{k}"] for k in REAL_KINDS if f"heldout_auroc/{k}" in out]
    out["heldout_auroc_real_mean"] = float(np.mean(real))
    return out


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(results: dict[str, dict[str, Any]], champion: str) -> str:
    names = list(results)
    lines = [f"champion (ranked by {TASKS['anomaly'].metric}): {champion}", ""]
    lines += [_row(["metric", *names]), "|" + "---|" * (len(names) + 1)]
    for key, fmt in (("anomaly_auroc_mean", ".3f"), ("suite_auroc_mean", ".3f"),
                     ("heldout_auroc_mean", ".3f"), ("heldout_auroc_real_mean", ".3f"),
                     ("heldout_auroc_min", ".3f"), ("degenerate_flagged_min", ".2f"),
                     ("test_fpr", ".3f"),
                     ("test_fpr_score_only", ".3f"), ("one_sided_test_fpr", ".3f"),
                     ("score_ms_single_image", ".2f"), ("verdict_us_single_image", ".1f"),
                     ("score_ms_per_image", ".3f"), ("anomaly_eval_s", ".0f"),
                     ("fit_s", ".0f")):  # fmt: skip
        cells = [format(r[key], fmt) if key in r else "—" for r in results.values()]
        lines.append(_row([key, *cells]))
    lines += ["", "AUROC per kind: two-sided calibrated verdict (old one-sided raw score)", ""]
    lines += [_row(["set", "kind", *names]), "|" + "---|" * (len(names) + 2)]
    tuned = [
        k.split("/", 1)[1] for k in next(iter(results.values())) if k.startswith("anomaly_auroc/")
    ]
    for label, prefix, kinds in (
        ("tuned", "anomaly", tuned),
        ("held-out", "heldout", HELDOUT_KINDS),
    ):
        for kind in kinds:
            cells = []
            for r in results.values():
                old_key = kind if prefix == "anomaly" else HELDOUT_PREFIX + kind
                old = r.get("one_sided_auroc", {}).get(old_key)
                cell = f"{r[f'{prefix}_auroc/{kind}']:.3f}"
                cells.append(cell if old is None else f"{cell} ({old:.3f})")
            lines.append(_row([label, kind, *cells]))
    lines += ["", "Share flagged: two-sided verdict (old one-sided)", ""]
    lines += [_row(["kind", *names]), "|" + "---|" * (len(names) + 1)]
    for kind in DEGENERATE_KINDS:
        cells = []
        for r in results.values():
            old = r.get(f"one_sided_flagged/{kind}")
            cell = f"{r[f'heldout_tpr/{kind}']:.0%}"
            cells.append(cell if old is None else f"{cell} ({old:.0%})")
        lines.append(_row([kind, *cells]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--cost-calls", type=int, default=50, help="single-image timing calls")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (as a worker)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument(
        "--ensemble", action="store_true", help="measure the registered ensemble candidate"
    )
    parser.add_argument("--combine", choices=("mean", "max"), help="override ensemble.combine")
    parser.add_argument("--ensemble-members", nargs="+", help="[default: the measured families]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    splits = {s: load_tensors(args.data_dir, s) for s in SPLITS if s != "train"}
    families = [f for f in args.families if (args.models / f / "config.json").is_file()]
    if not families:
        raise SystemExit(f"no trained family under {args.models} (run `dvc repro` first)")
    results, raws = {}, {}
    for family in families:
        t0 = time.perf_counter()
        results[family], raws[family] = measure_family(
            args.models / family, splits, cfg, args.cost_calls
        )
        print(f"{family}: measured in {time.perf_counter() - t0:.0f} s", flush=True)
    metric = TASKS["anomaly"].metric
    champion = rank(families, lambda f: results[f].get(metric), True)[0][0]
    if args.ensemble:
        t0 = time.perf_counter()
        settings = {"members": args.ensemble_members or families}
        settings |= {"combine": args.combine} if args.combine else {}
        params["ensemble"] = section(params, "ensemble") | settings
        if params["ensemble"].get("sampler", "gan") not in settings["members"]:
            params["ensemble"]["sampler"] = settings["members"][0]  # sampling: not measured here
        results["ensemble"] = measure_ensemble(
            params, args.models, args.data_dir, splits, cfg, args.cost_calls
        )
        print(f"ensemble: built and measured in {time.perf_counter() - t0:.0f} s", flush=True)
    elif len(families) > 1:
        results["ensemble"] = ensemble(raws, cfg.target_fpr)
        results["ensemble"]["score_ms_single_image"] = sum(
            results[f]["score_ms_single_image"] for f in families
        )
    print(report(results, champion))
    if args.json:
        args.json.write_text(json.dumps({"champion": champion, "results": results}, indent=1))


if __name__ == "__main__":
    main()
