"""The input side of ``gpstoken tokenize`` / ``gpstoken eval``: images of a source, prepared
by the standard protocol in DataLoader workers, and the process layout of a multi-process run.

A worker decodes image ``i``, resizes its shorter side to ``size`` and centre-crops it
(:func:`gpstoken.images.center_crop`), and computes the entropy partition for each requested
token count. Images that cannot be decoded or are smaller than :data:`gpstoken.images.MIN_SIDE`
come back as a skip with the reason.

The model's work on a batch (tokenize: encode; eval: encode and decode) is a *job*
(:func:`job_batches`). On CUDA the main process runs it on the GPU. On the CPU every worker runs
it on the batches it prepared, with one torch thread, and the main process only consumes the
results: one single-threaded process per core keeps every core busy, while a main process
running the model with several threads beside the workers would oversubscribe the cores.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import MIN_SIDE, center_crop, from_uint8
from .partition import partition_images
from .sources import ImageSource, UnreadableImage


@dataclass(frozen=True)
class Processes:
    """This process's place in a run started by ``accelerate launch`` / ``torchrun`` (env
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``; one process when unset;
    without ``LOCAL_WORLD_SIZE`` all ``WORLD_SIZE`` processes are taken to share this machine)."""

    rank: int
    world: int
    local_rank: int
    local_world: int

    @classmethod
    def from_env(cls) -> "Processes":
        def get(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            try:
                return int(value) if value else default
            except ValueError:
                raise ValueError(f"environment variable {name}: expected an integer, got {value!r}") from None

        world = get("WORLD_SIZE", 1)
        rank = get("RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"environment: RANK={rank} must lie in [0, WORLD_SIZE={world})")
        local_world = get("LOCAL_WORLD_SIZE", world)
        if local_world < 1:
            raise ValueError(f"environment: LOCAL_WORLD_SIZE={local_world} must be >= 1")
        return cls(rank, world, get("LOCAL_RANK", rank), local_world)

    def cores(self) -> int:
        """This process's share of the machine's usable CPU cores (at least 1)."""
        return max(1, usable_cores() // self.local_world)

    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` when CUDA is present (one GPU per process), else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


class PreparedImages(Dataset):
    """Item ``i``: ``{"index": i, "image": float32 [3,S,S] in [-1,1], "source_size": int64 [2],
    "layouts": {n: (geometry [N,5], regions [N,4])}, "label": class or -1}`` with N = n * patches, or
    ``{"index": i, "skip": reason}``."""

    def __init__(self, source: ImageSource, size: int, token_counts: Sequence[int]) -> None:
        self.source = source
        self.size = size
        self.token_counts = list(token_counts)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            img = self.source.load(i)
        except UnreadableImage as e:
            return {"index": i, "skip": str(e)}
        w, h = img.size
        if min(w, h) < MIN_SIDE:
            return {"index": i, "skip": f"too small: {w}x{h} pixels, the shorter side must be >= {MIN_SIDE}"}
        arr = np.array(center_crop(img, self.size), dtype=np.uint8)
        image = from_uint8(arr).permute(2, 0, 1).contiguous()
        layouts = {}
        for n in self.token_counts:
            lay = partition_images(image[None], n)
            layouts[n] = (lay.geometry[0], lay.regions[0])
        return {"index": i, "image": image, "source_size": torch.tensor([h, w]), "layouts": layouts,
                "label": self.source.labels[i]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the usable items of a batch; ``skipped`` lists ``(index, reason)`` of the others.
    ``image`` is None when every item was skipped."""
    ok = [it for it in items if "skip" not in it]
    batch: dict[str, Any] = {"skipped": [(it["index"], it["skip"]) for it in items if "skip" in it],
                             "index": torch.tensor([it["index"] for it in ok], dtype=torch.int64)}
    if not ok:
        batch["image"] = None
        return batch
    batch["image"] = torch.stack([it["image"] for it in ok])
    batch["source_size"] = torch.stack([it["source_size"] for it in ok])
    batch["label"] = torch.tensor([it["label"] for it in ok], dtype=torch.int64)
    batch["layouts"] = {n: (torch.stack([it["layouts"][n][0] for it in ok]),
                            torch.stack([it["layouts"][n][1] for it in ok]))
                        for n in ok[0]["layouts"]}
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch runs with ``n`` intra-op threads inside the block (the count is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def loader(dataset: PreparedImages, batches: list[list[int]], num_workers: Optional[int] = None,
           collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] = collate) -> DataLoader:
    """A DataLoader that yields ``collate_fn`` batches (default :func:`collate`) of the given
    index lists, in order; ``collate_fn`` runs in the workers, each with one torch thread.
    num_workers: worker processes (default: up to 4, one per usable CPU core minus one)."""
    if num_workers is None:
        num_workers = max(0, min(4, usable_cores() - 1))
    kw: dict[str, Any] = {}
    if num_workers:
        kw = dict(worker_init_fn=_worker_init, prefetch_factor=4)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_fn, **kw)


#: default number of workers that run the job on the CPU (:func:`job_batches`): one per usable
#: core, at most this many (each holds its own activations)
MAX_CPU_WORKERS = 8

#: a job: (images float32 [B,3,S,S] in [-1,1], layouts {n: (geometry [B,N,5], regions [B,N,4])})
#: -> any picklable result (tensors are passed back from the workers through shared memory)
Job = Callable[[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]], Any]


def run_job(batch: dict[str, Any], job: Job) -> dict[str, Any]:
    """``batch`` (:func:`collate`) with ``image`` and ``layouts`` replaced by ``out``, the
    job's result (None when every image of the batch was skipped)."""
    image, layouts = batch.pop("image"), batch.pop("layouts", None)
    batch["out"] = None if image is None else job(image, layouts)
    return batch


class _JobCollate:
    """``collate_fn`` that runs the job where the batch was collated (a DataLoader worker)."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return run_job(collate(items), self.job)


def job_batches(dataset: PreparedImages, batches: list[list[int]], job: Job, *, in_workers: bool,
                num_workers: Optional[int] = None) -> Generator[dict[str, Any], None, None]:
    """The batches of ``dataset`` (index lists, in order) with ``job``'s result in ``out``
    (:func:`run_job`). ``in_workers``: the job runs in the DataLoader workers, each with one
    torch thread (the CPU path; with 0 workers here, also with one thread, so the results do
    not depend on the number of workers or cores); else here, after the workers prepared the
    batch (CUDA). num_workers: worker processes (default: with ``in_workers`` one per usable
    core, shared among the processes of this machine, at most :data:`MAX_CPU_WORKERS`; else
    as :func:`loader`)."""
    if in_workers and num_workers is None:
        num_workers = min(MAX_CPU_WORKERS, Processes.from_env().cores())
    if not in_workers:
        for batch in loader(dataset, batches, num_workers):
            yield run_job(batch, job)
        return
    with torch_threads(1):
        yield from loader(dataset, batches, num_workers, _JobCollate(job))
