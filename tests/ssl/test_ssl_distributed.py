"""torch.distributed on two CPU (gloo) processes against single-process references: the losses' gradients, and
whole DDP pretraining runs (`pretrain` under an initialised process group) against `pretrain(bn_groups=2)`.

The two ranks are spawned ONCE per module (process start-up dominates the cost); they record what they
compute and the tests below compare it with references computed here.
"""

import datetime
import functools
import os
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanomorph.models.encoder import random_encoder
from nanomorph.ssl.barlow_twins import barlow_twins_loss
from nanomorph.ssl.simclr import nt_xent_loss
from nanomorph.ssl.train import pretrain

from texture_images import textures

WORLD, N_PER_RANK, DIM = 2, 4, 6

# Tiny DDP runs: resnet18 on 32 px views. SGD (not AdamW, whose near-sign first steps turn rounding noise in
# near-zero gradients into lr-sized differences) so that weight differences measure gradient differences.
SETTINGS = dict(
    arch="resnet18", image_size=32, optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-6,
    warmup_epochs=0, temperature=0.1, lambd=0.005, projector_dims=[128, 64, 1024], crop_side=[0.25, 0.5],
    flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, seed=0, progress=False,
)
RUNS = {  # name: (number of images, settings); one optimiser step each, except the resumed run
    "simclr_one_step": (8, dict(SETTINGS, method="simclr", batch_size=8, epochs=1, checkpoint_every=0)),
    "barlow_accumulated_one_step": (16, dict(SETTINGS, method="barlow_twins", batch_size=8, accumulate_steps=2,
                                             epochs=1, checkpoint_every=0)),
    # 4 steps; resumed at step 2 from a checkpoint of the single-process reference
    "simclr_resumed": (16, dict(SETTINGS, method="simclr", batch_size=8, epochs=2, checkpoint_every=2)),
}


# ---- the losses ----------------------------------------------------------------------------------------

def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(WORLD * N_PER_RANK, DIM, generator=g)
    return z1, z1 + 0.5 * torch.randn(WORLD * N_PER_RANK, DIM, generator=g)


