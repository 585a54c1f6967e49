"""The training engine: the only module that imports deepspeed.

Batch sizes, precision, ZeRO stage and clipping are read once from the typed config
(``deepspeed`` and ``optim`` sections) and turned into a DeepSpeed config dict here.
The loop talks to a small interface (``forward``, ``backward``, ``step``, ``set_lr``,
``save``, ``load``) implemented twice: :class:`DeepSpeedEngine` (GPUs, and CPU with
gloo) and :class:`TorchEngine` (plain PyTorch, the fallback; DDP-free gradient
all-reduce when launched with several processes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvmae.config import Config, DeepSpeedConfig, OptimConfig
from lvmae.devices import resolve_device
from lvmae.errors import ConfigError, DataError
from lvmae.io import guard_write
from lvmae.train.optim import param_groups

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> bool:
    """Fill the launcher's env vars for a run started without one; True if it did.

    DeepSpeed needs RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT even for one
    process; without them it falls back to MPI discovery and fails on ``mpi4py``.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return False
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port())}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    return True


def setup_distributed(cfg: Config) -> DistInfo:
    """Initialise the process group (when needed) and pick this rank's device."""
    engine = cfg.deepspeed.engine
    if engine == "deepspeed":
        single_process_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.run.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if engine == "deepspeed" and device.type == "cpu" and cfg.deepspeed.precision == "fp16":
        raise ConfigError("DeepSpeed has no fp16 on CPU: use deepspeed.precision=bf16 or fp32 there")
    if engine == "deepspeed":
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        if device.type == "cpu" and world == 1 and cfg.deepspeed.cpu_skip_shm_op:
            _skip_shm_op(deepspeed)
        deepspeed.init_distributed(dist_backend=backend)
    elif world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return DistInfo(rank, world, local_rank, device)


def _skip_shm_op(deepspeed: Any) -> None:
    """Mark DeepSpeed's CPU shared-memory all-reduce op unavailable (one rank never uses it)."""
    with contextlib.suppress(AttributeError, TypeError, KeyError):
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def make_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """torch AdamW (betas from the config, paper: 0.9/0.95); LR is set every step by the loop."""
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay), lr=0.0, betas=tuple(optim.betas), eps=optim.eps,
        fused=fused or None,
    )


def deepspeed_config(ds: DeepSpeedConfig, optim: OptimConfig, world: int, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config dict: batch sizes, precision, ZeRO and clipping defined once, here
    (``deepspeed.config_file`` merged over it: :mod:`lvmae.train.ds_config`)."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage > 0:
        zero.update(contiguous_gradients=True, overlap_comm=device.type == "cuda")
    built = {
        "train_micro_batch_size_per_gpu": ds.micro_batch,
        "gradient_accumulation_steps": ds.grad_accum,
        "train_batch_size": ds.micro_batch * ds.grad_accum * world,
        "gradient_clipping": optim.grad_clip,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.config_file:
        from lvmae.train.ds_config import merge_file

        return merge_file(built, ds.config_file)
    return built


def save_weights(module: nn.Module, path: Path) -> None:
    """The module's full state dict as safetensors."""
    from lvmae.models.export import write_safetensors

    write_safetensors(path, module.state_dict())


def load_weights(module: nn.Module, path: Path) -> None:
    """Inverse of :func:`save_weights` (strict: every key must match)."""
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path), device=str(next(module.parameters()).device)))


