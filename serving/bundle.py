"""The loaded, lock-guarded model the service calls, built from a verified bundle.

The bundle layout and its metadata live in `models.bundle` (shared with the pipeline that
writes it). `load_bundle` refuses (ValueError) a bundle whose weights do not match the
recorded sha256.

Roles that serve the same network share one copy of it and one lock: the same bundle (the
bundle cache), and also a family's bundle and the same network inside an ensemble (its member;
`network_digests`). The anomaly champion's ensemble carries the GAN with its feature bank
(~220 MB), which `families/gan` serves as well: one copy, not two.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import GenerativeModel
from models.bundle import (  # noqa: F401  (re-exported for serving's callers)
    BundleMeta,
    copy_bundle,
    read_meta,
    verify_weights,
    write_meta,
)
from models.calibration import Calibration
from models.io import hash_tensors, load_model, read_config, safetensors_header, sha256_file
from models.spec import CONFIG_FILE, MODEL_CARD_DIR, MODEL_CARD_FILES, WEIGHTS_FILE
from serving.admission import Cancelled, CostEstimate
from serving.errors import BadInput

# /generate draws images in chunks of about this many image x sampling steps (at least one
# image, at most 256) from the request's one generator, and checks between chunks whether the
# request was abandoned. Fixed (never tuned at run time) so the same (model version, n, seed,
# label, steps) always gives the same images; ~5 s of diffusion sampling per chunk on one core.
CHUNK_COST = 1024
SCORE_UNIT, SAMPLE_UNIT = "score_image", "sample_image_step"


class ServedModel:
    """A verified model with its calibration and metadata, safe to call from many threads.

    Every model call holds `lock`: requests never run the same network concurrently, and all
    randomness comes from a per-request `torch.Generator` (never the global RNG), so a seed
    gives the same images whatever else the server is doing.
    """

    def __init__(
        self,
        meta: BundleMeta,
        calibration: Calibration,
        model: GenerativeModel,
        lock: Any,
        costs: CostEstimate | None = None,
        card_dir: Path | None = None,
    ) -> None:
        self.meta = meta
        self.calibration = calibration
        self.model = model
        self.lock = lock
        self.costs = costs or CostEstimate()  # shared by every role served by this network
        self.card_dir = card_dir  # the bundle's model card folder, when it has one
        self.supports_steps = model.capabilities.sampling_steps

    def effective_steps(self, steps: int | None) -> int:
        """The sampler's network evaluations per image: `steps`, the model's default, or 1."""
        if not self.supports_steps:
            return 1
        return int(steps) if steps is not None else int(self.model.config.sample_steps)

    def generate_cost(self, n: int, steps: int | None) -> int:
        """Work units of a /generate request: images x sampling steps (the cost budget's unit)."""
        return int(n) * self.effective_steps(steps)

    @property
    def conditional(self) -> bool:
        return self.model.conditional

    @property
    def has_reconstruction(self) -> bool:
        return self.model.has_reconstruction

    def describe(self) -> dict[str, Any]:
        """Public description (for /metadata and response headers of a result)."""
        return {
            **self.meta.to_dict(),
            "threshold": self.calibration.threshold,
            "target_fpr": self.calibration.target_fpr,
            "conditional": self.conditional,
            "supports_steps": self.supports_steps,
            "has_reconstruction": self.has_reconstruction,
            "capabilities": dataclasses.asdict(self.model.capabilities),
            "has_card": self.card_dir is not None,
        }

    def score(self, images: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,) float64 of float32 images (N, 1, 28, 28) in [0, 1]."""
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with self.lock, torch.no_grad():
            started = time.perf_counter()
            scores = self.model.anomaly_score(batch)
            self.costs.observe(SCORE_UNIT, len(batch), time.perf_counter() - started)
        return scores.detach().double().cpu().numpy()

    def reconstruct(
        self, images: np.ndarray, strength: float | None = None, seed: int = 0
    ) -> np.ndarray:
        """Reconstructions (N, 1, 28, 28) float32; with `strength`, the model's `denoise`
        at that strength, its noise from a generator seeded with `seed` (BadInput if the
        model declares no denoising)."""
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if strength is not None and not self.model.capabilities.denoising:
            raise BadInput(f"{self.meta.family} model has no strength-controlled denoising")
        with self.lock, torch.no_grad():
            if strength is None:
                out = self.model.reconstruct(batch)
            else:
                generator = torch.Generator(device="cpu").manual_seed(int(seed))
                out = self.model.denoise(batch, strength, generator)
        return out.detach().float().cpu().numpy()

    def sample(
        self,
        n: int,
        seed: int,
        label: int | None = None,
        steps: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """`n` images (N, 1, 28, 28) float32 in [0, 1], a pure function of the arguments.

        Drawn `chunk_size(steps)` at a time from one generator seeded with `seed`; between
        chunks `should_stop()` is asked and a true answer raises `Cancelled` (client gone).
        """
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        steps = None if steps is None else int(steps)
        chunk, chunks = self.chunk_size(steps), []
        for start in range(0, n, chunk):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped after {start} of {n} images: request abandoned")
            k = min(chunk, n - start)
            labels = None if label is None else torch.full((k,), int(label), dtype=torch.long)
            with self.lock, torch.no_grad():
                began = time.perf_counter()
                out = self.model.sample(k, generator=generator, labels=labels, steps=steps)
                elapsed = time.perf_counter() - began
            self.costs.observe(SAMPLE_UNIT, self.generate_cost(k, steps), elapsed)
            chunks.append(out.detach().float().clamp(0.0, 1.0).cpu().numpy())
        return np.concatenate(chunks)

    def chunk_size(self, steps: int | None) -> int:
        """Images per sampling chunk: about CHUNK_COST image x steps, 1..256."""
        return max(1, min(256, CHUNK_COST // self.effective_steps(steps)))

    def estimate_s(self, unit: str, units: float) -> float:
        """Seconds `units` of work should take on this network (0 until first measured)."""
        return units * self.costs.get(unit)

    def probe(self) -> None:
        """Time one small call of each kind, so the first requests are admitted on real numbers."""
        zeros = np.zeros((8, 1, 28, 28), dtype=np.float32)
        self.score(zeros)
        self.sample(2, seed=0, steps=1 if self.supports_steps else None)


def model_executor(torch_threads: int = 0, workers: int = 4) -> ThreadPoolExecutor:
    """The threads that run model calls, each with torch's intra-op thread count set.

    `torch.set_num_threads` in the main thread does not reach threads started later (their
    OpenMP pool keeps its default size), and an oversubscribed OpenMP pool can make a small
    batch 100x slower on a busy host. 0 = the main thread's current setting.
    """
    threads = torch_threads or torch.get_num_threads()
    return ThreadPoolExecutor(
        workers,
        thread_name_prefix="genops-model",
        initializer=torch.set_num_threads,
        initargs=(threads,),
    )


log = logging.getLogger("genops.serving")
NETWORK = "network"  # the bundle cache's keys for one network: (NETWORK, its digest)


def network_digests(directory: Path) -> dict[str | None, str]:
    """The networks in a bundle's weights, by content: {None: digest} for a family's bundle,
    {member: digest} for an ensemble's (its `members.<member>.*` tensors). A digest is the
    sha256 of the family, the config and every tensor (name within its network, dtype, shape,
    bytes), read from the safetensors file a chunk at a time without loading it: equal
    digests, interchangeable networks, whichever bundle they came from. Tensors the family
    derives from the others (its `DERIVED_STATE`: a neighbour search's coarse index, saved only
    by newer code) are left out, so a file with them and one without are the same network."""
    from models.io import family_class

    directory = Path(directory)
    payload = read_config(directory)
    weights = directory / WEIGHTS_FILE
    with weights.open("rb") as f:
        header, start = safetensors_header(f, weights)
        if payload["family"] == "ensemble":
            members = payload["config"]["members"]
            nets = {m: (members[m], f"members.{m}.") for m in members}
        else:
            nets = {None: (payload["config"], "")}
        out: dict[str | None, str] = {}
        for name, (config, prefix) in nets.items():
            family = payload["family"] if name is None else name
            h = hashlib.sha256(
                json.dumps({"family": family, "config": config}, sort_keys=True).encode()
            )
            derived = set(getattr(family_class(family), "DERIVED_STATE", ()))
            keys = sorted(k for k in header if k.startswith(prefix))
            names = {k: k[len(prefix) :] for k in keys if k[len(prefix) :] not in derived}
            hash_tensors(h, f, header, start, names)
            out[name] = h.hexdigest()
    return out


def _shared(
    directory: Path, load: Callable[[], GenerativeModel], cache: dict[Any, Any]
) -> tuple[GenerativeModel, Any]:
    """A bundle's model and the lock its roles call it under, sharing any network another
    role already loaded: a family served on its own and as an ensemble's member is one module
    under one lock. A family's bundle whose network is known is not loaded at all; an ensemble
    takes in the known members that share one lock (and uses that lock), so that no network
    is ever called under two locks. Every network loaded here is added to `cache`."""
    digests = network_digests(directory)
    if None in digests:
        key = (NETWORK, digests[None])
        if key not in cache:
            cache[key] = (load(), threading.Lock())
        return cache[key]
    model, lock = load(), None
    members = model.members
    for name, digest in digests.items():
        known = cache.get((NETWORK, digest))
        if known is not None and lock in (None, known[1]):
            members[name], lock = known
            log.info("%s: ensemble member %s shares the network of another role", directory, name)
    lock = lock or threading.Lock()
    for name, digest in digests.items():
        cache.setdefault((NETWORK, digest), (members[name], lock))
    return model, lock


def load_bundle(directory: Path, cache: dict[Any, Any] | None = None) -> ServedModel:
    """Verify and load a bundle. Raises ValueError/FileNotFoundError when it cannot be served.

    `cache` (keyed by weights + config hash) lets several roles that point at the same
    artifacts share one network and one lock; it also holds every network loaded, so that a
    family and an ensemble that carries it as a member share one (`network_digests`).
    """
    directory = Path(directory)
    meta = read_meta(directory)
    calibration = Calibration.load(directory)
    key = (meta.weights_sha256, sha256_file(directory / CONFIG_FILE))
    if cache is not None and key in cache:
        verify_weights(directory, meta.weights_sha256)
        model, lock, costs = cache[key]
    else:
        costs = CostEstimate()
        if cache is None:
            model, lock = load_model(directory, meta.weights_sha256), threading.Lock()
        else:
            verify_weights(directory, meta.weights_sha256)
            model, lock = _shared(directory, lambda: load_model(directory), cache)
            cache[key] = (model, lock, costs)
    if meta.family != model.family:
        raise ValueError(f"{directory}: meta.family {meta.family!r} but config is {model.family!r}")
    card = directory / MODEL_CARD_DIR
    has_card = all((card / name).is_file() for name in MODEL_CARD_FILES)
    return ServedModel(meta, calibration, model, lock, costs, card if has_card else None)


def write_bundle(
    directory: Path, model: GenerativeModel, calibration: Calibration, meta: dict[str, Any]
) -> BundleMeta:
    """Save weights + config + calibration and a meta.json (weights_sha256 filled in)."""
    from models.io import save_model

    sha = save_model(model, directory)
    calibration.save(directory)
    full = BundleMeta.from_dict({"family": model.family, **meta, "weights_sha256": sha})
    write_meta(directory, full)
    return full
