"""Shared training machinery: run configs, the accelerate-backed run (processes, mixed
precision, checkpoints, logs, time budget)."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .. import validate
from ..io import commit_dir, partial_dir, write_text
from .data import DataConfig

_FILE_KEYS = frozenset({"kind", "$comment"})  # keys a config file may hold beside the fields

#: modules training needs beyond the core ones it already imports (checked against the ``train``
#: extra and the core dependencies by tests/test_packaging.py)
TRAIN_DEPS = ("accelerate", "tqdm")


def require_train_deps() -> None:
    """Raise a clear ImportError when the ``train`` extra's packages are missing."""
    missing = []
    for mod in TRAIN_DEPS:
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(
            f"gpstoken training needs {', '.join(missing)}: pip install 'gpstoken[train]'"
        )


@dataclass
class RunConfig:
    """Options common to every trainer (JSON field names).

    batch_size: per process and micro-batch; the effective batch is
    ``batch_size * processes * grad_accum``. max_steps: optimizer steps. max_minutes: wall-clock
    budget; when it runs out the run checkpoints, exports and stops. mixed_precision: ``"no"``,
    ``"bf16"`` or ``"fp16"`` (accelerate autocast). compile: ``torch.compile`` the model.
    tf32: allow TF32 matmuls / convolutions on CUDA (fp32 runs).
    lr_warmup / lr_schedule: linear warm-up steps, then ``"constant"`` or ``"cosine"`` (to 10%).
    *_every: in optimizer steps (0 disables). save_every_minutes: also checkpoint when this
    much wall-clock time has passed since the last checkpoint (slow CPU runs; None: off).
    keep_checkpoints: how many resumable checkpoints to keep. export_dtype: ``"float32"`` or
    ``"float16"`` for the exported EMA weights. export_on_save: export the EMA weights at every
    periodic checkpoint too (to evaluate a long run while it trains; an interrupted run leaves a
    usable export).
    """

    seed: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    lr_warmup: int = 0
    lr_schedule: str = "constant"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    max_steps: int = 1000
    max_minutes: Optional[float] = None
    mixed_precision: str = "no"
    compile: bool = False
    tf32: bool = True
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    log_every: int = 10
    eval_every: int = 500
    sample_every: int = 500
    save_every: int = 1000
    save_every_minutes: Optional[float] = None
    keep_checkpoints: int = 2
    export_dtype: str = "float32"
    export_on_save: bool = False
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig.from_dict(self.data)
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision: expected 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.export_dtype not in ("float32", "float16"):
            raise ValueError(f"export_dtype: expected 'float32' or 'float16', got {self.export_dtype!r}")
        for name in ("batch_size", "grad_accum", "max_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        validate.config_fields(cls, d, cls.__name__, also=_FILE_KEYS)
        validate.config_values(cls, d, cls.__name__)
        kw: dict[str, Any] = {k: (tuple(v) if k == "betas" else v) for k, v in d.items() if k not in _FILE_KEYS}
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        try:
            with open(path) as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config: {path} is not a JSON file ({e}); fix it, or start from one in "
                             "examples/configs/") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a train config must be a JSON object")
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


