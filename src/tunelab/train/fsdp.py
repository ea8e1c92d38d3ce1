"""FSDP2 under ``accelerate launch --use_fsdp --fsdp_version 2``: turning it on where Accelerate would not, and the
per-process shards a sharded checkpoint holds.

Accelerate 1.15 sets FSDP only for GPU-like devices; on a CPU (gloo) it quietly falls back to plain data parallel.
``enable`` switches the state to FSDP there, so the same command shards on a CPU as on GPUs (torch's ``fully_shard``
runs on gloo). Every process must hold the full pretrained weights before ``prepare`` (the strategy, the weight
snapshot and the evaluation before training read them), so Accelerate's load-on-rank-0-only option is turned off.

A shard is written without pickles: each process's local pieces of the trained parameters go to
``model.rankR-of-W.safetensors``; its optimiser state, with every sharded tensor replaced by its local piece, to
``optimizer.rankR-of-W.pt`` (plain tensors, read back with ``weights_only=True``) and its RNG to ``rng.rankR-of-W.pt``.
Resuming needs the same number of processes; ``checkpoint`` makes the folder atomic and verified as for one process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

from tunelab.errors import RunError


def requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch --use_fsdp`` or a config file with it)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def before_model_load() -> None:
    """Every process loads the full weights itself (tunelab reads them before ``prepare``)."""
    if requested():
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"


def enable(acc: Accelerator) -> None:
    """Make FSDP2 the distributed type when it was asked for, on a CPU too; refuse FSDP version 1, and DeepSpeed
    where Accelerate would quietly run plain data parallel instead (on a CPU) or where tunelab's checkpoints would
    hold no weights (ZeRO stage 3 partitions them; only FSDP's shards are saved per process)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = getattr(getattr(acc.state, "deepspeed_plugin", None), "zero_stage", None)
        why = ("DeepSpeed did not start: on a CPU Accelerate falls back to plain data parallel"
               if acc.distributed_type != DistributedType.DEEPSPEED else
               "ZeRO stage 3 partitions the weights, and tunelab's checkpoints would not hold them" if stage == 3 else "")
        if why:
            raise RunError(f"accelerate launch --use_deepspeed: {why}. Shard with --use_fsdp --fsdp_version 2, or on "
                           "GPUs use --zero_stage 1 or 2 (not tested with tunelab)")
    if not requested():
        return
    state = acc.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # both states hold it
        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # its settings from the launcher's FSDP_* variables
    if state.distributed_type != DistributedType.FSDP:
        raise RunError(f"accelerate launch --use_fsdp: the launch gave {state.distributed_type}, not FSDP; launch with "
                       "--num_processes 2 or more")
    if state.fsdp_plugin.fsdp_version != 2:
        raise RunError(f"FSDP version {state.fsdp_plugin.fsdp_version}: tunelab trains with FSDP2 only; launch with "
                       "--fsdp_version 2 (or fsdp_version: 2 in the accelerate config file)")


def active(acc: Accelerator) -> bool:
    return acc.distributed_type == DistributedType.FSDP


def shard_suffix(acc: Accelerator) -> str:
    return f"rank{acc.process_index}-of-{acc.num_processes}"


def local(value: Any) -> Any:
    """Every DTensor in a (nested) state replaced by this process's piece of it."""
    if isinstance(value, DTensor):
        return value.to_local().detach().clone()
    if isinstance(value, dict):
        return {k: local(v) for k, v in value.items()}
    if isinstance(value, list):
        return [local(v) for v in value]
    return value


def resharded(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every FSDP unit's parameters back in their shards: a forward without backward (evaluation)
    leaves the root's gathered, and ``named_parameters`` would then give full tensors, not this process's piece."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def local_parameters(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    named = dict(resharded(model).named_parameters())
    return {name: local(named[name].detach()) for name in names}


def load_local_parameters(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy this process's saved pieces into its shards of the parameters (and any full tensors, buffers)."""
    named = dict(resharded(model).named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, value in tensors.items():
            target = named.get(name)
            if target is None:
                raise RunError(f"{where}: the shard holds '{name}', which this model lacks; was it written by a "
                               "different recipe?")
            piece = target.to_local() if isinstance(target, DTensor) else target
            if piece.shape != value.shape:
                raise RunError(f"{where}: '{name}' has shape {tuple(value.shape)} in the shard but "
                               f"{tuple(piece.shape)} here; resume with the number of processes that wrote it")
            piece.copy_(value)


def redistribute(optimizer: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """A shard's optimiser state with each local piece made a DTensor again, laid out like its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in saved["state"].items():
        param = params[int(index)]
        if isinstance(param, DTensor):
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    entry[key] = DTensor.from_local(value, param.device_mesh, param.placements,
                                                    shape=param.shape, stride=param.stride())
    return saved


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state gathered on every process (a collective: every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("model.rank*-of-*.safetensors"))


def check_processes(folder: Path, acc: Accelerator) -> None:
    """Refuse a sharded checkpoint written by another number of processes, or a one-process one under FSDP."""
    shards = shard_files(folder)
    if not shards:
        raise RunError(f"{folder}: a one-process checkpoint (model.safetensors), but this run is sharded with FSDP; "
                       "resume it the way it was launched")
    written = int(shards[0].name.split("-of-")[1].split(".")[0])
    if written != acc.num_processes or len(shards) != written:
        raise RunError(f"{folder}: written by {written} FSDP processes ({len(shards)} shards), resumed with "
                       f"{acc.num_processes}; resume with --num_processes {written}")
