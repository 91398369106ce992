"""Distributed data parallel for `dsmn-host train` / `qat` under torchrun: the process group,
the global batch each step trains on, and the two layers whose batch-wide behaviour must not
depend on how the batch is split over ranks (BatchNorm statistics, dropout masks).

Why not DistributedDataParallel's wrapper: its reducer averages the one gradient of one
backward pass. PCGrad needs the scene and coarse heads' gradients summed over ranks
separately, before it projects them (projection is not linear), so the gradients are reduced
here with torch.distributed's all_reduce: one flat all_reduce of both heads' gradients a step.
"""

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_f
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from dsmn_host.errors import DsmnError



def pick_device(name="auto"):
    """The torch device `--device` names (auto: CUDA when present); one home for train, qat and
    teacher-logits, here because every process-group decision depends on it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DsmnError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


class Distributed:
    """This process's place in a torchrun job (world 1 without torchrun: every collective is a no-op).

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT for its rendezvous, on
    one node or many); `setup` joins the process group, gloo on CPU, nccl on CUDA."""

    def __init__(self, world=1, rank=0, local_rank=0, owns_group=False):
        self.world, self.rank, self.local_rank, self.owns_group = world, rank, local_rank, owns_group

    @property
    def main(self):
        return self.rank == 0

    @classmethod
    def setup(cls, device):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        owns = not dist.is_initialized()
        if owns:
            cuda = device == "cuda" or device.startswith("cuda:") or (device == "auto" and _cuda_available())
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(world, rank, local_rank, owns)

    def device(self, name):
        """Each rank its own GPU (cuda -> cuda:LOCAL_RANK); CPU ranks share the CPU."""
        dev = pick_device(name)
        if dev.type == "cuda" and self.world > 1 and dev.index is None:
            dev = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(dev)
        return dev

    def all_reduce(self, tensor):
        """Sum over ranks, in place."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_model(self, model):
        """Rank 0's parameters and buffers everywhere (they are equal by seeding; this makes sure)."""
        if self.world > 1:
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, 0)

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False


def _cuda_available():
    return torch.cuda.is_available()


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch over all ranks.

    Mean, then variance about it, are summed over ranks with the autograd-aware all_reduce, so
    the backward pass is the one-process gradient of the global batch too. (torch's
    SyncBatchNorm does this only for GPU tensors.) Eval, and world 1, are plain BatchNorm2d;
    the state dict is BatchNorm2d's."""

    def forward(self, x):
        if not (self.training and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        # statistics in float32 also under --amp (autocast hands BatchNorm fp16/bf16 activations;
        # cuDNN's BatchNorm accumulates in float32, and a bf16 mean is only 3 digits)
        with torch.autocast(x.device.type, enabled=False):
            return self._global_forward(x.float()).to(x.dtype)

    def _global_forward(self, x):
        dims = (0, 2, 3)
        count = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], device=x.device)
        count = dist_f.all_reduce(count)
        mean = dist_f.all_reduce(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = dist_f.all_reduce(centred.pow(2).sum(dims)) / count
        with torch.no_grad():
            m = self.momentum
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp_min(1))
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class GlobalBatchDropout(nn.Dropout):
    """Dropout whose mask is drawn for the whole global batch (`global_rows` rows, the same
    draw on every rank) and indexed by this rank's `positions`: the same masks however the
    batch is split. With one process the draw is exactly nn.Dropout's on CPU."""

    global_rows, positions = None, None

    def forward(self, x):
        if not self.training or self.p == 0 or self.global_rows is None:
            return super().forward(x)
        noise = torch.empty((self.global_rows,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        noise.bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[self.positions]


def prepare_for_ranks(model, ctx, sync_batchnorm=True):
    """Swap in the global-batch Dropout (always: world 1 draws as nn.Dropout does) and, in a
    distributed run with `sync_batchnorm`, the global-batch BatchNorm; weights are kept."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, GlobalBatchDropout(child.p))
            elif type(child) is nn.BatchNorm2d and ctx.world > 1 and sync_batchnorm:
                bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
                bn.load_state_dict(child.state_dict())
                setattr(parent, name, bn.to(child.weight.device))
    return model


def set_dropout_rows(model, global_rows, positions):
    for m in model.modules():
        if hasattr(m, "global_rows") and hasattr(m, "positions"):
            m.global_rows, m.positions = global_rows, positions


def global_batches(train_rows, batch_size, ctx, seed, epoch):
    """(global rows, this rank's positions in them) per step: sorted global batch of
    `batch_size` clips made of the ranks' DistributedSampler shares."""
    if batch_size % ctx.world:
        raise DsmnError(f"--batch-size {batch_size} is the global batch: it must be a multiple of the "
                        f"{ctx.world} processes")
    per_rank = batch_size // ctx.world
    shares = []
    for rank in range(ctx.world):
        sampler = DistributedSampler(range(len(train_rows)), num_replicas=ctx.world, rank=rank,
                                     shuffle=True, seed=seed * 1_000_003, drop_last=False)
        sampler.set_epoch(epoch)
        shares.append(np.asarray(list(sampler), dtype=np.int64))
    for start in range(0, len(shares[0]), per_rank):
        parts = [train_rows[sh[start:start + per_rank]] for sh in shares]
        rows = np.concatenate(parts)
        order = np.argsort(rows, kind="stable")
        where = np.empty_like(order)
        where[order] = np.arange(len(order))
        offset = sum(len(p) for p in parts[:ctx.rank])
        yield rows[order], np.sort(where[offset:offset + len(parts[ctx.rank])])


def reduce_grads(params, reduce):
    """Sum `.grad` over ranks in one flat all_reduce."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
        offset += g.numel()