class _Progress:
    """Checkpointed counters (registered with accelerate)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class _Seeded:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self.fork = torch.random.fork_rng(devices=[])
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self.fork.__exit__(*exc)


class Run:
    """One training run in ``out``: the accelerator, checkpoints, JSONL metrics and the budget.

    Layout of ``out``: ``config.json`` (the resolved train config), ``checkpoints/step_N/``
    (accelerate ``save_state``: models, optimizers, RNG states, EMA, step; the newest
    ``keep_checkpoints`` are kept), ``metrics.jsonl``, ``samples/``, ``export/``.
    """

    def __init__(self, cfg: RunConfig, out: str | os.PathLike, kind: str) -> None:
        require_train_deps()
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg, self.kind = cfg, kind
        self.out = Path(out)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
            torch.backends.cudnn.benchmark = True
        set_seed(cfg.seed, device_specific=True)
        self.progress = _Progress()
        self.accelerator.register_for_checkpointing(self.progress)
        self.t0 = time.monotonic()
        self._last_save = self.t0
        self._bar = None
        if self.is_main:
            for sub in ("checkpoints", "samples", "export"):
                (self.out / sub).mkdir(parents=True, exist_ok=True)
            for stale in (self.out / "checkpoints").glob(".step_*.partial"):  # from an interrupted save
                shutil.rmtree(stale, ignore_errors=True)
            write_text(self.out / "config.json", json.dumps({"kind": kind, **cfg.to_dict()}, indent=2))
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ properties
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def step(self) -> int:
        return self.progress.step

    def seeded(self):
        """Context in which the global torch RNG is seeded with ``seed`` and restored after:
        model initialisation is the same on every process and independent of what ran before
        (cached or fresh extraction, resume)."""
        return _Seeded(self.cfg.seed)

    def autocast(self):
        """Mixed-precision autocast context of the run."""
        return self.accelerator.autocast()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dirs(self) -> list[Path]:
        """The complete checkpoints of ``out``, oldest first. A folder appears only once written
        (:meth:`save`); its ``DONE`` file also marks it complete for runs saved before that."""
        dirs = [p for p in (self.out / "checkpoints").glob("step_*") if p.is_dir() and (p / "DONE").exists()]
        return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))

    def save(self) -> Path:
        """Save a resumable checkpoint (all processes must call): every process writes into one
        temporary folder, which the main process then renames into place (:func:`io.commit_dir`),
        so an interrupted save leaves the previous checkpoints as they were and no ``step_N``
        that ``resume`` could pick."""
        path = self.out / "checkpoints" / f"step_{self.step}"
        self.accelerator.wait_for_everyone()
        tmp = partial_dir(path, create=self.is_main)
        self.accelerator.wait_for_everyone()
        try:
            self.accelerator.save_state(str(tmp))
            self.accelerator.wait_for_everyone()
            if self.is_main:
                write_text(tmp / "DONE", str(self.step))
                commit_dir(tmp, path)
        except BaseException:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._last_save = time.monotonic()
        if self.is_main:
            for old in self.checkpoint_dirs()[: -max(1, self.cfg.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self) -> bool:
        """Load the newest complete checkpoint of ``out``; False when there is none."""
        dirs = self.checkpoint_dirs()
        if not dirs:
            return False
        self.accelerator.load_state(str(dirs[-1]))
        self.log_text(f"resumed from {dirs[-1]} at step {self.step}")
        return True

    # ------------------------------------------------------------------ logging
    def start_bar(self) -> None:
        if self.is_main:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.cfg.max_steps, initial=self.step, desc=f"train {self.kind}",
                             dynamic_ncols=True, disable=os.environ.get("GPSTOKEN_NO_PROGRESS") == "1")

    def tick(self, postfix: Optional[dict[str, float]] = None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Append one JSON line (main process) with the step and elapsed minutes."""
        if self.is_main:
            rec = {"step": self.step, "minutes": round(self.elapsed_minutes(), 3),
                   **{k: _jsonable(v) for k, v in metrics.items()}}
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def log_text(self, msg: str) -> None:
        if self.is_main:
            if self._bar is not None:
                self._bar.write(msg)
            else:
                print(msg, flush=True)

    def mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over processes."""
        if self.world == 1 or not values:
            return values
        t = torch.tensor([float(v) for v in values.values()], device=self.device)
        t = self.accelerator.reduce(t, reduction="mean")
        return {k: float(v) for k, v in zip(values, t.tolist())}

    # ------------------------------------------------------------------ budget
    def out_of_time(self) -> bool:
        """True (on every process) once ``max_minutes`` has passed on the main process."""
        if self.cfg.max_minutes is None:
            return False
        flag = torch.tensor([float(self.elapsed_minutes() >= self.cfg.max_minutes)], device=self.device)
        if self.world > 1:
            from accelerate.utils import broadcast

            flag = broadcast(flag, from_process=0)
        return bool(flag.item())

    def every(self, n: int) -> bool:
        return n > 0 and self.step % n == 0

    def save_due(self) -> bool:
        """True (on every process) when a periodic checkpoint is due after this step:
        ``save_every`` steps, or ``save_every_minutes`` since the last one."""
        due = self.every(self.cfg.save_every)
        if self.cfg.save_every_minutes is not None and not due:
            flag = torch.tensor([float(time.monotonic() - self._last_save >= 60.0 * self.cfg.save_every_minutes)],
                                device=self.device)
            if self.world > 1:
                from accelerate.utils import broadcast

                flag = broadcast(flag, from_process=0)
            due = bool(flag.item())
        return due

    def checkpoint_or_stop(self, after_save: Optional[Callable[[], Any]] = None) -> bool:
        """End of an optimizer step: the periodic checkpoint (:meth:`save_due`; the final one
        is the caller's), followed by ``after_save()`` when given, then True when the time
        budget is spent (logged)."""
        if self.save_due() and self.step < self.cfg.max_steps:
            self.save()
            if after_save is not None:
                after_save()
        if self.out_of_time():
            self.log_text(f"time budget of {self.cfg.max_minutes} min reached at step {self.step}")
            return True
        return False

    def elapsed_minutes(self) -> float:
        """Wall-clock minutes since the run object was made."""
        return (time.monotonic() - self.t0) / 60.0


def architecture(model: Any, archs: dict[str, Any], config_cls: Any) -> Any:
    """A config's ``model`` entry -> an architecture config: a name in ``archs`` or a dict
    for ``config_cls.from_dict``."""
    if isinstance(model, str):
        if model not in archs:
            raise ValueError(f"model: unknown architecture {model!r}; known: {sorted(archs)}")
        return archs[model]
    if isinstance(model, dict):
        return config_cls.from_dict(model)
    raise ValueError(f"model: expected an architecture name or a config dict, got {type(model).__name__}")


def lr_factor(step: int, max_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then constant or cosine decay to 10%."""
    w = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    if schedule == "constant":
        return w
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, max_steps - warmup_steps)))
    return w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
