"""Does negative data augmentation give the GAN's discriminator features that see content?
(issue 24, a twelfth pass; docs/anomaly.md "Twelfth pass").

The served GAN scores an image by its mean cosine distance to the 10 nearest training digits in
D's penultimate features (`score: dknn`). D learns those features by telling real digits from
G's samples only. Negative data augmentation (Sinha et al. 2021) also shows D real digits
rearranged so that strokes, size and place stay a digit's and the shape does not
(models/gan/negatives.py: `jigsaw`, `stitch`) and asks it to call them fake.

Each variant is the served GAN config (params.yaml `gan`) with `negatives` set, trained by the
product's trainer (the same steps, batch and seed, then its feature bank over the training
split), and measured as evaluation measures a family (detection_metrics: calibrated on
validation normals, AUROC on test normals against the tuned suite and the held-out benchmark).

The content proxy: the tuned suite had no kind whose format is a digit's and whose shape is not,
so this pass added one for choosing, made from test digits with their labels (never a held-out
glyph): `mirrored` (left-right mirror of 2 3 4 5 6 7 9) and `upside_down` (top-bottom flip of
2 4 5 6 7 9), 100 each, drawn here with seed 0. Neither is among the negatives the variants
train on. The same two kinds have since joined the tuned suite itself
(pipelines/evaluation/anomalies.py CONTENT_PROXY, the suite's own draws); this pass keeps its
own draws and the eight earlier tuned kinds, so its figures stay what they were.

The rule, fixed before the first run: the chosen variant has the highest mean AUROC over the
tuned suite's eight earlier kinds and the proxy's two (ten kinds, equal weight), mean over the
seeds; a product change only if it beats the served config's by at least 0.002 on that mean.
The held-out benchmark is printed once, beside, and never chooses.

A second pass (`--weight`, fixed before its run, after the first pass's held-out print): the
chosen `jigsaw+stitch` with negative_weight 2 and 4 against 1, by the same rule (a heavier
weight replaces 1 only if it beats it by at least 0.002).

A third pass (`--set`, `--steps`, fixed before its run, after the second): more of D, with the
served negatives at weight 1: `--set d_width=64` (twice the discriminator's channels) and
`--steps 3600 --set encoder_start_step=3300` (twice the G/D steps), by the same rule against the
served negatives (a variant replaces them only if it beats their choice mean by at least 0.002
and the served process stays under 2 GiB).

A fourth pass (`--choose suite`, fixed before its run, after the tuned suite gained the format
proxy and `strokes_mnist`: docs/anomaly.md "Fifteenth pass"): the third pass's longer training
against the served config, chosen on the product's own tuned suite (`suite_auroc_mean`, every
kind of it, mean over the seeds) instead of the choice mean; a variant replaces the served
config only if it beats it by at least 0.002 there.

    .venv/bin/python benchmarks/bench_negatives.py --data-dir data --seeds 0 1 --threads 2

Not a test: it trains. Prints time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from models.calibration import Calibration
from models.io import save_model
from pipelines.data.dataset import SPLITS, load_tensors
from pipelines.evaluation import metrics as M
from pipelines.evaluation.anomalies import ANOMALY_KINDS, CONTENT_PROXY
from pipelines.evaluation.evaluator import EvalConfig, detection_metrics, scored_normals
from pipelines.evaluation.heldout import REAL_KINDS
from pipelines.settings import load_params, section
from pipelines.training.loop import TrainConfig, train

VARIANTS: dict[str, dict[str, Any]] = {
    "served": {},
    "jigsaw": {"negatives": ["jigsaw"]},
    "stitch": {"negatives": ["stitch"]},
    "jigsaw+stitch": {"negatives": ["jigsaw", "stitch"]},
}
PROXY = CONTENT_PROXY  # kind: (classes whose flip is not a digit, flip axis of a 28 x 28 image)
# the tuned suite as this pass first measured it: the eight kinds before the content proxy
# joined it (the suite's own draws of the proxy kinds are reported beside, not chosen on)
EARLIER_KINDS = ANOMALY_KINDS[:8]  # every kind since was appended after them
assert not set(EARLIER_KINDS) & set(CONTENT_PROXY)


def content_proxy(test: tuple[torch.Tensor, torch.Tensor], n: int, seed: int) -> dict:
    """100 flipped test digits per proxy kind (module doc), float32 (n, 1, 28, 28)."""
    x, y = test[0].numpy(), test[1].numpy()
    rng = np.random.default_rng(seed)
    out = {}
    for kind, (classes, axis) in PROXY.items():
        pool = np.flatnonzero(np.isin(y, classes))
        pick = rng.choice(pool, size=n, replace=False)
        out[kind] = np.ascontiguousarray(np.flip(x[pick], axis=axis + 2))  # (n, 1, 28, 28)
    return out


def measure(model: Any, splits: dict, cfg: EvalConfig, proxy: dict, tmp: Path) -> dict:
    def score(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            parts = [model.anomaly_score(torch.from_numpy(images[i : i + 500]))
                     for i in range(0, len(images), 500)]  # fmt: skip
        return torch.cat(parts).double().numpy()

    scored = scored_normals(splits, cfg)
    metrics, _ = detection_metrics(score, scored, cfg, tmp)
    cal = Calibration.load(tmp)
    test_x = scored["test"][0].numpy()
    normal = cal.statistic(score(test_x), test_x)
    for kind, images in proxy.items():
        stat = cal.statistic(score(images), images)
        metrics[f"proxy_auroc/{kind}"] = M.auroc(normal, stat)
        metrics[f"proxy_tpr/{kind}"] = float(np.mean(stat > 1.0))
    tuned = [metrics[f"anomaly_auroc/{k}"] for k in EARLIER_KINDS]
    content = [metrics[f"proxy_auroc/{k}"] for k in proxy]
    metrics["tuned8_mean"] = float(np.mean(tuned))
    metrics["proxy_mean"] = float(np.mean(content))
    metrics["choice_mean"] = float(np.mean(tuned + content))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--weight", type=float, default=1.0, help="negative_weight")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a GAN model setting for every variant (repeatable; YAML values)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument(
        "--choose", choices=("choice", "suite"), default="choice",
        help="the rule's metric: choice_mean (the first three passes) or the tuned suite's mean",
    )  # fmt: skip
    parser.add_argument(
        "--save-dir", type=Path, default=None,
        help="save each trained GAN as <dir>/<variant>-s<seed>/gan (weights + config), for "
             "benchmarks/bench_union.py --models",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write every metric here")
    args = parser.parse_args()
    start = time.perf_counter()
    params = load_params(args.params)
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    gan = section(params, "gan")
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    train_cfg = {**section(params, "train"), **(gan.get("train") or {})}
    splits = {s: load_tensors(args.data_dir, s) for s in SPLITS}
    proxy = content_proxy(splits["test"], cfg.anomaly_per_kind, seed=0)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.variants:
        for seed in args.seeds:
            extra = VARIANTS[name] | ({"negative_weight": args.weight} if VARIANTS[name] else {})
            model_cfg = dict(gan.get("model") or {}) | extra | overrides
            steps = {"steps": args.steps} if args.steps else {}
            tcfg = TrainConfig.from_dict(
                train_cfg | steps | {"seed": seed, "progress": False, "num_threads": args.threads}
            )
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as ckpt:
                result = train("gan", model_cfg, tcfg, splits["train"], splits["val"], Path(ckpt))
                model = result.model.eval()
                torch.set_num_threads(args.threads)
                trained = time.perf_counter() - t0
                m = measure(model, splits, cfg, proxy, Path(ckpt) / "eval")
                if args.save_dir:
                    save_model(model, args.save_dir / f"{name}-s{seed}" / "gan")
            m |= {"train_s": trained, "measure_s": time.perf_counter() - t0 - trained}
            results.setdefault(name, {})[str(seed)] = m
            print(f"{name} seed {seed}: tuned {m['tuned8_mean']:.4f} proxy "
                  f"{m['proxy_mean']:.4f} choice {m['choice_mean']:.4f} suite "
                  f"{m['suite_auroc_mean']:.4f} (train {trained:.0f} s)", flush=True)  # fmt: skip

    def mean(name: str, key: str) -> float:
        return float(np.mean([m[key] for m in results[name].values()]))

    rule = "choice_mean" if args.choose == "choice" else "suite_auroc_mean"
    chosen = max(results, key=lambda n: mean(n, rule))
    kinds = [k for k in REAL_KINDS if f"heldout_auroc/{k}" in results[chosen][str(args.seeds[0])]]
    later = [k for k in ANOMALY_KINDS if k not in EARLIER_KINDS]  # the suite's own later kinds
    head = ["variant", "seed", "choice mean", "tuned mean", *PROXY, "suite mean",
            *[f"{k} (suite)" for k in later], "test FPR",
            *[f"{k} (flagged)" for k in kinds]]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, by_seed in results.items():
        for seed, m in by_seed.items():
            held = [f"{m[f'heldout_auroc/{k}']:.3f} ({m[f'heldout_tpr/{k}']:.0%})" for k in kinds]
            proxy_cells = [f"{m[f'proxy_auroc/{k}']:.3f} ({m[f'proxy_tpr/{k}']:.0%})"
                           for k in PROXY]  # fmt: skip
            suite = [f"{m[f'anomaly_auroc/{k}']:.3f} ({m[f'anomaly_tpr/{k}']:.0%})"
                     for k in later]  # fmt: skip
            cells = [seed, f"{m['choice_mean']:.4f}", f"{m['tuned8_mean']:.4f}",
                     *proxy_cells, f"{m['suite_auroc_mean']:.4f}", *suite,
                     f"{m['test_fpr']:.3f}", *held]  # fmt: skip
            print(f"| {name} | " + " | ".join(cells) + " |")
    for name in results:
        tuned, content = mean(name, "tuned8_mean"), mean(name, "proxy_mean")
        suite = mean(name, "suite_auroc_mean")
        print(f"{name}: choice mean over seeds {mean(name, 'choice_mean'):.4f}, tuned "
              f"{tuned:.4f}, proxy {content:.4f}, suite {suite:.4f}")  # fmt: skip
    gain = mean(chosen, rule) - mean("served", rule) if "served" in results else 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    wall = time.perf_counter() - start
    print(f"\nchosen on {rule}: {chosen} (+{gain:.4f} over served; a product change needs "
          f">= 0.002); "
          f"wall {wall:.0f} s, peak RSS {rss:.2f} GB")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"chosen": chosen, "wall_s": wall, "peak_rss_gb": rss,
                                         "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
