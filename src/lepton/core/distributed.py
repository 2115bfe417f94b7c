"""Many processes, one run: data-parallel training with PyTorch DistributedDataParallel.

A run joins a process group when the environment says it is one of several processes (``RANK``
and ``WORLD_SIZE``, as ``torchrun`` and ``lepton run --nproc N`` set them): gloo on CPU, nccl on
GPU. Without them every function here is a cheap no-op for a single process, so the rest of
Lepton calls them unconditionally.

Roles: rank 0 does everything a single process does (evaluates, logs, writes every file). The
other ranks only train: they run the stages up to the last training stage (the deterministic
ones before it too, so their model has the same shape), take their slice of every batch, and exit
when that stage ends; rank 0 then evaluates and writes alone (see ``lepton.pipeline.api.run``).

``launch`` is the ``--nproc`` launcher: it starts the processes itself and turns a failure in any
of them into one line and a non-zero exit.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lepton.core.errors import RecipeError

# Ranks other than 0 wait in a collective while rank 0 evaluates and writes between training
# stages (quality of each variant, snapshots), which can take many minutes on a CPU.
TIMEOUT = datetime.timedelta(hours=2)

_owned = False  # this module created the process group (and so destroys it)


def env_world_size() -> int:
    """The world size the environment announces (1 when not launched as one of several)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def backend() -> str | None:
    import torch.distributed as dist

    return str(dist.get_backend()) if active() else None


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> str:
    """Join the process group the environment describes; returns this rank's device.

    gloo on CPU, nccl on CUDA (each rank on GPU ``LOCAL_RANK``). No-op for a single process or
    when the caller already set a group up.
    """
    global _owned
    import torch
    import torch.distributed as dist

    if env_world_size() <= 1:
        return device
    if dist.is_initialized():
        if device.startswith("cuda"):
            return f"cuda:{torch.cuda.current_device()}"
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise RecipeError(f"device: process {local} of this machine has no GPU of its own "
                              f"({torch.cuda.device_count()} visible); start at most that many "
                              "processes, or set device: cpu")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    _owned = True
    return device


def teardown() -> None:
    """Leave the process group this module created (no collective: safe after an error)."""
    global _owned
    import torch.distributed as dist

    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    import torch.distributed as dist

    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the others."""
    import torch.distributed as dist

    if not active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_module(module: Any) -> None:
    """Copy rank 0's parameters and buffers into the same module on every other rank."""
    import torch
    import torch.distributed as dist

    if not active():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: Iterable[Any]) -> None:
    """Average the gradients of ``params`` over the ranks (a missing gradient counts as zero).

    For trainable modules outside the DDP-wrapped model (distillation's projections).
    """
    import torch
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not active() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def wrap(model: Any, device: str) -> Any:
    """``model`` in DistributedDataParallel, or ``model`` itself for a single process.

    ``find_unused_parameters``: a task model's pooler is idle in masked-LM pretraining, and a
    multi-task batch uses one head of several; DDP must not wait for their gradients.
    """
    if not active() or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [int(device.split(":")[1])] if device.startswith("cuda:") else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def shard(batch: Sequence[int], *, part: int | None = None,
          parts: int | None = None) -> tuple[list[int], float]:
    """This rank's slice of a global batch and the weight of its mean-reduced loss.

    ``part``/``parts``: the rank and world size to slice for (default: this process's).

    Rank r takes ``batch[r::world]``. DDP averages gradients over ranks, so a slice's mean loss
    is weighted by ``world * len(slice) / len(batch)``: the averaged gradient is then exactly the
    gradient of the whole batch's per-example mean, as one process computes it (for losses that
    average over tokens or over labelled examples only, e.g. token classification, masked-LM or a
    distillation transfer set, it is that up to how those fall into the slices; weighting by
    examples keeps the loss functions opaque). A rank whose slice is empty (a last batch smaller
    than the world)
    runs the batch's first example with weight 0, so it still takes part in the all-reduce.
    """
    world = world_size() if parts is None else parts
    r = rank() if part is None else part
    if world == 1:
        return list(batch), 1.0
    mine = list(batch[r::world])
    if not mine:
        return [batch[0]], 0.0
    return mine, world * len(mine) / len(batch)


