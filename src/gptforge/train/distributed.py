"""Process-group helpers: who am I, how many of us, and am I the one that writes files.

Outside ``torchrun`` these return rank 0 of 1 and every collective is a no-op,
so the single-process path needs no special cases. ``torchrun`` sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; the loop then calls :func:`init` (nccl on
CUDA, gloo on the CPU), wraps the model with :func:`wrap_model` (PyTorch's DDP
or FSDP: the distributed engine is PyTorch's, not ours) and runs each
micro-batch's backward inside :func:`micro_step_context`.

The global batch, with W processes (``torchrun --nproc_per_node W``)::

    sequences per optimizer step = train.batch_size x grad_accum x W

``train.batch_size`` and ``train.grad_accum`` are per process, so adding
processes grows the batch. ``train.tokens_per_batch`` fixes the global batch
instead: ``grad_accum = tokens_per_batch / (batch_size x block_size x W)``
(nanoGPT divides ``gradient_accumulation_steps`` by the world size the same
way). Each rank reads its own rows of every global batch (``BatchLoader(...,
rank, world_size)``), and DDP averages the gradients, so W processes with
``batch_size B`` compute the same step as one process with ``batch_size W*B``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch

from gptforge.errors import ConfigError

logger = logging.getLogger(__name__)

MODES = ("auto", "ddp", "fsdp", "none")


def rank() -> int:
    """Global rank of this process (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank on this machine (picks the GPU), 0 when not under torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes training together (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Only the main process (rank 0) writes logs, metrics and checkpoints."""
    return rank() == 0


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every process (a no-op without an initialised process group)."""
    import torch.distributed as dist

    if _active():
        dist.barrier()


# ---------------------------------------------------------------- set-up and tear-down


def resolve_mode(mode: str, processes: int | None = None) -> str:
    """``train.distributed`` -> ``"ddp"``, ``"fsdp"`` or ``"none"`` for this launch.

    ``auto`` is DDP under torchrun with more than one process, else none. Asking
    for DDP/FSDP in a single process runs plain (with a warning); ``none`` with
    several processes is refused, since the ranks would train apart.
    """
    processes = world_size() if processes is None else processes
    if mode not in MODES:
        raise ConfigError(f"train.distributed must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "ddp" if processes > 1 else "none"
    if processes == 1 and mode != "none":
        logger.warning("train.distributed %s asked for but this is a single process; training without it", mode)
        return "none"
    if processes > 1 and mode == "none":
        raise ConfigError(
            f"train.distributed none with {processes} processes would train {processes} separate models; "
            "use --train.distributed ddp (or fsdp), or launch without torchrun"
        )
    return mode


def init(device: torch.device) -> bool:
    """Join the process group torchrun set up (nccl on CUDA, gloo otherwise). Returns True if joined here.

    Each rank uses its own device: the loop picks ``cuda:LOCAL_RANK``; it is made
    the current CUDA device so that nccl collectives and ``gather_object`` use it.
    """
    import torch.distributed as dist

    if world_size() <= 1 or _active():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    if not is_main():  # only rank 0 reports progress; the others still show warnings and errors
        log = logging.getLogger("gptforge")
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    logger.info("rank %d/%d joined the %s process group on %s", rank(), world_size(), backend, device)
    return True


def shutdown() -> None:
    """Leave the process group (a no-op when none is active)."""
    import torch.distributed as dist

    if _active():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device):  # noqa: ANN201 - a context manager
    """Own the process group for a block: join it (under torchrun) on entry, leave it on exit,
    whatever the block raised (a constructor error no longer leaks it)."""
    owned = init(device)
    try:
        yield owned
    finally:
        if owned:
            shutdown()


def decided_on_main(check: Any) -> None:
    """Run ``check()`` on rank 0 only and raise its GptforgeError on every rank.

    Why: a check of the run dir (it exists, pass --overwrite) raised on rank 0 alone left
    the other ranks waiting at the next barrier forever.
    """
    from gptforge.errors import GptforgeError

    problem: list[Any] = [None]
    if is_main():
        try:
            check()
        except GptforgeError as e:
            problem = [(type(e), str(e))]
    if _active():
        import torch.distributed as dist

        dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        kind, message = problem[0]
        raise kind(message)


def wrap_model(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module to run forward/backward through: ``model`` itself, DDP(model) or FSDP-sharded.

    FSDP uses ``fully_shard`` (FSDP2): each transformer block is a unit, then the
    root (embeddings, final norm, head). It shards the plain module behind
    ``model`` in place and returns ``model``; the loop rebuilds the optimizer
    (:func:`fsdp_shard`), and checkpoints gather full state dicts
    (:func:`full_state_views`) so their format is the same as without FSDP.
    """
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        from gptforge.model.loading import unwrap_model

        plain = unwrap_model(model)  # under torch.compile: shard the module the compiled wrapper calls
        if hasattr(plain, "sparse_embedding_grad"):
            plain.sparse_embedding_grad = False  # sharded parameters take dense gradients only
        for block in getattr(getattr(plain, "transformer", plain), "h", []):
            fully_shard(block)
        fully_shard(plain)
        # Tasks that call the model's parts instead of forward (the instruct loss runs
        # hidden_states, then the LM head on the scored positions only; classification runs
        # classify_logits) need FSDP to gather the parameters around those calls too.
        for method in getattr(plain, "forward_methods", ()):
            register_fsdp_forward_method(plain, method)
        return model
    raise ConfigError(f"unknown distributed mode {mode!r}")


def micro_step_context(model: torch.nn.Module, micro_step: int, grad_accum: int) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of a step.

    DDP: ``model.no_sync()``; FSDP2: ``set_requires_gradient_sync``. The
    gradients then accumulate locally and are averaged once, on the last
    backward (the same sum, one communication instead of ``grad_accum``).
    """
    last = micro_step == grad_accum - 1
    if hasattr(model, "no_sync"):  # DDP
        return contextlib.nullcontext() if last else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether ``model`` was sharded by ``fully_shard``."""
    return hasattr(model, "set_requires_gradient_sync")


# ---------------------------------------------------------------- collectives


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over all ranks (the tensor itself without a process group).

    SUM then divide: gloo has no AVG reduction. Summation order is the
    backend's, so a mean over ranks can differ from a one-process mean in the
    last bits.
    """
    import torch.distributed as dist

    if not _active():
        return value
    out = value.detach().clone().float()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def mean_dict_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average each float of ``values`` (same keys on every rank) over the ranks."""
    if not _active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t = t / dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (JSON-able) as a list on rank 0, None on the others; ``[obj]`` alone."""
    import torch.distributed as dist

    if not _active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def state_for_rank(state: dict[str, Any], this_rank: int, processes: int) -> dict[str, Any]:
    """The ``{"data", "rng"}`` a rank resumes from: its own entry of ``state["ranks"]``
    (a single-process checkpoint has only the top-level state).

    Raises:
        ConfigError: the checkpoint was saved by another number of processes; each
            rank's data stream and RNG cannot be continued then (the loader's rows
            per rank would change), so the resume is refused with the number to use.
    """
    ranks = state.get("ranks")
    saved = len(ranks) if isinstance(ranks, list) else 1
    if saved != processes:
        how = f"torchrun --nproc_per_node {saved} -m gptforge train --resume ..." if saved > 1 else \
            "gptforge train --resume ... (without torchrun)"
        raise ConfigError(
            f"the checkpoint was saved by {saved} process(es) but this resume runs {processes}; "
            f"each rank's data position and RNG can only be continued with the same number: {how}"
        )
    if isinstance(ranks, list):
        return ranks[this_rank]
    return {"data": state["data"], "rng": state["rng"]}


# ---------------------------------------------------------------- FSDP


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter names instead of indices (the form FSDP loads)."""
    names = _param_names(model)
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    sd = optimizer.state_dict()
    state = {order[i]: s for i, s in sd["state"].items()}
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def optimizer_state_by_index(named: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`optimizer_state_by_name`: indices in parameter-group order, as
    ``torch.optim.Optimizer.state_dict()`` numbers them (so checkpoints look the same with or without FSDP)."""
    index: dict[str, int] = {}
    for group in named["param_groups"]:
        for name in group["params"]:
            index.setdefault(name, len(index))
    state = {index[name]: s for name, s in named["state"].items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]
    return {"state": state, "param_groups": groups}


def fsdp_shard(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, build_optimizer: Any
) -> torch.optim.Optimizer:
    """Shard ``model`` in place with FSDP2 and return a new optimizer over the shards.

    ``fully_shard`` replaces the parameters, so the optimizer built on the plain
    model must be rebuilt (``build_optimizer(model)``); its state (restored from
    a checkpoint on resume) is carried over by parameter name, every rank
    holding the full state and keeping its shard.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    named = optimizer_state_by_name(model, optimizer) if optimizer.state else None
    wrap_model(model, "fsdp", next(model.parameters()).device)
    new = build_optimizer(model)
    if named is not None:
        set_optimizer_state_dict(model, new, named, options=StateDictOptions(full_state_dict=True))
    return new


def full_state_views(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[torch.nn.Module | None, Any]:
    """A plain model holding the full weights and an object whose ``state_dict()`` is the full,
    index-keyed optimizer state, on rank 0 (``(None, None)`` on the others). Every rank must call it.

    This is what checkpoints and ``final/`` save under FSDP, so they have the same
    format as without it. The plain model lives on the meta device until the full
    tensors (on the CPU) are assigned.
    """
    from types import SimpleNamespace

    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    osd = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    if not is_main():
        return None, None
    from gptforge.model.gpt import GPT
    from gptforge.model.loading import load_state_tied
    from gptforge.model.variants import apply_variants, finish_variants

    # The plain twin is rebuilt the way loading builds a model dir: the base, then each
    # variant (classifier head, LoRA adapters) in order, so every sharded tensor has its place.
    variants = list(getattr(model, "variants", None) or [])
    with torch.device("meta"):
        plain = apply_variants(GPT(model.config), variants, "the sharded model")
    load_state_tied(plain, weights, "the sharded model")  # the LM head stays the token embedding
    finish_variants(plain, variants)
    plain.tokenizer = getattr(model, "tokenizer", None)
    opt_view = SimpleNamespace(state_dict=lambda: optimizer_state_by_index(osd)) if osd is not None else None
    return plain, opt_view


def sync_stop(stop: Any, over_budget: bool = False) -> bool:
    """Make every rank agree to stop at the same step; returns the agreed ``over_budget``.

    A signal or the time budget may be seen by one rank a step before another;
    a rank that left the loop alone would leave the others waiting in a
    collective. The largest signal number and any rank's ``over_budget`` win.
    ``stop`` is the loop's stop flag (its ``signum`` is set on every rank).
    """
    import torch.distributed as dist

    if not _active():
        return over_budget
    flags = torch.tensor([stop.signum or 0, int(over_budget)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flags = flags.cuda()
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signum, budget = (int(v) for v in flags.tolist())
    if signum and stop.signum is None:
        stop.signum = signum
    return bool(budget)


__all__ = [
    "barrier", "fsdp_shard", "full_state_views", "gather_to_main", "init", "is_fsdp", "is_main", "local_rank",
    "mean_across_ranks", "mean_dict_across_ranks", "micro_step_context", "rank", "resolve_mode", "shutdown",
    "state_for_rank", "sync_stop", "world_size", "wrap_model",
]