def grad_norm(model: nn.Module) -> torch.Tensor:
    """L2 norm of all gradients (before clipping), a 0-d float32 tensor left on their device."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class _EngineBase:
    """What the loop sees; subclasses fill ``model``, ``optimizer`` and the methods."""

    name = "base"
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: Config, dist: DistInfo):
        self.dist, self.device = dist, dist.device
        ds = cfg.deepspeed
        self.micro_batch, self.grad_accum = ds.micro_batch, ds.grad_accum
        self.global_batch = ds.micro_batch * ds.grad_accum * dist.world
        self.precision = ds.precision

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def close(self, barrier: bool = True) -> None:
        """Barrier then destroy the process group (a rank exiting early can abort its peers).

        ``barrier=False`` after an error: the other ranks may never reach it. A one-rank
        group is kept: DeepSpeed caches its groups, and a second ``pretrain()`` in the
        same process would find them destroyed.
        """
        if self.dist.world > 1 and torch.distributed.is_initialized():
            if barrier:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    @contextlib.contextmanager
    def gathered(self):
        """Full module weights inside the block (ZeRO-3 partitions them); no-op otherwise."""
        yield self.model


class TorchEngine(_EngineBase):
    """Plain PyTorch: autocast for bf16/fp16 (GradScaler for fp16), clipping, AdamW."""

    name = "torch"

    def __init__(self, model: nn.Module, cfg: Config, dist: DistInfo):
        super().__init__(cfg, dist)
        if dist.world > 1 and cfg.deepspeed.zero_stage > 0:
            raise ConfigError("deepspeed.zero_stage > 0 needs deepspeed.engine=deepspeed")
        self.model = model.to(self.device)
        if dist.world > 1:
            for t in model.state_dict().values():
                torch.distributed.broadcast(t, src=0)
        self.optimizer = make_optimizer(model, cfg.optim, fused=self.device.type == "cuda")
        self.grad_clip = cfg.optim.grad_clip
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.input_dtype = None
        # the compiled wrapper shares the parameters; self.model stays plain so checkpoints keep their keys
        mode = cfg.train.compile_mode
        self.run_model = self.model
        if cfg.train.compile:
            self.run_model = torch.compile(self.model, mode=None if mode == "default" else mode)
        # CUDA graph outputs live in a pool the next forward's replay overwrites: forward copies them out
        self.graph_outputs = (cfg.train.compile and self.device.type == "cuda"
                              and mode in ("reduce-overhead", "max-autotune"))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.graph_outputs:
            # grad_accum > 1: the first backward's gradients are graph outputs that autograd keeps as
            # .grad; this forward frees the pool they live in (and the next backward would add into
            # it), so they are copied out first. With set_to_none there are none at a step's start.
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad = p.grad.clone()
        dtype = DTYPES[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = self.run_model(*args, **kwargs)
        if self.graph_outputs:
            out = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        return out

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.grad_accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> torch.Tensor:
        """All-reduce, clip and apply the gradients; returns their norm before clipping (0-d, on the device)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.dist.world > 1:
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.dist.world
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, path: Path) -> None:
        if self.dist.is_main:
            save_weights(self.model, path / "model.safetensors")
            state = {"optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler else None}
            with guard_write(path / "optimizer.pt"):
                torch.save(state, path / "optimizer.pt")

    def load(self, path: Path) -> None:
        load_weights(self.model, path / "model.safetensors")
        state = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class DeepSpeedEngine(_EngineBase):
    """``deepspeed.initialize`` around the model and a torch AdamW (no fused_adam build needed)."""

    name = "deepspeed"

    def __init__(self, model: nn.Module, cfg: Config, dist: DistInfo):
        super().__init__(cfg, dist)
        import deepspeed

        self._deepspeed = deepspeed
        # fused on CUDA as in the torch engine (ZeRO's flat fp32 partitions take it: tested on CPU's fused kernel)
        opt = make_optimizer(model, cfg.optim, fused=dist.device.type == "cuda")
        self.config = deepspeed_config(cfg.deepspeed, cfg.optim, dist.world, dist.device)
        self.ds, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=self.config)
        self.model, self.optimizer = self.ds.module, opt
        self.input_dtype = DTYPES[self.precision] if self.precision != "fp32" else None
        self._pending = False

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.ds(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        if self._pending:
            self.ds.step()  # not a boundary: only advances DeepSpeed's micro-step counter
        self.ds.backward(loss)  # scales by 1/grad_accum itself
        self._pending = True

    def step(self) -> torch.Tensor | float | None:
        """The optimizer step; returns the gradient norm before clipping as DeepSpeed reports it (None: unknown)."""
        # Plain fp32 without ZeRO: DeepSpeed clips but does not keep the norm, so measure it here.
        own = None if hasattr(self.ds.optimizer, "_global_grad_norm") else grad_norm(self.model)
        self.ds.step()
        self._pending = False
        return self.ds.get_global_grad_norm() if own is None else own

    @contextlib.contextmanager
    def gathered(self):
        if self.config["zero_optimization"]["stage"] == 3:
            with self._deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
                yield self.model
        else:
            yield self.model

    def save(self, path: Path) -> None:
        with guard_write(path / "ds"):
            self.ds.save_checkpoint(str(path), tag="ds", save_latest=False)
        with self.gathered() as module:
            if self.dist.is_main:
                save_weights(module, path / "model.safetensors")

    def load(self, path: Path) -> None:
        """DeepSpeed's own files (pickle-based: resume only from trusted dirs), then the safetensors
        copy must hold the same weights, or ``lvmae export`` of this checkpoint would give others."""
        from safetensors.torch import load_file

        loaded, _ = self.ds.load_checkpoint(str(path), tag="ds", load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(path / "ds")
        saved = load_file(str(path / "model.safetensors"))
        with self.gathered() as module:
            own = module.state_dict()
            bad = sorted(set(own) ^ set(saved)) or [k for k in own if not torch.equal(own[k].cpu(), saved[k])]
        if bad:
            raise DataError(f"{path / 'model.safetensors'} differs from DeepSpeed's weights ({bad[0]})")


Engine = TorchEngine | DeepSpeedEngine


def build_engine(model: nn.Module, cfg: Config, dist: DistInfo) -> Engine:
    """The engine named by ``cfg.deepspeed.engine`` around ``model`` (moved to ``dist.device``)."""
    if cfg.deepspeed.engine == "deepspeed":
        return DeepSpeedEngine(model, cfg, dist)
    return TorchEngine(model, cfg, dist)