# ---------------------------------------------------------------------------------------------
# The --nproc launcher


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_line(path: Path | None) -> str | None:
    """A failed process's reason: its last ``lepton: error:`` line, else its last line."""
    if path is None or not path.is_file():
        return None
    text = path.read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lepton: error:")]
    if errors:
        return errors[-1][len("lepton: error:"):].strip()
    return lines[-1] if lines else None


def launch(argv: Sequence[str], nproc: int, *, grace_s: float = 10.0,
           program: Sequence[str] = (sys.executable, "-m", "lepton")) -> int:
    """Run ``python -m lepton ARGV`` as ``nproc`` local processes of one group; their exit code.

    Rank 0 keeps this terminal (its output is the run's); the others write only to a temp file
    that is read if they fail. When one process fails, the others get ``grace_s`` to fail on
    their own (a bad input fails every rank alike), then are stopped. The failure is reported
    once: rank 0's own ``lepton: error:`` line when it met a user error, else one line naming the
    process that failed first (not one that only lost its peer) with its last error line.
    """
    port = _free_port()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path | None] = []
    with tempfile.TemporaryDirectory(prefix="lepton-ranks-") as tmp:
        try:
            for r in range(nproc):
                env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "WORLD_SIZE": str(nproc), "RANK": str(r), "LOCAL_RANK": str(r),
                       "LOCAL_WORLD_SIZE": str(nproc), "OMP_NUM_THREADS": threads}
                # DDP's one-time note that find_unused_parameters found none (see ``wrap``).
                env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
                path = Path(tmp) / f"rank-{r}.log" if r else None
                logs.append(path)
                out = open(path, "wb") if path else None  # noqa: SIM115 - closed with the process
                try:
                    procs.append(subprocess.Popen([*program, *argv], env=env,
                                                  stdout=subprocess.DEVNULL if r else None,
                                                  stderr=out))
                finally:
                    if out is not None:
                        out.close()
            return _wait(procs, logs, grace_s)
        finally:
            _stop(procs)


_COLLATERAL = ("closed by peer", "Connection reset", "Broken pipe")  # a peer died first


def _wait(procs: list[subprocess.Popen[bytes]], logs: list[Path | None], grace_s: float) -> int:
    failed_at: dict[int, int] = {}  # rank -> the poll round it was first seen failed
    deadline, rounds = None, 0
    while True:
        codes = [p.poll() for p in procs]
        for r, c in enumerate(codes):
            if c not in (None, 0) and r not in failed_at:
                failed_at[r] = rounds
        if all(c is not None for c in codes):
            break
        if failed_at and deadline is None:
            deadline = time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(0.1)
        rounds += 1
    stopped = [p.poll() is None for p in procs]
    _stop(procs)
    codes = [p.returncode for p in procs]
    if not failed_at:
        return 0
    if codes[0] == 2 and not stopped[0]:
        return 2  # rank 0 met a user error and has said so on this terminal
    details = {r: _log_line(logs[r]) for r in failed_at}

    def blame(r: int) -> tuple[int, bool, bool, bool, bool, int]:
        # First failed first; in the same round a Lepton error before a crash, and a process that
        # lost its peer (collective failed) or was killed after one that failed on its own.
        detail = details[r] or ""
        return (failed_at[r], not (detail and codes[r] == 2),
                any(c in detail for c in _COLLATERAL), codes[r] < 0, r == 0, r)

    culprit = min(failed_at, key=blame)
    code, detail = codes[culprit], details[culprit]
    if code < 0:
        what, exit_code = f"was killed by signal {-code}", 128 - code
    else:
        what, exit_code = f"failed (exit code {code})", code
    print(f"lepton: error: process {culprit} of {len(procs)} {what}" + (f": {detail}" if detail else ""),
          file=sys.stderr)
    return exit_code


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.terminate()
    end = time.monotonic() + 5
    for p in live:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
