"""The denoising demonstration (pipelines.evaluation.denoising): inputs, model calls, metrics."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.evaluation.denoising import (
    BLOCK_SIZE,
    CORRUPTIONS,
    corrupt,
    pick_digits,
    run_denoising,
    write_figure,
)
from tests.models.contract import make


def test_corruptions_are_seeded_in_range_and_do_what_they_say(small_batch) -> None:
    clean = small_batch[0][:8].numpy()
    first, again, other = corrupt(clean, 0), corrupt(clean, 0), corrupt(clean, 1)
    assert list(first) == list(CORRUPTIONS)
    for kind in CORRUPTIONS:
        assert first[kind].dtype == np.float32 and first[kind].shape == clean.shape
        assert first[kind].min() >= 0 and first[kind].max() <= 1
        np.testing.assert_array_equal(first[kind], again[kind])
        assert not np.array_equal(first[kind], other[kind])
    changed = first["salt_pepper"] != clean
    assert 0.02 < changed.mean() < 0.15  # ~10% hit, some already at the drawn value
    blanked = (first["block"] == 0) & (clean > 0)
    assert (blanked.reshape(8, -1).sum(1) <= BLOCK_SIZE**2).all() and blanked.any()
    assert np.array_equal(first["block"][first["block"] != 0], clean[first["block"] != 0])


def test_pick_digits_takes_the_first_of_each_class_then_tops_up() -> None:
    labels = np.array([3, 3, 1, 0, 1, 2])
    assert pick_digits(labels, 10).tolist() == [3, 2, 5, 0, 1, 4]
    assert pick_digits(labels, 2).tolist() == [3, 2]
    every = np.arange(30) % 10
    assert sorted(every[pick_digits(every)].tolist()) == list(range(10))


def test_run_denoising_uses_denoise_where_declared(real_digits, tmp_path) -> None:
    images, labels = real_digits[0][:200], real_digits[1][:200]
    model = make("diffusion").eval()
    result = run_denoising(model, images, labels)
    batch = torch.from_numpy(np.concatenate([result.corrupted[k] for k in CORRUPTIONS]))
    expected = model.denoise(batch, None, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(
        np.concatenate([result.outputs[k] for k in CORRUPTIONS]), expected
    )
    metrics = result.metrics()
    assert set(metrics) == {f"denoise{p}_mse/{k}" for p in ("", "_input") for k in CORRUPTIONS}
    ae = make("autoencoder").eval()  # no `denoising`: its reconstruction
    recon = run_denoising(ae, images, labels)
    gaussian = torch.from_numpy(recon.corrupted["gaussian"])
    # the job reconstructs all corruptions in one batch, this call one kind: another batch size
    # may take another matmul kernel (last-bit differences, seen in CI), so equal to 1e-6
    np.testing.assert_allclose(
        recon.outputs["gaussian"], ae.reconstruct(gaussian).numpy(), rtol=0, atol=1e-6
    )
    assert write_figure(model, result, tmp_path / "denoising.png").stat().st_size > 1000
