"""The neighbour searches' coarse indexes are saved with the weights (models.gan.neighbours):
a load reads them instead of deriving them (7.7 s of the served ensemble's 8.3 s load before),
checks them against their bank, and still loads files from before they were saved."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import models.ensemble.model as ensemble_module
import models.gan.model as gan_module
from models.ensemble import fit_ensemble
from models.gan.neighbours import coarse_index, index_matches
from models.io import WEIGHTS_FILE, build_model, derived_keys, load_model, read_config, save_model
from tests.models.contract import make_scoring

VAL, TRAIN, OTHER = slice(4000, 4160), slice(0, 400), slice(4500, 4540)
SPLIT = {"target_fpr": 0.05, "low_fpr": 0.01, "energy_fpr": 0.01}
GAN_INDEX = ("score_proj", "score_coarse")
KNN_INDEX = ("knn_proj", "knn_coarse")


@pytest.fixture(scope="module")
def gan(real_digits):
    return make_scoring("gan", real_digits[0][TRAIN])


@pytest.fixture(scope="module")
def ensemble(real_digits, gan):
    members = {"autoencoder": make_scoring("autoencoder", real_digits[0][TRAIN]), "gan": gan}
    return fit_ensemble(members, real_digits[0][VAL], **SPLIT, combine="max", encoder_knn=3,
                        train_images=real_digits[0][TRAIN])  # fmt: skip


@pytest.fixture()
def derivations(monkeypatch) -> list[int]:
    """Counts every coarse index derived (the GAN's and the ensemble's)."""
    calls: list[int] = []

    def counting(bank, dims):
        calls.append(bank.shape[0])
        return coarse_index(bank, dims)

    monkeypatch.setattr(gan_module, "coarse_index", counting)
    monkeypatch.setattr(ensemble_module, "coarse_index", counting)
    return calls


def _rewrite(directory, change) -> None:
    """Rewrite the saved weights with `change(state)` applied (a file as older code wrote it)."""
    state = load_file(directory / WEIGHTS_FILE)
    change(state)
    family = read_config(directory)["family"]
    save_file(state, directory / WEIGHTS_FILE, metadata={"family": family})


def _same_index(a, b, names) -> None:
    for name in names:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_the_index_is_saved_and_a_load_reads_it_without_deriving(
    gan, ensemble, real_digits, tmp_path, derivations
):
    images = real_digits[0][OTHER]
    for model, names, key in ((gan, GAN_INDEX, "score_coarse"),
                              (ensemble, KNN_INDEX, "knn_coarse")):  # fmt: skip
        directory = tmp_path / model.family
        save_model(model, directory)
        saved = load_file(directory / WEIGHTS_FILE)
        assert saved[key].shape[0] == 400 and saved[key].dtype == torch.float16
        back = load_model(directory)
        _same_index(back, model, names)
        with torch.no_grad():
            assert torch.equal(back.anomaly_score(images), model.anomaly_score(images))
    assert derivations == []  # neither load nor scoring derived an index
    assert derived_keys(ensemble) == {*KNN_INDEX, *(f"members.gan.{n}" for n in GAN_INDEX)}


def test_a_file_from_before_the_index_was_saved_loads_and_derives_it(
    gan, ensemble, real_digits, tmp_path, derivations
):
    images = real_digits[0][OTHER]
    for model, names, banks in ((gan, GAN_INDEX, 1), (ensemble, KNN_INDEX, 2)):
        directory = tmp_path / model.family
        save_model(model, directory)
        old = [k for k in load_file(directory / WEIGHTS_FILE) if k.endswith((*names, *GAN_INDEX))]
        _rewrite(directory, lambda state, old=old: [state.pop(k) for k in old])
        derivations.clear()
        back = load_model(directory)  # strict about every other key, as before
        assert len(derivations) == banks  # the GAN's bank (and the ensemble's own)
        _same_index(back, model, names)  # a deterministic function of the bank
        with torch.no_grad():
            assert torch.equal(back.anomaly_score(images), model.anomaly_score(images))
        # a whole-state strict load of such a file works too, the index derived before a score
        twin = build_model(model.family, read_config(directory)["config"])
        twin.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
        with torch.no_grad():
            assert torch.equal(twin.anomaly_score(images), model.anomaly_score(images))


def test_a_saved_index_that_does_not_fit_its_bank_is_derived_again(
    gan, real_digits, tmp_path, derivations
):
    images = real_digits[0][OTHER]
    save_model(gan, tmp_path)

    def stale(state) -> None:  # another bank's index: the rows of the coarse bank reversed
        state["score_coarse"] = state["score_coarse"].flip(0).contiguous()

    _rewrite(tmp_path, stale)
    back = load_model(tmp_path)
    assert derivations == [400]
    _same_index(back, gan, GAN_INDEX)
    with torch.no_grad():
        assert torch.equal(back.anomaly_score(images), gan.anomaly_score(images))


def test_index_matches_accepts_the_derived_index_and_refuses_others(gan):
    bank, dims = gan.score_bank, gan.config.score_coarse_dims
    proj, coarse = coarse_index(bank, dims)
    assert index_matches(bank, proj, coarse, dims)
    assert not index_matches(bank, proj, coarse[:-1], dims)  # a shorter bank's
    assert not index_matches(bank, proj[:, :-1], coarse[:, :-1], dims)  # other dimensions
    assert not index_matches(bank, proj * 1.5, coarse, dims)  # not orthonormal
    assert not index_matches(bank.flip(0), proj, coarse, dims)  # another bank's
    assert index_matches(bank[:0], proj, coarse[:0], dims)  # an empty bank, an empty index
