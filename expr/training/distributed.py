"""Processes: the Accelerator of a run (CPU/gloo or CUDA, DDP or DeepSpeed), its config kept in step with expr's, and
the cross-rank checks (one value agreed by all ranks, a parameter checksum from each)."""

from __future__ import annotations

import contextlib
import os

import torch

from expr.config import Config, ConfigError, available_cores


def use_cpu_deepspeed() -> None:
    """Without CUDA, DeepSpeed must pick its CPU accelerator, which it does once, when first imported: call this
    before anything imports it (set here, in the process that trains, rather than as a side effect of an import)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def make_accelerator(cfg: Config, project_dir: str | None, trackers: list[str]):
    """The run's Accelerator. Without CUDA, processes started by the multi-GPU launcher are told to use the CPU
    (gloo), or accelerate falls back to one process per launch; DeepSpeed without CUDA gets a gloo group."""
    use_cpu_deepspeed()
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
    no_cuda = not torch.cuda.is_available()
    handlers = [InitProcessGroupKwargs(backend="gloo")] if deepspeed and no_cuda else []
    if cfg.finetune.method != "frozen" or cfg.finetune.audio_method != "frozen":
        # A tuned encoder's weights can miss a step's graph (a batch without a face skips the image tower; a pooling
        # that leaves the projection out): DDP must not wait for their gradients.
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    acc = Accelerator(
        cpu=no_cuda and not deepspeed,  # cpu=True would silently drop DeepSpeed
        kwargs_handlers=handlers,
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=project_dir or ".", logging_dir=None),
    )
    if acc.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        torch.set_num_threads(cfg.train.cpu_threads or max(1, available_cores() // max(1, local)))
    return acc


def agree(acc, value_on_main):
    """``value_on_main`` as computed by the main process, on every process."""
    from accelerate.utils import broadcast_object_list

    holder = [value_on_main if acc.is_main_process else None]
    broadcast_object_list(holder)
    return holder[0]


def sync_deepspeed_config(acc, cfg: Config) -> None:
    """expr's config is the one source of truth for clipping and accumulation: fill DeepSpeed's ``auto`` (or
    missing) values from it, and refuse a DeepSpeed config that says otherwise."""
    plugin = acc.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    for ds_key, cfg_key, ours in (
        ("gradient_clipping", "train.max_grad_norm", float(cfg.train.max_grad_norm or 0.0)),
        ("gradient_accumulation_steps", "train.grad_accum_steps", cfg.train.grad_accum_steps),
    ):
        theirs = ds.get(ds_key, "auto")
        if theirs != "auto" and float(theirs) != float(ours):
            raise ConfigError(
                f"the DeepSpeed config sets {ds_key}={theirs} but {cfg_key} is {ours}: set it to 'auto' in the "
                f"accelerate/DeepSpeed config (expr fills it in) or pass --{cfg_key} {theirs}"
            )
        ds[ds_key] = ours
    for block in ("optimizer", "scheduler"):
        if block in ds:
            raise ConfigError(
                f"the DeepSpeed config has a '{block}' block: remove it; expr builds AdamW and the cosine "
                f"schedule from train.* so there is one source of truth"
            )


def param_checksums(acc, model) -> list[float]:
    """Every rank's sum of the (whole, ZeRO-3 partitions gathered) parameters; identical ranks agree."""
    from accelerate.utils import gather_object

    params = list(acc.unwrap_model(model).parameters())
    plugin = acc.state.deepspeed_plugin
    gathered = contextlib.nullcontext()
    if plugin is not None and plugin.zero_stage == 3:  # each rank holds a partition: gather to compare
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params)
    with gathered:
        checksum = float(sum(p.detach().double().sum() for p in params))
    return gather_object([checksum])


def whole_parameter(acc, param) -> torch.Tensor:
    """A CPU copy of one parameter of the prepared model, whole on every rank (ZeRO-3 partitions gathered)."""
    plugin = acc.state.deepspeed_plugin
    gathered = contextlib.nullcontext()
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([param])
    with gathered:
        return param.detach().float().cpu().clone()


def loss_scale(acc, optimizer) -> float | None:
    """The current fp16 loss scale: accelerate's GradScaler (fp16 autocast) or DeepSpeed's dynamic scaler (its ZeRO
    optimizer's ``loss_scale``); None when no loss scaling runs (fp32, bf16)."""
    scaler = getattr(acc, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        return float(scaler.get_scale())
    if acc.state.deepspeed_plugin is None or acc.mixed_precision != "fp16":
        return None
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper around DeepSpeed's optimizer
    value = getattr(inner, "loss_scale", None)
    return float(value) if isinstance(value, (int, float)) else None


# What gloo and NCCL say when a process of the group is gone (killed, its machine down or unreachable): its sockets
# closed, the communicator aborted by the watchdog, or a collective that waited out the group's timeout.
PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "communicator was aborted",
             "collective operation timeout", "timed out waiting")  # fmt: skip


def peer_failure(exc: BaseException) -> str | None:
    """The collective's own words when ``exc`` says that another process of a multi-process run stopped, else None.
    A killed peer closes its sockets, so gloo raises at the next collective (seconds); a peer that hangs instead is
    noticed after the process group's timeout (torch's default: 30 minutes for gloo, 10 for NCCL)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    dist_error = getattr(torch.distributed, "DistError", ())
    if isinstance(exc, dist_error) or any(s in text.lower() for s in PEER_LOST):
        return text.strip().splitlines()[0][-300:] if text.strip() else type(exc).__name__
    return None


def leave_process_group() -> None:
    """Tear down the process group, if one is up, once every rank got here. Leaving with a live gloo/NCCL group lets
    its threads race interpreter exit ("terminate called without an active exception", SIGABRT on a finished run).
    Entry points only: a sweep worker trains many runs in one group. A group that lost a process is torn down
    without waiting for it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()  # no rank tears down while another still writes
        except RuntimeError:
            pass  # a process of the group is gone: nobody left to wait for
        torch.distributed.destroy_process_group()


def exit_process(code: int) -> None:
    """Leave a command with ``code``. In a multi-process launch everything is written (atomically) and the group is
    gone by now, yet interpreter teardown can still abort in C++ and make the launcher report a failure, so such a
    process leaves without it."""
    import logging
    import sys

    leave_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
