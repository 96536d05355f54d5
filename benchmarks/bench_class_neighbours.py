"""Does a letter read as a confident wrong digit? Class-aware neighbour signals on the tuned suite
(issue 24; docs/anomaly.md "Seventeenth pass").

The class-entropy view (the GAN encoder's doubt) helps the stroke kinds and not the letters: a
letter is often a confident wrong digit. This asks whether the GAN's neighbour space sees it
when the class is taken into account. In D's penultimate features (the `dknn` bank, one row
per training digit, its label known), for each image:

- `dknn`: the served member's statistic (mean 1 - cos to the 10 nearest training digits);
- `class-conditional`: the same, over the training digits of the encoder's predicted class only;
- `excess`: class-conditional minus dknn (how much further the predicted class lies);
- `disagreement`: the share of the 10 nearest whose label is not the predicted class;
- `label entropy`: the entropy of those 10 labels;
- `label surprise`: 1 - the mean over those 10 of the encoder's probability of their label (a
  continuous disagreement: no ties at 0 among normals).

Printed for the tuned suite's kinds (the product's suite, as the evaluation builds it on the
test digits): AUROC against the test normals alone, and for `excess`, `disagreement` and `label
surprise` in a max-union with the served ensemble's raw statistic (params.yaml `ensemble`), each
a validation-normal p-value, the signal's scaled to spend a share w of a view's budget, as
bench_class_confidence.py does. Exhaustive search (exact, not the served coarse index).
Exploratory: it chooses nothing, and prints no held-out kind.

    .venv/bin/python benchmarks/bench_class_neighbours.py --data-dir data --models artifacts/models

Not a test: it reads a finished run's models and data. Prints time and peak RSS.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_class_confidence import (  # noqa: E402
    class_probabilities,
    load_setting,
    parse_args,
    print_table,
    with_union,
)

K = 10


@torch.no_grad()
def features(gan, images: np.ndarray) -> torch.Tensor:
    """(N, F) unit-length D features, float32."""
    return torch.cat(
        [gan._features(torch.as_tensor(images[i : i + 512])) for i in range(0, len(images), 512)]
    )


@torch.no_grad()
def signals(
    query: torch.Tensor, probs: np.ndarray, bank: torch.Tensor, labels: torch.Tensor
) -> dict[str, np.ndarray]:
    """Every signal of the docstring for `query` features, exact search over `bank`."""
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in ("dknn", "class-conditional", "disagreement", "label entropy",
                        "label surprise")
    }  # fmt: skip
    prob = torch.as_tensor(probs)
    pred = prob.argmax(1)
    for i in range(0, query.shape[0], 1024):
        sims = query[i : i + 1024] @ bank.T  # (n, B)
        top = sims.topk(K, dim=1)
        out["dknn"].append((1 - top.values.mean(1)).numpy())
        p = pred[i : i + 1024]
        same = labels[None, :] == p[:, None]
        cond = sims.masked_fill(~same, -2.0).topk(K, dim=1).values
        out["class-conditional"].append((1 - cond.mean(1)).numpy())
        near = labels[top.indices]  # (n, K)
        out["disagreement"].append((near != p[:, None]).float().mean(1).numpy())
        counts = torch.nn.functional.one_hot(near, 10).float().mean(1)
        out["label entropy"].append(-(counts * (counts + 1e-12).log()).sum(1).numpy())
        agree = prob[i : i + 1024].gather(1, near).mean(1)  # p(label of each neighbour)
        out["label surprise"].append((1 - agree).numpy())
    res = {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}
    res["excess"] = res["class-conditional"] - res["dknn"]
    return res


def main() -> None:
    args = parse_args(__doc__)
    start = time.perf_counter()
    setting = load_setting(args)
    gan, (train_x, train_y) = setting["gan"], setting["splits"]["train"]
    bank = gan.score_bank.float()
    if bank.shape[0] != len(train_x):  # not one row per training digit: build it here
        bank = features(gan, train_x.numpy())
    got = {
        name: signals(
            features(gan, setting[name]), class_probabilities(gan, setting[name]), bank, train_y
        )
        for name in ("val", "test", "suite")
    }
    for name, values in got["val"].items():  # ties: a threshold needs room above the median
        print(f"{name}: {np.mean(values <= values.min()):.1%} of validation normals at its minimum")
    rows = {name: (got["test"][name], got["suite"][name]) for name in got["test"]}
    rows["served union"] = setting["union"][1:]
    for name in ("excess", "disagreement", "label surprise"):
        signal = tuple(got[s][name] for s in ("val", "test", "suite"))
        rows |= with_union(setting["union"], signal, name)
    print_table(rows, setting["kinds"], start)


if __name__ == "__main__":
    main()
