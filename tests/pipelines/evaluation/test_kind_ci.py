"""benchmarks/bench_kind_ci.py: per-kind AUROC intervals and paired differences from evidence."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.paired import Evidence, _auroc


def _evidence(shift: float, seed: int) -> Evidence:
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=500)
    kinds = np.repeat(np.array(["heldout/a", "heldout/b"]), 60)
    suite = rng.normal(size=120) + np.where(kinds == "heldout/a", 1.0 + shift, 0.2)
    feats = np.zeros((4, 2), dtype=np.float32)
    return Evidence(feats, feats, normals, suite, kinds)


def test_intervals_hold_the_point_and_a_real_difference_is_seen_paired() -> None:
    from benchmarks.bench_kind_ci import kind_intervals, markdown

    base = _evidence(0.0, 0)
    better = Evidence(base.sample_features, base.reference_features, base.test_scores,
                      base.suite_scores + np.where(base.suite_kinds == "heldout/a", 0.5, 0.0),
                      base.suite_kinds)  # fmt: skip
    rows = kind_intervals({"base": base, "better": better}, ["heldout/a", "heldout/b"], "base",
                          draws=300)  # fmt: skip
    a, b = rows
    assert a["n"] == b["n"] == 60
    items = base.suite_kinds == "heldout/a"
    assert a["base"][0] == pytest.approx(_auroc(base.test_scores, base.suite_scores[items]))
    for row in rows:
        for name in ("base", "better"):
            point, low, high = row[name]
            assert low <= point <= high
    assert a["better-base"][1] > 0  # the paired interval of a real difference excludes 0
    assert b["better-base"] == (0.0, 0.0, 0.0)  # identical scores on kind b: no difference
    table = markdown(rows, ["base", "better"], "base")
    assert "| heldout/a | 60 |" in table and "better − base" in table
    with pytest.raises(ValueError, match="no images of kind"):
        kind_intervals({"base": base}, ["heldout/c"], "base", draws=100)
    other = _evidence(0.0, 1)
    unpaired = Evidence(other.sample_features, other.reference_features, other.test_scores[:10],
                        other.suite_scores, other.suite_kinds)  # fmt: skip
    with pytest.raises(ValueError, match="not paired"):
        kind_intervals({"base": base, "x": unpaired}, ["heldout/a"], "base", draws=100)
