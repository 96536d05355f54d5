"""Data-parallel training under torchrun: 2 gloo processes on loopback.

The first launch (module fixture) runs the all-reduce contract checks, trains every family's
tiny config and an uninterrupted reference of the CLI's job, recording per rank what it wrote;
then it starts that same job through the real CLI and SIGKILLs the launcher and both ranks right
after a checkpoint. The second launch resumes it through the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.data.dataset import build_subset
from pipelines.training.distributed import Cluster, check_batch_size, noise_seed, shard
from pipelines.training.loop import CHECKPOINT_FILE
from tests.models.contract import FAMILIES, TINY

ROOT = Path(__file__).resolve().parents[3]
AE = TINY["autoencoder"]  # denoising: each rank draws its own noise, restored on resume
TRAIN = {"num_threads": 1, "seed": 3, "checkpoint_every": 4, "val_every": 6, "log_every": 2,
         "val_size": 64, "progress": False}  # fmt: skip
STEPS, BATCH, KILL_AT_STEP = 12, 32, 4

# Runs on every rank. Records each file this process opens for writing (or renames, deletes,
# creates a folder) under the test's folder, so the test can check that rank 1 wrote nothing
# (its own pid file and TMPDIR, where torch keeps caches, aside).
_PRELUDE = """
import json, os, sys
from pathlib import Path
ROOT, RANK = Path(os.environ["DDP_TEST_ROOT"]), int(os.environ["RANK"])
(ROOT / "pids").mkdir(exist_ok=True)
(ROOT / "pids" / str(RANK)).write_text(str(os.getpid()))
WRITES = []

