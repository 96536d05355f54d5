"""How long a model takes to load, with its derived state saved and without (models.io).

The neighbour searches' coarse indexes (the GAN's `dknn` bank, the ensemble's encoder-kNN bank)
are saved with the weights since 2026-12-07; a file from before lacks them and its load derives
them. This bench takes one model directory (`config.json` + `model.safetensors`: a run's
`artifacts/models/<family>` or a bundle), writes two copies of it into a temporary folder, one
as the current code saves it (with the index) and one with every derived tensor dropped (as
older code saved it), and loads each `--repeats` times in turn, checking that both give the
same anomaly scores on a fixed batch. Prints seconds per load, file sizes and peak RSS.

    .venv/bin/python benchmarks/bench_load.py --model artifacts/models/ensemble

Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.io import WEIGHTS_FILE, derived_keys, load_model, read_config, save_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a model directory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory(prefix="genops-load-") as tmp:
        saved, older = Path(tmp) / "with-index", Path(tmp) / "without-index"
        model = load_model(args.model)
        save_model(model, saved, read_config(args.model).get("extra"))
        dropped = derived_keys(model)
        del model
        state = {k: v for k, v in load_file(saved / WEIGHTS_FILE).items() if k not in dropped}
        older.mkdir()
        save_file(state, older / WEIGHTS_FILE, metadata={"family": read_config(saved)["family"]})
        (older / "config.json").write_bytes((saved / "config.json").read_bytes())
        del state
        probe = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {"without the index (before)": [], "with it (now)": []}
        scores = {}
        for _ in range(args.repeats):
            for name, directory in zip(times, (older, saved), strict=True):
                t0 = time.perf_counter()
                loaded = load_model(directory)
                times[name].append(time.perf_counter() - t0)
                with torch.no_grad():
                    scores[name] = loaded.anomaly_score(probe)
                del loaded
        same = torch.equal(*scores.values())
        sizes = [(d / WEIGHTS_FILE).stat().st_size / 1e6 for d in (older, saved)]
    print(f"\n{args.model} ({read_config(args.model)['family']}), {args.threads} threads, "
          f"{args.repeats} loads each in turn; derived tensors: {sorted(dropped)}\n")  # fmt: skip
    print("| file | MB | load s (each) |\n|---|---:|---|")
    for (name, values), size in zip(times.items(), sizes, strict=True):
        print(f"| {name} | {size:.0f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nscores identical: {same}; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")  # fmt: skip
    if not same:
        raise SystemExit("the two files score differently")


if __name__ == "__main__":
    main()
