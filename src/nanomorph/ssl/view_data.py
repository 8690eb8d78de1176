"""What each pretraining step trains on: the images as one validated tensor, each epoch's seeded shuffle and
each image's two views seeded by (seed, step, position), served step by step, by DataLoader workers if asked.

Every step's views are a pure function of (seed, step), so a resumed run replays them exactly and workers
build them ahead of the trainer without changing them. The augmentations themselves are nanomorph.ssl.views.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch

from nanomorph.ssl.distributed import Layout


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process (Python's str hash is salted per process)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _epoch_order(n_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch, a function of (seed, epoch) only so a resumed run can recompute it."""
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(derived_seed(seed, epoch, 1)))


def step_views(images: torch.Tensor, transform: Callable, seed: int, step: int,
               first_position: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of each (1, H, W) image, the image at `first_position + i` of the step's batch drawn
    from torch's generator reseeded by (seed, step, that position).

    Seeding per position makes a view independent of which rank or micro-batch embeds the image. fork_rng
    restores the caller's generator afterwards, so the loop neither disturbs nor depends on it. Only the CPU
    generator is reseeded (the views are made on the CPU), which keeps CUDA untouched in workers.
    """
    view1, view2 = [], []
    with torch.random.fork_rng(devices=[]):
        for position, image in enumerate(images, start=first_position):
            torch.default_generator.manual_seed(derived_seed(seed, step, position, 2))
            # Called per image (see views.py) so that no two images or views share random parameters.
            view1.append(transform(image))
            view2.append(transform(image))
    return torch.stack(view1), torch.stack(view2)


def as_batch_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) float32 [0, 1] array -> (N, 1, H, W) tensor, validated.

    A read-only array (a memory-mapped image cache, nanomorph.data.cache) is used in place, not copied:
    the loop only ever reads the data, so torch's warning about non-writable arrays does not apply.
    """
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if not torch.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise ValueError("images must be finite intensities in [0, 1]")
    return data


class StepViews(torch.utils.data.Dataset):
    """Item i = this rank's view pairs, one per micro-batch, of optimiser step `first_step + i`: its images of
    the (seed, epoch) shuffle, augmented under (seed, step, position) seeds.

    Because every item is a pure function of its step, DataLoader workers can build upcoming steps' views in
    parallel with training and still produce exactly what the main process would.
    """

    def __init__(self, data: torch.Tensor, transform: Callable, seed: int, layout: Layout, first_step: int,
                 total_steps: int):
        self.data, self.transform, self.seed, self.layout = data, transform, seed, layout
        self.steps_per_epoch = len(data) // layout.step_images
        self.first_step, self.total_steps = first_step, total_steps
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, shuffle) of the last item, reused

    def __len__(self) -> int:
        return self.total_steps - self.first_step

    def __getitem__(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        step = self.first_step + i
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(len(self.data), self.seed, epoch))
        size = self.layout.step_images
        rows = self._order[1][b * size:(b + 1) * size]
        return [step_views(self.data[rows[p.start:p.stop]], self.transform, self.seed, step, p.start)
                for p in self.layout.micro_positions()]


def _single_threaded_worker(_: int) -> None:
    # A worker augments one small image at a time; intra-op threads would only contend with the trainer's.
    torch.set_num_threads(1)


def view_loader(views: StepViews, workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        views, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        worker_init_fn=_single_threaded_worker if workers else None, prefetch_factor=2 if workers else None)


def default_view_workers(device: torch.device) -> int:
    """No workers on CPU, where they would take cores from the model and views cost a few % of a step
    (benchmarks/pretrain_throughput.py); on CUDA the GPU step is short, so views are built ahead in workers."""
    return 0 if device.type != "cuda" else max(1, min(4, (os.cpu_count() or 2) - 1))
