"""The Great Expectations gate over the data splits.

Each split becomes a per-image table (one row per image: label, shape, dtype, pixel range,
ink mass, content hash, share of its class in the split). A GX 1.x context holds one suite
and checkpoint per split plus a cross-split checkpoint (no image in two places: train/test
leakage). Any failed expectation fails the gate; Data Docs HTML is written under
`<report_dir>/data_docs/index.html` and a JSON summary beside it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.config import Config
from pipelines.data.dataset import SPLITS, load_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationConfig(Config):
    """The GX gate's thresholds (params.yaml `validate`)."""

    min_rows: dict[str, int] = field(
        default_factory=lambda: {"train": 1000, "val": 100, "test": 100}
    )
    class_share_tolerance: float = 0.5  # each class's share within (1 ± tol) / 10
    ink_min: float = 0.01  # mean intensity in [0, 1]: below = blank image
    ink_max: float = 0.6  # above = saturated image

    def validate(self) -> None:
        if not 0.0 <= self.class_share_tolerance < 1.0:
            raise ValueError(
                f"class_share_tolerance must be in [0, 1), got {self.class_share_tolerance}"
            )
        if not 0.0 <= self.ink_min < self.ink_max <= 1.0:
            raise ValueError(
                f"need 0 <= ink_min < ink_max <= 1, got {self.ink_min}, {self.ink_max}"
            )
        unknown = set(self.min_rows) - set(SPLITS)
        if unknown:
            raise ValueError(f"min_rows names unknown split(s) {sorted(unknown)}")


@dataclass
class ValidationReport:
    success: bool
    failures: list[dict[str, Any]]
    docs_index: str
    rows: dict[str, int]

    def summary(self) -> str:
        head = "PASSED" if self.success else f"FAILED ({len(self.failures)} expectation(s))"
        lines = [f"Data validation {head}: " + ", ".join(f"{s}={n}" for s, n in self.rows.items())]
        for f in self.failures:
            lines.append(f"  [{f['split']}] {f['expectation']}({f['target']}): {f['detail']}")
        lines.append(f"  Data Docs: {self.docs_index}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_table(data_dir: Path, split: str) -> pd.DataFrame:
    """One row per image of a split (read without shape/dtype checks: GX judges them)."""
    images, labels = load_split(data_dir, split, strict=False)
    n = len(images)
    flat = images.reshape(n, -1)
    scale = 255.0 if images.dtype == np.uint8 or flat.size == 0 or flat.max() > 1.0 else 1.0
    label_values = labels.astype(np.int64)
    counts = np.bincount(np.clip(label_values, 0, None), minlength=10)
    return pd.DataFrame(
        {
            "split": split,
            "row": np.arange(n),
            "label": label_values,
            "height": images.shape[1],
            "width": images.shape[2] if images.ndim > 2 else 1,
            "dtype": str(images.dtype),
            "pixel_min": flat.min(axis=1).astype(np.float64) if n else [],
            "pixel_max": flat.max(axis=1).astype(np.float64) if n else [],
            "ink_mass": flat.astype(np.float64).mean(axis=1) / scale if n else [],
            "content_hash": [hashlib.sha1(r.tobytes()).hexdigest() for r in flat],
            "class_share": counts[np.clip(label_values, 0, None)] / max(n, 1),
        }
    )


def _split_expectations(gx, cfg: ValidationConfig, split: str) -> list:
    e = gx.expectations
    share = 1.0 / 10
    return [
        e.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows.get(split, 1)),
        e.ExpectColumnValuesToBeInSet(column="height", value_set=[28]),
        e.ExpectColumnValuesToBeInSet(column="width", value_set=[28]),
        e.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        e.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
        e.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
        e.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=9),
        e.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(range(10))),
        e.ExpectColumnValuesToBeBetween(
            column="class_share",
            min_value=share * (1 - cfg.class_share_tolerance),
            max_value=share * (1 + cfg.class_share_tolerance),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="ink_mass", min_value=cfg.ink_min, max_value=cfg.ink_max
        ),
        e.ExpectColumnValuesToNotBeNull(column="content_hash"),
    ]


def _make_checkpoint(gx, ctx, name: str, expectations: list):
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    asset = ctx.data_sources.get("digits").add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe(f"{name}_all")
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    return ctx.checkpoints.add(
        gx.Checkpoint(
            name=f"{name}_checkpoint",
            validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
        )
    )


def _describe(result, table: pd.DataFrame) -> str:
    res = result.result or {}
    if "unexpected_count" in res:
        examples = res.get("partial_unexpected_list", [])[:5]
        rows = res.get("unexpected_index_list") or []
        where = ""
        if rows and "split" in table:
            picked = table.iloc[[i for i in rows[:6] if isinstance(i, int | np.integer)]]
            where = "; rows " + ", ".join(
                f"{s}#{r}" for s, r in zip(picked["split"], picked["row"], strict=True)
            )
        return f"{res['unexpected_count']} of {len(table)} rows unexpected, e.g. {examples}{where}"
    return f"observed {res.get('observed_value')!r}"


def validate_data(
    data_dir: Path, report_dir: Path, cfg: ValidationConfig | None = None
) -> ValidationReport:
    """Run the GX gate over `data_dir`; write Data Docs and summary.json under `report_dir`."""
    import great_expectations as gx

    cfg = cfg or ValidationConfig()
    report_dir = Path(report_dir).resolve()
    docs_dir = report_dir / "data_docs"
    ctx = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own summary instead
    ctx.add_data_docs_site(
        site_name="genops",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    ctx.data_sources.add_pandas("digits")
    tables = {split: image_table(data_dir, split) for split in SPLITS}
    tables["cross_split"] = pd.concat(tables.values(), ignore_index=True)
    failures: list[dict[str, Any]] = []
    for name, table in tables.items():
        expectations = (
            [gx.expectations.ExpectColumnValuesToBeUnique(column="content_hash")]
            if name == "cross_split"
            else _split_expectations(gx, cfg, name)
        )
        checkpoint = _make_checkpoint(gx, ctx, name, expectations)
        run = checkpoint.run(batch_parameters={"dataframe": table})
        for validation in run.run_results.values():
            for result in validation.results:
                if result.success:
                    continue
                kwargs = result.expectation_config.kwargs
                failures.append(
                    {
                        "split": "all splits" if name == "cross_split" else name,
                        "expectation": result.expectation_config.type,
                        "target": kwargs.get("column", "table"),
                        "detail": _describe(result, table),
                    }
                )
    rows = {s: len(tables[s]) for s in SPLITS}
    report = ValidationReport(not failures, failures, str(docs_dir / "index.html"), rows)
    from models.io import atomic_write_json

    atomic_write_json(report_dir / "summary.json", report.to_dict())
    return report