def _barlow_blockwise(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Single-process Barlow Twins with each rank's block standardised on its own (unsynchronised BN)."""
    def standardise(z):
        return torch.cat([(b - b.mean(0)) / torch.sqrt(b.var(0, unbiased=False) + 1e-5) for b in z.split(N_PER_RANK)])

    c = standardise(z1).T @ standardise(z2) / len(z1)
    off = c - torch.diag(torch.diagonal(c))
    return (torch.diagonal(c) - 1).pow(2).sum() + 0.005 * off.pow(2).sum()


LOSSES = {"simclr": (nt_xent_loss, nt_xent_loss), "barlow_twins": (barlow_twins_loss, _barlow_blockwise),
          # With sync (CUDA DDP, SyncBatchNorm) the ranks' standardisation is the whole global batch's.
          "barlow_twins_sync": (functools.partial(barlow_twins_loss, sync=True), barlow_twins_loss)}


def _reference(loss_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of the whole global batch in one process."""
    z1, z2 = (z.requires_grad_() for z in _global_batch())
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


def _rank_loss(loss_fn, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean of the ranks' losses, and this rank's gradients of its own rows."""
    z1, z2 = _global_batch()
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    l1, l2 = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
    local = loss_fn(l1, l2)
    local.backward()
    total = local.detach().clone()
    dist.all_reduce(total)
    return total / WORLD, l1.grad, l2.grad


# ---- the two ranks -------------------------------------------------------------------------------------

def _rank_main(rank: int, init_file: str, out_dir: str, checkpoint: str) -> None:
    torch.set_num_threads(1)  # two processes on a shared machine
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        record = {"losses": {name: _rank_loss(distributed, rank) for name, (distributed, _) in LOSSES.items()}}
        for name, (n, settings) in RUNS.items():
            ckpt = f"{out_dir}/{name}-rank{rank}.ckpt"  # per rank: only rank 0's may be read or written
            if name == "simclr_resumed" and rank == 0:
                shutil.copy(checkpoint, ckpt)
            logged = []
            result = pretrain(textures(n), **settings, checkpoint_path=ckpt,
                              log_fn=lambda metrics, step: logged.append(step))
            record[name] = {"encoder": result.encoder.state_dict(), "history": result.history,
                            "logged_steps": sorted(set(logged)),
                            "checkpoint_step": torch.load(ckpt, weights_only=True)["step"] if rank == 0 else None,
                            "rank1_checkpoint_exists": rank == 1 and os.path.exists(ckpt)}
        torch.save(record, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class _StopAfterStep2(Exception):
    pass


def _stop_at_step_3(metrics, step):
    if step == 3:  # the checkpoint of step 2 is on disk; step 3's is not
        raise _StopAfterStep2


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run every rank-side check in one spawn; return (rank 0's record, rank 1's record, the references)."""
    tmp = tmp_path_factory.mktemp("ddp")
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside the two single-threaded ranks on a shared machine
    try:
        n, settings = RUNS["simclr_resumed"]
        partial = tmp / "reference-step2.ckpt"
        with pytest.raises(_StopAfterStep2):
            pretrain(textures(n), **settings, bn_groups=WORLD, checkpoint_path=partial, log_fn=_stop_at_step_3)
        assert torch.load(partial, weights_only=True)["step"] == 2
        # The references are computed while the ranks start up and run.
        ranks = mp.spawn(_rank_main, args=(str(tmp / "rendezvous"), str(tmp), str(partial)), nprocs=WORLD,
                         join=False)
        references = {name: pretrain(textures(n), **settings, bn_groups=WORLD, checkpoint_path=None)
                      for name, (n, settings) in RUNS.items()}
        references["simclr_resumed_from"] = torch.load(partial, weights_only=True)["encoder"]
        while not ranks.join():
            pass
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    records = torch.load(tmp / "rank0.pt", weights_only=False), torch.load(tmp / "rank1.pt", weights_only=False)
    yield *records, references
    shutil.rmtree(tmp, ignore_errors=True)  # ~0.6 GB of checkpoints: free it when the module ends (CI disk)


def _weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters only: BatchNorm running statistics are rank 0's, a different quantity (see below)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


@functools.cache
def _initial_encoder() -> dict[str, torch.Tensor]:
    """The encoder weights every run starts from (pretrain initialises under `seed` like random_encoder)."""
    return {f"trunk.{k}": v for k, v in random_encoder("resnet18", SETTINGS["seed"]).trunk.state_dict().items()}


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ---- tests ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(LOSSES))
def test_losses_across_two_ranks_match_single_process(two_ranks, method):
    """The mean of the ranks' losses equals the reference, and each rank's gradient is world-size times the
    reference's (DDP averages the ranks' gradients, which recovers the reference gradient). With negatives
    gathered across ranks, SimCLR is exactly the NT-Xent of the whole global batch."""
    ref_loss, ref_g1, ref_g2 = _reference(LOSSES[method][1])
    for rank, record in enumerate(two_ranks[:2]):
        loss, g1, g2 = record["losses"][method]
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g1, WORLD * ref_g1[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g2, WORLD * ref_g2[rows], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["simclr_one_step", "barlow_accumulated_one_step"])
def test_ddp_step_matches_single_process_with_the_same_global_batch(two_ranks, name):
    """One optimiser step of two ranks (4 images each per micro-batch) = one process taking the 8-image batch
    with BatchNorm in two groups (bn_groups=2); for Barlow Twins over two accumulated micro-batches, which
    exercises DDP's no_sync. Measured max abs weight differences: 1.7e-6 (SimCLR; the step moved the weights
    by up to 0.16) and 1.9e-4 (Barlow Twins, whose ~2000 loss moved them by up to 31): 1e-5 and 6e-6 of it."""
    rank0, rank1, references = two_ranks
    reference = references[name]
    ddp, expected = _weights(rank0[name]["encoder"]), _weights(reference.encoder.state_dict())
    moved = max_abs_difference(expected, _weights(_initial_encoder()))
    assert max_abs_difference(ddp, expected) < 1e-4 * moved
    assert max_abs_difference(ddp, _weights(rank1[name]["encoder"])) == 0.0  # DDP keeps the ranks identical
    assert rank0[name]["history"][0]["loss"] == pytest.approx(reference.history[0]["loss"], rel=1e-5)
    assert rank0[name]["logged_steps"] == [1] and rank1[name]["logged_steps"] == []


def test_ddp_resumes_from_rank0_checkpoint_and_only_rank0_writes(two_ranks):
    """Both ranks resume from rank 0's checkpoint (rank 1's path holds none: the state is broadcast), finish
    the run, and only rank 0 logs and writes the checkpoint.

    Over several steps rounding differences (gradient all-reduce vs one backward) are amplified by the
    training dynamics -- one process run with 1 vs 2 threads differs by as much -- so weights are compared
    with how far the two resumed steps moved them: measured 4.2e-5 of 0.097 (0.04 %)."""
    rank0, rank1, references = two_ranks
    run0, run1, reference = rank0["simclr_resumed"], rank1["simclr_resumed"], references["simclr_resumed"]
    assert run0["logged_steps"] == [3, 4] and run1["logged_steps"] == []
    assert run0["checkpoint_step"] == 4 and not run1["rank1_checkpoint_exists"]
    # The first epoch's entry came from the broadcast checkpoint; the loss is averaged over the ranks, the collapse
    # indicators come from each rank's own rows of the step (rank 0's are the ones logged and checkpointed).
    assert run1["history"][0] == run0["history"][0]
    assert [h["loss"] for h in run1["history"]] == [h["loss"] for h in run0["history"]]
    assert [h["epoch"] for h in run0["history"]] == [1, 2]
    assert run0["history"][0] == reference.history[0]
    assert run0["history"][1]["loss"] == pytest.approx(reference.history[1]["loss"], rel=1e-3)
    ddp, expected = _weights(run0["encoder"]), _weights(reference.encoder.state_dict())
    moved = max_abs_difference(expected, _weights(references["simclr_resumed_from"]))
    assert max_abs_difference(ddp, expected) < 0.02 * moved
    assert max_abs_difference(ddp, _weights(run1["encoder"])) == 0.0
