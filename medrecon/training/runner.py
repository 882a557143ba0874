"""End-to-end training run: folds -> dataset -> (optional torchrun DDP) -> Trainer.fit.

``train_run`` is what ``medrecon train run`` and ``scripts/train_*.sh`` call. Under ``torchrun``
(``WORLD_SIZE > 1`` in the environment) it initialises ``torch.distributed`` itself (NCCL on CUDA,
gloo on CPU) and every rank trains on its share of each batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from medrecon.errors import MedreconInputError
from medrecon.training.folds import ImageFolderDataset, make_folds, save_folds
from medrecon.training.loop import (CHECKPOINT_NAME, TrainConfig, Trainer, TrainingDiverged,
                                    check_training_memory)

__all__ = ["train_run", "hardware_description"]


def hardware_description(device: torch.device) -> str:
    """Human-readable hardware string recorded with every run."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{max(1, _world())}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name}, {torch.get_num_threads()} thread(s)"


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _init_distributed(device: torch.device) -> bool:
    if _world() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


#: The file a ``train run`` holds an exclusive lock on inside its run folder while it runs.
RUN_LOCK = ".medrecon-train.lock"


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the run folder for this process: a second ``train run`` on the same folder exits 2
    (both trained, each writing over the other's checkpoint). An OS advisory lock on a hidden
    file that stays in the folder (removing it would let a third run lock a new file while a
    second holds the old one), released when the process ends however it ends. A file system
    without locks (some NFS mounts) runs unlocked."""
    import errno

    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks (Windows): not held
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_LOCK
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield  # no locks on this file system
                return
            raise MedreconInputError(
                f"another train run is using --out {str(out)!r} now; wait for it to finish, or "
                "choose another --out.") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def check_run_folder(out: Path, *, data_dir: str | Path, config: TrainConfig, fold: int,
                     folds: int, scheme: str, folds_sha256: str) -> None:
    """Where ``train run`` may write, checked before anything is written: outside the data
    (its samples would become training images), a new or empty folder, or a run folder of
    medrecon's (``run.json``) of the same split and configuration (a resume).

    Raises:
        MedreconInputError: naming the folder and the fix.
    """
    src = Path(data_dir)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise MedreconInputError(
            f"--out {str(out)!r} is, or lies inside, --data {str(src)!r}: its sample images would "
            "become training images. Choose a run folder outside the data.")
    if not out.exists():
        return
    if not out.is_dir():
        raise MedreconInputError(f"--out {str(out)!r} is a file; expected a run folder.")
    if not any(p.name != RUN_LOCK for p in out.iterdir()):
        return
    try:
        run = json.loads((out / "run.json").read_text())
        if not isinstance(run, dict) or "config" not in run or "held_out_fold" not in run:
            raise ValueError
    except (OSError, ValueError):
        raise MedreconInputError(
            f"--out {str(out)!r} is a non-empty folder that is not a medrecon training run (no "
            "run.json of one); nothing there is overwritten. Choose a new or empty folder."
        ) from None
    asked = {"held_out_fold": fold, "folds": folds, "scheme": scheme,
             "folds_sha256": folds_sha256,
             "config": json.loads(json.dumps(config.to_dict()))}  # as run.json holds it
    differ = [k for k, v in asked.items() if k in run and run[k] != v and k != "config"]
    differ += [f"{k} ({run['config'].get(k)!r}, now {v!r})"
               for k, v in asked["config"].items()
               if isinstance(run.get("config"), dict) and run["config"].get(k) != v]
    if differ:
        raise MedreconInputError(
            f"--out {str(out)!r} holds a run with another {', '.join(differ)}: resuming it so "
            "would train on another split or network. Resume with its settings, or choose a "
            "new --out folder.")


def _training_device(device: str) -> torch.device:
    """``device`` as a torch device (``"auto"``: this rank's GPU when CUDA is there, else the
    CPU), made current for CUDA.

    Raises:
        MedreconInputError: an unknown device, or CUDA asked for without it.
    """
    if device == "auto":
        device = (f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available()
                  else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MedreconInputError(f"unknown device {device!r}; expected auto, cpu, cuda or "
                                 "cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedreconInputError(f"device {device!r} asked for but CUDA is not available; "
                                     "use --device cpu.")
        torch.cuda.set_device(dev)
    return dev


def _write_record(out: Path, rank: int, record: dict) -> None:
    """``out/run.json`` (rank 0 only)."""
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")


def train_run(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    config: TrainConfig = TrainConfig(),
    fold: int = 0,
    folds: int = 5,
    scheme: str = "auto",
    fold_seed: int = 0,
    kimg: float = 100.0,
    max_minutes: float | None = None,
    snapshot_minutes: float = 5.0,
    device: str = "auto",
    threads: int | None = None,
    progress=None,
) -> dict:
    """Train a StyleGAN2 prior on all folds but ``fold`` of ``data_dir``.

    Args:
        data_dir: image folder (X-ray naming or brain running indices; see ``scheme``).
        out_dir: run folder: ``folds.json``, ``run.json``, ``checkpoint-latest.pt``,
            ``samples-*.png``, ``log.jsonl``. Re-running with the same folder resumes.
        config: network and optimiser hyperparameters.
        fold: held-out fold (default 0).
        folds: number of folds K (default 5).
        scheme: fold scheme, see :func:`medrecon.training.folds.make_folds` (default ``"auto"``).
        fold_seed: seed of the patient permutation (default 0).
        kimg: total thousands of real images to show (default 100).
        max_minutes: wall-clock cap for this call (default none); resume later for more.
        snapshot_minutes: checkpoint period (default 5).
        device: ``"auto"`` (CUDA when available, per-rank ``LOCAL_RANK``), ``"cpu"`` or
            ``"cuda[:i]"``.
        threads: CPU threads for this process (default: leave torch's setting).
        progress: optional callable(stats).

    Returns:
        The run summary written to ``out_dir/run.json``.
    """
    for name, v in (("max_minutes", max_minutes), ("snapshot_minutes", snapshot_minutes),
                    ("kimg", kimg)):
        if v is not None and not (math.isfinite(float(v)) and float(v) >= 0):
            raise MedreconInputError(f"{name} (--{name.replace('_', '-')}) must be a finite "
                                     f"number >= 0, got {v!r}.")
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = _training_device(device)
    started_dist = _init_distributed(dev)
    stack = contextlib.ExitStack()
    try:
        out = Path(out_dir)
        fa = make_folds(data_dir, scheme=scheme, k=folds, seed=fold_seed)
        check_run_folder(out, data_dir=data_dir, config=config, fold=fold, folds=folds,
                         scheme=fa.scheme, folds_sha256=fa.digest())
        train_files, held_out = fa.split(fold)
        if config.batch_size > len(train_files):
            raise MedreconInputError(
                f"--batch {config.batch_size} is larger than the {len(train_files)} training "
                f"images of this split (fold {fold} held out): every step would show each image "
                f"several times. Use --batch {len(train_files)} or less.")
        check_training_memory(config, dev)
        rank = dist.get_rank() if dist.is_initialized() else 0
        dataset = ImageFolderDataset(data_dir, train_files, resolution=config.resolution)
        trainer = Trainer(dataset, config, device=dev,
                          split={"held_out_fold": fold, "folds_sha256": fa.digest()})
        lock = run_lock(out) if rank == 0 else contextlib.nullcontext()
        stack.enter_context(lock)  # held until the run ends (a second one on --out: exit 2)
        ckpt = out / CHECKPOINT_NAME
        if ckpt.exists():  # a resume reads its checkpoint before the records are rewritten
            trainer.load_checkpoint(ckpt)
        if rank == 0:  # everything checked and built: only now is the run folder written
            save_folds(fa, out / "folds.json")
        t0 = time.time()
        base = {
            "data_dir": str(Path(data_dir).resolve().name),
            "scheme": fa.scheme,
            "folds": folds,
            "held_out_fold": fold,
            "folds_sha256": fa.digest(),
            "train_images": len(train_files),
            "held_out_images": len(held_out),
            "config": config.to_dict(),
            "hardware": hardware_description(dev),
            "world_size": trainer.world_size,
            "torch": torch.__version__,
        }
        # written now too, so that checkpoints exported mid-run know their split
        _write_record(out, rank, {**base, "status": "running"})
        try:
            summary = trainer.fit(out, kimg=kimg, max_minutes=max_minutes,
                                  snapshot_minutes=snapshot_minutes, progress=progress,
                                  resume=False)
        except TrainingDiverged as exc:  # the record says so (it stayed "running")
            _write_record(out, rank, {**base, "status": "diverged", "error": str(exc)})
            raise
        run = {
            **base,
            "status": "stopped",
            "kimg": summary["kimg"],
            "steps": summary["step"],
            "train_seconds_total": round(summary["train_seconds"], 1),
            "wall_seconds_this_call": round(time.time() - t0, 1),
        }
        _write_record(out, rank, run)
        return run
    finally:
        stack.close()  # the run folder's lock
        if started_dist:
            if sys.exc_info()[0] is None:
                # Every rank leaves together, so none tears down a peer's connection mid-use;
                # after an error the peers may be inside another collective, so do not wait.
                dist.barrier()
            dist.destroy_process_group()
