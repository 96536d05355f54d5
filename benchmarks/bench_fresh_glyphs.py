"""A content question on images nobody has looked at: Cyrillic or Georgian letters in MNIST's
format (issue 24; docs/anomaly.md "Fifteenth pass", the caution in "Left to do").

The tuned suite's content and format kinds were each added after a reading of the held-out
benchmark, so that benchmark no longer measures the suite's design blind. This bench draws a
kind that played no part in any choice: `--alphabet cyrillic`, the Cyrillic letters whose
shape is no Latin or Greek letter's (CYRILLIC below; looked at once, in the fifteenth pass), or
`--alphabet georgian`, the Georgian (Mkhedruli) letters whose shape is no digit's and no Latin
or Greek letter's (GEORGIAN; chosen by eye from a rendering, before any model was scored on
them: docs/anomaly.md "Sixteenth pass"), or `--alphabet armenian` (ARMENIAN, chosen the same
way; only 10 of 76 letters qualify), typeset in the DejaVu faces matplotlib ships (every
face has every one of them; checked at run time), or `--alphabet ethiopic` (ETHIOPIC, 13 of
the 33 base letters, chosen the same way: "Nineteenth pass"), typeset in the four Noto
Ethiopic faces of Debian's `fonts-noto-core` (install it first), or `--alphabet tifinagh`
(TIFINAGH, 11 of the 56 letters of the Tifinagh block, chosen the same way: "Twenty-first
pass"), typeset in Noto Sans Tifinagh (the package's eleven regional Tifinagh faces draw these
letters with the same outlines, so one face), 16-24 px, then brought to MNIST's format
(models.digit_format.to_mnist_format) like the held-out `*_mnist` kinds.
`--n` images, seed `--seed`, drawn once.

Each `--models NAME=DIR[@VARIANT]` is a directory of trained families (a run's
`artifacts/models`, or one holding `bench_negatives.py --save-dir`'s GAN beside the run's
autoencoder); the product's ensemble (params.yaml `ensemble`, changed by `bench_union.py`'s
VARIANT when one is named; pipelines.stages.ensemble.fit_configured) is built from it,
calibrated on validation normals exactly as evaluation calibrates a family (detection_metrics),
and scored on the test normals and the fresh letters: AUROC with a 95 % bootstrap interval
(2,000 draws over both), the share flagged at the served threshold, and the test FPR. With
`--against NAME`, paired differences (the same draws) from that entry.

It chooses nothing: printed once, a check of what the tuned suite chose and did not choose.

    .venv/bin/python benchmarks/bench_fresh_glyphs.py --data-dir data \
        --models served=artifacts/models --models long=/tmp/long-s0 --against served

Not a test: it reads a finished run's models and data. Prints time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_union import VARIANTS, build, scorer  # noqa: E402
from models.calibration import Calibration  # noqa: E402
from models.digit_format import to_mnist_format  # noqa: E402
from pipelines.data.dataset import SPLITS, load_tensors  # noqa: E402
from pipelines.evaluation import metrics as M  # noqa: E402
from pipelines.evaluation.evaluator import EvalConfig, detection_metrics, scored_normals  # noqa: E402
from pipelines.evaluation.heldout import _FONT_FILES, _matplotlib_data, typeset  # noqa: E402
from pipelines.settings import load_params, section  # noqa: E402
from pipelines.stages.ensemble import EnsembleParams  # noqa: E402

# capitals and small letters whose shape is no Latin or Greek letter's (А В Е К М Н О Р С Т Х
# and а е о р с у х, Г П Ф and п are left out: a Latin or Greek letter has their shape)
CYRILLIC = "БДЖЗИЙЛЦЧШЩЪЫЬЭЮЯбвгджзийклмнтцчшщъыьэюя"
# 17 of the 33 Georgian letters; left out, as like a digit or a Latin or Greek letter:
# ბ (δ, b) ვ კ პ ჟ ჰ (3) ზ (8) ი (ɑ, o) ნ რ (6) ს ხ (b) ყ (y) ჩ (h) ც (G) ძ (d)
GEORGIAN = "აგდეთლმოტუფქღშწჭჯ"
# 10 of the 76 Armenian letters (capitals and small, chosen by eye from a DejaVu Sans rendering
# before any model was scored on them); the others look like a digit (Յ Ց 3, Տ 5, Զ Չ Ջ շ 2,
# օ Օ 0) or a Latin or Greek letter (ա w, բ p, գ q, ե է E, թ θ, ի h, լ l, ծ δ, ղ η, յ j, ն ս u,
# ո ռ n, պ w, ց g, փ Փ φ, ք p, Ճ Δ, ...), or nearly so
ARMENIAN = "ԴԽՀըխձճմվտ"
# 13 of the 33 Ethiopic base letters (first order), chosen by eye from a rendering in Noto Sans
# and Serif Ethiopic before any model was scored on them (docs/anomaly.md "Nineteenth pass");
# left out as like a digit or a Latin or Greek letter: ሀ (U) ለ (λ) ሠ ወ (w) ሰ ሸ (U) ቀ (φ) በ (∩)
# ተ (t) ኀ ኘ ገ (7) ነ (1) አ (λ) ዐ (0) ዘ ዠ (H) የ (9) ፀ (θ) ፐ (T)
ETHIOPIC = "ሐመረቸከኸደጀጠጨጰጸፈ"
# 11 of the 56 Tifinagh letters (U+2D30-U+2D67), chosen by eye from a rendering in the twelve
# Noto Tifinagh faces before any model was scored on them (docs/anomaly.md "Twenty-first
# pass"); left out as like a digit or a Latin or Greek letter: ⴰ ⵔ ⵙ (o, 0) ⴱ (θ) ⴶ ⵊ ⵏ (I)
# ⴷ (Λ) ⴸ (V) ⴹ ⵟ (E) ⴺ (3) ⴼ (H) ⴽ ⴿ (K) ⵀ (Φ) ⵁ ⵚ (Ø) ⵃ (λ) ⵅ ⵝ (X) ⵇ (Z) ⵉ (ε) ⵍ (N)
# ⵎ ⵛ ⵞ (C) ⵑ (!) ⵒ (6) ⵓ (8) ⵕ (Q) ⵖ (4) ⵜ (t) ⵠ (Δ) ⵡ (U) ⵢ (5) ⵤ (Γ) ⵦ (<) ⵧ (-), and
# the letters made of dots only (ⴾ ⵂ ⵆ ⵈ ⵗ ⵘ)
TIFINAGH = "ⴲⴳⴴⴵⴻⵄⵋⵌⵐⵣⵥ"
ALPHABETS = {"cyrillic": CYRILLIC, "georgian": GEORGIAN, "armenian": ARMENIAN,
             "ethiopic": ETHIOPIC, "tifinagh": TIFINAGH}  # fmt: skip
# alphabets DejaVu lacks are typeset in Debian's Noto faces (`apt-get install fonts-noto-core`)
NOTO = Path("/usr/share/fonts/truetype/noto")
NOTO_FACES = {"ethiopic": tuple(f"Noto{face}Ethiopic-{weight}.ttf" for face in ("Sans", "Serif")
                                for weight in ("Regular", "Bold")),
              "tifinagh": ("NotoSansTifinagh-Regular.ttf",)}  # fmt: skip


def faces_with(chars: str, alphabet: str | None = None) -> list[str]:
    """The faces whose character map has every char: the DejaVu faces
    (pipelines.evaluation.heldout), or the alphabet's Noto faces (NOTO_FACES; full paths)."""
    from fontTools.ttLib import TTFont

    if alphabet in NOTO_FACES:
        files = [NOTO / name for name in NOTO_FACES[alphabet]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise SystemExit(f"{alphabet} needs Debian's Noto faces ({', '.join(missing)} "
                             "missing): apt-get install fonts-noto-core")  # fmt: skip
    else:
        files = [_matplotlib_data() / "fonts" / "ttf" / name for name in _FONT_FILES]
    out = []
    for path in files:
        cmap = TTFont(str(path)).getBestCmap()
        if all(ord(c) in cmap for c in chars):
            out.append(str(path) if alphabet in NOTO_FACES else path.name)
    return out


def fresh_mnist(n: int, seed: int, alphabet: str = "cyrillic") -> np.ndarray:
    """`n` letters of `alphabet` (ALPHABETS), typeset like the held-out glyph kinds, in
    MNIST's format."""
    chars = ALPHABETS[alphabet]
    faces = faces_with(chars, alphabet)
    if not faces:
        raise SystemExit(f"no face (DejaVu, or Noto for {list(NOTO_FACES)}) has every "
                         f"{alphabet} letter")  # fmt: skip
    glyphs = typeset(np.random.default_rng(seed), n, chars, faces)
    return to_mnist_format(glyphs)  # float32 (n, 1, 28, 28)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", action="append", required=True, metavar="NAME=DIR[@VARIANT]")
    parser.add_argument("--against", default=None, help="a NAME: paired differences from it")
    parser.add_argument("--alphabet", choices=list(ALPHABETS), default="cyrillic")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    entries = dict(item.partition("=")[::2] for item in args.models)
    variants = [d.partition("@")[2] for d in entries.values() if "@" in d]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if args.against is not None and args.against not in entries:
        parser.error(f"--against {args.against!r} is not a --models NAME")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    params = load_params(args.params)
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    base = section(params, "ensemble")
    splits = {s: load_tensors(args.data_dir, s) for s in SPLITS}
    scored = scored_normals(splits, cfg)
    fresh = fresh_mnist(args.n, args.seed, args.alphabet)
    kind, chars = f"{args.alphabet}_mnist", ALPHABETS[args.alphabet]
    test_x = scored["test"][0].numpy()
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        t0 = time.perf_counter()
        directory, _, variant = entry.partition("@")
        settings = EnsembleParams.from_dict(base | VARIANTS[variant or "served"])
        score = scorer(build(settings, Path(directory), splits, cfg))

        with tempfile.TemporaryDirectory() as tmp:
            metrics, _ = detection_metrics(score, scored, cfg, Path(tmp))
            cal = Calibration.load(Path(tmp))
        normal, odd = cal.statistic(score(test_x), test_x), cal.statistic(score(fresh), fresh)
        stats[name] = (normal, odd)
        rows[name] = {
            "auroc": M.auroc(normal, odd),
            "flagged": float(np.mean(odd > 1.0)),
            "test_fpr": float(np.mean(normal > 1.0)),
            "suite_auroc_mean": metrics["suite_auroc_mean"],
            "letters_mnist": metrics["heldout_auroc/letters_mnist"],
            "seconds": time.perf_counter() - t0,
        }
        print(f"{name}: {kind} {rows[name]['auroc']:.3f} ({rows[name]['seconds']:.0f} s)",
              flush=True)  # fmt: skip
    rng = np.random.default_rng(args.seed)
    n_normal = len(test_x)
    draws = [(rng.integers(0, n_normal, n_normal), rng.integers(0, args.n, args.n))
             for _ in range(args.draws)]  # fmt: skip
    boot = {name: np.array([M.auroc(normal[i], odd[j]) for i, j in draws])
            for name, (normal, odd) in stats.items()}  # fmt: skip
    print(
        f"\n{kind}: {args.n} letters ({len(chars)} kinds of letter, "
        f"{len(faces_with(chars, args.alphabet))} faces), seed {args.seed}; "
        f"{args.draws} paired draws"
    )
    head = ["models", f"{kind} AUROC [95 %]", "flagged", "test FPR", "tuned mean",
            "letters_mnist (held-out)"]  # fmt: skip
    if args.against:
        head.append(f"− {args.against} [95 %]")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, row in rows.items():
        lo, hi = np.percentile(boot[name], [2.5, 97.5])
        cells = [name, f"{row['auroc']:.3f} [{lo:.3f}, {hi:.3f}]", f"{row['flagged']:.0%}",
                 f"{row['test_fpr']:.3f}", f"{row['suite_auroc_mean']:.4f}",
                 f"{row['letters_mnist']:.3f}"]  # fmt: skip
        if args.against:
            diff = boot[name] - boot[args.against]
            d_lo, d_hi = np.percentile(diff, [2.5, 97.5])
            row["diff"] = [row["auroc"] - rows[args.against]["auroc"], d_lo, d_hi]
            cells.append(f"{row['diff'][0]:+.3f} [{d_lo:+.3f}, {d_hi:+.3f}]")
        print("| " + " | ".join(cells) + " |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    wall = time.perf_counter() - start
    print(f"\nwall {wall:.0f} s, peak RSS {rss:.2f} GB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "wall_s": wall, "peak_rss_gb": rss},
                                        indent=1, default=float))  # fmt: skip


if __name__ == "__main__":
    main()
