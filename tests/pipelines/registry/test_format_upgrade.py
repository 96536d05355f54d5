"""A candidate that is the champion saved in a newer format (the same learned state, config and
data; weights that differ only in derived state, e.g. the neighbour search's coarse index that
older code did not save) takes the alias without a test: otherwise the gate keeps the old
file forever (+0 [+0, +0] never clears a margin) and a served champion derives its index at
every load. Anything else that differs is another model and is tested as before."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from models.io import WEIGHTS_FILE, read_config, save_model, sha256_file, state_sha256
from models.spec import CONFIG_FILE, TASKS, Tag
from pipelines import tracking
from pipelines.registry import client as registry
from tests.models.contract import make_scoring

TRAIN = slice(0, 400)
INDEX = ("score_proj", "score_coarse")  # the GAN's derived state


@pytest.fixture(scope="module")
def gan(real_digits):
    return make_scoring("gan", real_digits[0][TRAIN])


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOPS_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _rewrite(directory, change) -> None:
    state = load_file(directory / WEIGHTS_FILE)
    change(state)
    save_file(
        state, directory / WEIGHTS_FILE, metadata={"family": read_config(directory)["family"]}
    )


def _saved(gan, directory, without_index=False, nudge=False):
    save_model(gan, directory)
    if without_index:  # as the code before the index was saved wrote it
        _rewrite(directory, lambda s: [s.pop(k) for k in INDEX])
    if nudge:  # another learned state with the same config
        key = next(
            k for k, v in load_file(directory / WEIGHTS_FILE).items() if v.is_floating_point()
        )
        _rewrite(directory, lambda s: s.__setitem__(key, s[key] + 1e-3))
    return directory


def _register(store, directory, data="d1", tag_state=True) -> str:
    run_id = tracking.log_run("eval-gan", params={}, tags={}, metrics={"anomaly_auroc_mean": 0.9},
                              artifacts={"model": directory})  # fmt: skip
    tags = {
        Tag.FAMILY: "gan",
        Tag.DATA_VERSION: data,
        Tag.WEIGHTS_SHA256: sha256_file(directory / WEIGHTS_FILE),
        Tag.CONFIG_SHA256: sha256_file(directory / CONFIG_FILE),
    }
    if tag_state:  # a version registered before the tag existed has none
        tags[Tag.STATE_SHA256] = state_sha256(directory / WEIGHTS_FILE)
    return registry.register_version(TASKS["anomaly"].registered_model, run_id, "model", tags)


def _compare_calls():
    asked: list[str] = []

    def compare(mv):
        asked.append(str(mv.version))
        raise RuntimeError("tested")  # stands in for the paired bootstrap: reached, not run

    return asked, compare


def test_state_sha256_sees_learned_state_and_not_the_index(gan, tmp_path):
    new = _saved(gan, tmp_path / "new")
    old = _saved(gan, tmp_path / "old", without_index=True)
    other = _saved(gan, tmp_path / "other", nudge=True)
    assert set(INDEX) <= set(load_file(new / WEIGHTS_FILE))
    assert sha256_file(new / WEIGHTS_FILE) != sha256_file(old / WEIGHTS_FILE)
    assert state_sha256(new / WEIGHTS_FILE) == state_sha256(old / WEIGHTS_FILE)
    assert state_sha256(other / WEIGHTS_FILE) != state_sha256(new / WEIGHTS_FILE)


def test_the_champion_in_a_newer_format_takes_the_alias_without_a_test(gan, store):
    task = TASKS["anomaly"]
    old = _register(store, _saved(gan, store / "old", without_index=True), tag_state=False)
    registry.gate(task, old, "gan", {"anomaly_auroc_mean": 0.9}, "d1", margin=0.002)
    new = _register(store, _saved(gan, store / "new"))
    asked, compare = _compare_calls()
    # a pipeline that canaries its candidates still moves the alias: nothing to canary
    d = registry.gate(task, new, "gan", {"anomaly_auroc_mean": 0.9}, "d1", margin=0.002,
                      compare=compare, promote_to="challenger")  # fmt: skip
    assert asked == [] and d.promoted and d.method == registry.FORMAT_UPGRADE, d
    assert str(registry.champion(task).version) == new and registry.challenger(task) is None
    # the legacy champion's state was computed from its registered weights, and kept as its tag
    tags = registry._client().get_model_version(task.registered_model, old).tags
    assert tags[Tag.STATE_SHA256] == state_sha256(store / "new" / WEIGHTS_FILE)
    history = [e for e in registry.history() if e["version"] == new]
    assert history and history[-1]["method"] == registry.FORMAT_UPGRADE


@pytest.mark.parametrize("change", ["learned state", "data version", "config"])
def test_anything_else_that_differs_is_another_model_and_is_tested(gan, store, change):
    task = TASKS["anomaly"]
    old = _register(store, _saved(gan, store / "old", without_index=True))
    registry.gate(task, old, "gan", {"anomaly_auroc_mean": 0.9}, "d1", margin=0.002)
    directory = _saved(gan, store / "new", nudge=change == "learned state")
    if change == "config":
        payload = read_config(directory) | {"extra": {"note": "recalibrated"}}
        (directory / CONFIG_FILE).write_text(json.dumps(payload))
    new = _register(store, directory, data="d2" if change == "data version" else "d1")
    asked, compare = _compare_calls()
    with pytest.raises(RuntimeError, match="tested"):
        registry.gate(task, new, "gan", {"anomaly_auroc_mean": 0.95}, "d1", margin=0.002,
                      compare=compare)  # fmt: skip
    assert asked == [old]
    assert str(registry.champion(task).version) == old


def test_the_very_weights_again_are_still_a_copy(gan, store):
    task = TASKS["anomaly"]
    first = _register(store, _saved(gan, store / "a"))
    registry.gate(task, first, "gan", {"anomaly_auroc_mean": 0.9}, "d1", margin=0.002)
    again = _register(store, _saved(gan, store / "b"))
    d = registry.gate(task, again, "gan", {"anomaly_auroc_mean": 0.99}, "d1", margin=0.0)
    assert not d.promoted and d.method == "same-weights"
    assert str(registry.champion(task).version) == first