def _audit(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (mode and any(c in mode for c in "wax+")) or (
            not mode and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    else:
        path, writing = args[0] if args else "", event in {
            "os.rename", "os.replace", "os.remove", "os.mkdir", "shutil.rmtree", "os.rmdir"}
    if writing and isinstance(path, (str, os.PathLike)):
        p = os.path.abspath(os.fsdecode(path))
        if p.startswith(str(ROOT)) and not p.startswith((str(ROOT / "pids"), str(ROOT / "tmp"))):
            WRITES.append(p)

sys.addaudithook(_audit)
if os.environ.get("DDP_TEST_DUMP_WRITES"):  # at a normal exit
    import atexit
    atexit.register(lambda: (ROOT / f"writes{RANK}.json").write_text(json.dumps(sorted(WRITES))))
"""

_WORKER = (
    _PRELUDE
    + """
import copy, hashlib
import torch
import torch.distributed as dist
from torch import nn
from pipelines.training import distributed
from pipelines.training.distributed import Cluster, GradientSync, sync_buffers
from pipelines.stages.train import train_family
from pipelines.training.loop import TrainConfig, train
from tests.models.contract import FAMILIES, TINY

cluster = Cluster.from_env()
distributed.setup(cluster, torch.device("cpu"))
out = {}

# 1. contract: the average of the ranks' gradients is the gradient of the whole batch
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
head = nn.Linear(6, 1)  # a second backward pass syncs only its own parameters
data = torch.Generator().manual_seed(1)
x, y = torch.randn(8, 6, generator=data), torch.randn(8, 1, generator=data)
ref_net, ref_head = copy.deepcopy(net), copy.deepcopy(head)
nn.functional.mse_loss(ref_net(x), y).backward()
nn.functional.mse_loss(ref_head(x), y).backward()
sync = GradientSync(nn.ModuleList([net, head]), cluster)
xs, ys = distributed.shard(x, cluster), distributed.shard(y, cluster)
nn.functional.mse_loss(net(xs), ys).backward()
head_untouched = all(p.grad is None for p in head.parameters())
nn.functional.mse_loss(head(xs), ys).backward()
pairs = [(p.grad, r.grad) for m, rm in ((net, ref_net), (head, ref_head))
         for p, r in zip(m.parameters(), rm.parameters())]
out["grad_max_diff"] = max(float((g - r).abs().max()) for g, r in pairs)
sync.close()  # without hooks, local gradients stay local (and differ from the full batch)
net.zero_grad()
nn.functional.mse_loss(net(xs), ys).backward()
out["grad_local_max_diff"] = max(float((p.grad - r.grad).abs().max())
                                 for p, r in zip(net.parameters(), ref_net.parameters()))
out["head_untouched_by_first_pass"] = head_untouched

# 2. buffers: different running statistics are averaged, equal ones and counters kept
bn = nn.BatchNorm1d(3)
bn.running_mean.fill_(float(cluster.rank))
bn.num_batches_tracked.fill_(10 + cluster.rank)
bn.register_buffer("const", torch.full((3,), 0.1))
sync_buffers(bn, cluster)
out["bn_mean"] = bn.running_mean.tolist()
out["bn_count"] = int(bn.num_batches_tracked)
out["const_exact"] = bool(torch.equal(bn.const, torch.full((3,), 0.1)))

# 3. every family trains; the replicas end identical, parameters and buffers
images, labels = torch.load(ROOT / "tiny.pt", weights_only=True)
tr, va = (images[:64], labels[:64]), (images[64:], labels[64:])
cfg = TrainConfig(steps=6, batch_size=16, val_every=3, val_size=32, checkpoint_every=3,
                  log_every=2, num_threads=1, progress=False)
out["families"] = {}
for family in FAMILIES:
    model_cfg = TINY[family] | ({"encoder_start_step": 4} if family == "gan" else {})
    logged = []
    r = train(family, model_cfg, cfg, tr, va, ROOT / "ckpt" / family,
              on_log=lambda step, m: logged.append(step))
    h = hashlib.sha256()
    for k, v in r.model.state_dict().items():
        h.update(k.encode() + v.contiguous().numpy().tobytes())
    out["families"][family] = {"sha": h.hexdigest(), "steps": r.steps_done,
                               "val": r.best_val_loss, "logged": len(logged),
                               "hooks": sum(len(p._post_accumulate_grad_hooks or {})
                                            for p in r.model.parameters()
                                            if hasattr(p, "_post_accumulate_grad_hooks"))}

# 4. the CLI's job, uninterrupted: the reference for the kill-and-resume test
import yaml
params = yaml.safe_load((ROOT / "project" / "params.yaml").read_text())
summary = train_family(params, "autoencoder", ROOT / "data", ROOT / "reference",
                       ROOT / "reference-ckpt", log_mlflow=False)
out["summary"] = summary
writes = sorted(set(WRITES))
out["writes"] = writes
(ROOT / f"rank{cluster.rank}.json").write_text(json.dumps(out))

# 5. the same job through the real CLI; rank 0 SIGKILLs the launcher, the other rank and itself
# right after writing the checkpoint of step KILL_AT_STEP (the kill cannot miss, however slow
# the machine). Rank 1 has written its results: the checkpoint needs its part.
import signal
import pipelines.training.loop
write = pipelines.training.loop._write_checkpoint

def write_then_kill_all(payload, path):
    write(payload, path)
    if payload["step"] == int(os.environ["DDP_TEST_KILL_AT_STEP"]):
        os.kill(os.getppid(), signal.SIGKILL)  # the torchrun launcher
        for pid_file in (ROOT / "pids").iterdir():
            if int(pid_file.read_text()) != os.getpid():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

pipelines.training.loop._write_checkpoint = write_then_kill_all
from pipelines.cli import main
main()
"""
)


_CLI = _PRELUDE + "from pipelines.cli import main\nmain()\n"


def _torchrun(script: Path, args: list[str], root: Path, cwd: Path, **env: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(script), *args]  # fmt: skip
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "DDP_TEST_ROOT": str(root),
               "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", **env}  # fmt: skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environ.pop(key, None)
    return subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def _cli_args(project: Path, data: Path) -> list[str]:
    return ["--params", str(project / "params.yaml"), "train", "--family", "autoencoder",
            "--data-dir", str(data), "--out", str(project / "model"), "--no-mlflow"]  # fmt: skip


def _project(root: Path, name: str) -> Path:
    project = root / name
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"] = {**params.get("train", {}), **TRAIN}
    params["autoencoder"] = {"model": dict(AE), "train": {"steps": STEPS, "batch_size": BATCH}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


@pytest.fixture(scope="module")
def launch(tmp_path_factory, real_digits):
    """One 2-process launch of _WORKER, killed in the end; (root, [rank 0, rank 1 results])."""
    root = tmp_path_factory.mktemp("ddp")
    images, labels = real_digits
    idx = torch.arange(0, 5000, 5000 // 96)[:96]
    torch.save((images[idx].clone(), labels[idx].clone()), root / "tiny.pt")
    build_subset(root / "data")
    _project(root, "project")
    killed = _project(root, "killed")
    script = root / "worker.py"
    script.write_text(_WORKER)
    proc = _torchrun(script, _cli_args(killed, root / "data"), root, killed,
                     DDP_TEST_KILL_AT_STEP=str(KILL_AT_STEP))  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    results = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    return root, results


def test_average_gradient_equals_full_batch_gradient(launch):
    _, ranks = launch
    for r in ranks:
        assert r["grad_max_diff"] < 1e-6
        assert r["grad_local_max_diff"] > 1e-3  # the check above can fail: local grads differ
        assert r["head_untouched_by_first_pass"]


def test_buffers_are_averaged_or_taken_from_rank_0(launch):
    _, ranks = launch
    for r in ranks:
        assert r["bn_mean"] == [0.5, 0.5, 0.5]  # mean of 0.0 and 1.0
        assert r["bn_count"] == 10 and r["const_exact"]


def test_every_family_trains_with_identical_replicas(launch):
    _, (rank0, rank1) = launch
    for family in FAMILIES:
        a, b = rank0["families"][family], rank1["families"][family]
        assert a["sha"] == b["sha"], family  # parameters and buffers, bit for bit
        assert a["steps"] == b["steps"] == 6 and a["val"] == b["val"], family
        assert a["val"] is not None and a["val"] == a["val"], family  # finite, not NaN
        assert a["logged"] > 0 and b["logged"] == 0, family  # on_log on rank 0 only
        assert a["hooks"] == b["hooks"] == 0, family  # the returned model carries no hooks


def test_only_rank_0_writes(launch):
    root, (rank0, rank1) = launch
    assert rank1["writes"] == [], rank1["writes"]
    written = {Path(p).relative_to(root).parts[0] for p in rank0["writes"]}
    assert {"ckpt", "reference", "reference-ckpt"} <= written
    assert (root / "reference" / "model.safetensors").is_file()
    assert rank0["summary"]["processes"] == 2 and "rank" not in rank0["summary"]
    assert rank1["summary"] == {"family": "autoencoder", "rank": 1, "steps": STEPS}
    metrics = json.loads((root / "reference" / "train_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == STEPS
    ckpt = torch.load(root / "reference-ckpt" / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["generators"]) == 2
    assert not torch.equal(ckpt["generators"][0], ckpt["generators"][1])  # per-rank noise


def test_sigkill_of_launcher_and_ranks_then_resume_matches_uninterrupted(launch):
    root, _ = launch
    run = root / "killed"
    ckpt = run / ".genops" / "checkpoints" / "autoencoder" / CHECKPOINT_FILE
    assert int(torch.load(ckpt, weights_only=True)["step"]) == KILL_AT_STEP
    assert not (run / "model" / "model.safetensors").exists()
    for stale in (root / "pids").iterdir():
        stale.unlink()
    cli = root / "cli.py"
    cli.write_text(_CLI)
    resumed = _torchrun(cli, _cli_args(run, root / "data"), root, run, DDP_TEST_DUMP_WRITES="1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout[resumed.stdout.index("{") :])  # rank 0 alone prints
    assert summary["resumed_from"] == KILL_AT_STEP and summary["steps"] == STEPS
    assert summary["processes"] == 2
    reference = (root / "reference" / "model.safetensors").read_bytes()
    assert (run / "model" / "model.safetensors").read_bytes() == reference
    assert json.loads((root / "writes1.json").read_text()) == []  # the CLI's rank 1 too
    assert any("model.safetensors" in p for p in json.loads((root / "writes0.json").read_text()))


def test_cluster_from_torchrun_environment():
    assert Cluster.from_env({}) == Cluster() and not Cluster().active
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    cluster = Cluster.from_env(env)
    assert (cluster.rank, cluster.world_size, cluster.local_rank) == (3, 4, 1)
    assert cluster.active and not cluster.is_main
    assert not Cluster.from_env({"WORLD_SIZE": "1"}).active  # torchrun with one process
    with pytest.raises(ValueError, match="RANK"):
        Cluster.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        Cluster.from_env({"WORLD_SIZE": "two"})


def test_batches_split_evenly_and_noise_differs_per_rank():
    two = [Cluster(rank=r, world_size=2) for r in (0, 1)]
    idx = torch.arange(10, 18)
    assert torch.equal(torch.cat([shard(idx, c) for c in two]), idx)
    assert noise_seed(7, Cluster()) == noise_seed(7, two[0]) == 8  # rank 0 = one process
    assert noise_seed(7, two[1]) != noise_seed(7, two[0])
    check_batch_size(32, two[1])
    with pytest.raises(ValueError, match="divisible"):
        check_batch_size(33, two[1])
