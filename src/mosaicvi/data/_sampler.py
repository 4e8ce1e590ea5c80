"""Chunk-shuffled minibatches, so that data read from disk are read in runs of cells.

A minibatch of randomly chosen cells reads one scattered row per cell from a backed h5mu: the
file is read in tiny pieces. :class:`ChunkedBatchSampler` shuffles *chunks* of cells
consecutive in the file instead (and the cells within each minibatch), so that each minibatch
is a few runs of rows (:func:`~mosaicvi.data.read_rows` reads a run at once).
:class:`MosaicDataSplitter` uses it for the training loader: by default when a registered
matrix is backed, or whenever ``chunk_size`` is given (``model.train(chunk_size=64)``). The
splitter can also keep the data on the training device (``model.train(data_on_device=True)``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
from scvi import settings
from scvi.dataloaders import DataSplitter
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
)

from mosaicvi._checks import check_bool, check_int

from ._backed import is_backed
from ._dataset import _ON_DEVICE_BACKED

#: Cells per chunk when the data are backed and no ``chunk_size`` is given.
DEFAULT_CHUNK_SIZE = 64


class ChunkedBatchSampler(DistributedSampler):
    """Minibatches of positions whose cells are runs of consecutive cells, runs shuffled.

    Also the sampler of every loader under several processes (Lightning DDP). It is a
    :class:`~torch.utils.data.DistributedSampler` over the epoch's minibatches: the parent
    class hands each replica every ``num_replicas``-th minibatch (its ``rank``, ``epoch``,
    ``set_epoch`` and length are the parent's), and Lightning leaves a
    ``DistributedSampler`` as it is (it wraps any other sampler in its own distributed
    wrapper, which would split each replica's share again).

    Parameters
    ----------
    indices
        The MuData cells of the loader (positions ``0 .. len(indices) - 1`` are yielded).
    batch_size
        Cells per minibatch.
    chunk_size
        Cells per chunk of consecutive cells (in MuData order); 1 shuffles single cells.
    drop_last
        Drop the last, smaller minibatch (with several replicas: the cells that do not fill
        ``batch_size`` cells on every replica).
    seed
        Seed of the shuffling (with ``epoch`` added, see ``set_epoch``); ``None`` draws
        each epoch's order from torch's global generator. Needed with several replicas, which
        must agree on the order.
    num_replicas, rank
        Distributed training: the epoch's order is cut into ``num_replicas x n_steps``
        consecutive minibatches of near-equal size (at most ``batch_size``), and replica
        ``rank`` gets every ``num_replicas``-th of them: every cell is in exactly one
        replica's minibatch per epoch, and every replica runs ``n_steps`` steps.
    shuffle
        Shuffle the chunks every epoch; ``False`` keeps the cells in order (evaluation).
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        chunk_size: int,
        drop_last: bool = False,
        seed: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
    ) -> None:
        for name, value, minimum in (
            ("batch_size", batch_size, 1),
            ("chunk_size", chunk_size, 1),
            ("num_replicas", num_replicas, 1),
            ("rank", rank, 0),
        ):
            check_int(name, value, minimum)
        if rank >= num_replicas:
            raise ValueError(f"`rank` must be below `num_replicas` ({num_replicas}), got {rank}.")
        check_bool("drop_last", drop_last)
        check_bool("shuffle", shuffle)
        if seed is not None:
            check_int("seed", seed, minimum=0)
            seed = int(seed)
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise TypeError(
                f"`indices` must be a 1-D array of integer cell positions, got {indices.dtype} "
                f"of shape {indices.shape}."
            )
        if num_replicas > 1 and seed is None and shuffle:
            raise ValueError("Several replicas need a `seed` to agree on the order.")
        order = np.argsort(indices, kind="stable")  # positions in cell order
        self.chunks = [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]
        self.n = len(order)
        per_step = batch_size * num_replicas
        n_steps = self.n // per_step if drop_last else -(-self.n // per_step)
        if self.n > 0 and n_steps == 0:
            raise ValueError(
                f"{self.n} cell(s) make no full minibatch of {batch_size} on each of "
                f"{num_replicas} process(es) with `drop_last=True`: the epoch would have no "
                "step. Use a smaller `batch_size`, fewer devices or `drop_last=False`."
            )
        if num_replicas > 1 and self.n > 0 and n_steps * num_replicas > self.n:
            raise ValueError(
                f"{self.n} cell(s) cannot be split between {num_replicas} processes in "
                f"minibatches of {batch_size} so that every process has a cell at every step: "
                "use fewer devices, a larger `batch_size`, or (for the validation set) a "
                "larger share of validation cells (`train_size`)."
            )
        # the parent samples the epoch's n_steps x num_replicas minibatches, in order
        super().__init__(
            range(n_steps * num_replicas), num_replicas=num_replicas, rank=rank, shuffle=False
        )
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.shuffle_chunks = shuffle

    def _positions(self) -> np.ndarray:
        if not self.shuffle_chunks:
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=int)
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.chunks), generator=generator).numpy()
        return np.concatenate([self.chunks[i] for i in perm]) if perm.size else perm

    def _minibatches(self) -> list[np.ndarray]:
        """The epoch's minibatches, every replica's, in order."""
        positions = self._positions()
        n_batches = len(self.dataset)
        if n_batches == 0:  # no cell
            return []
        if self.num_replicas == 1:  # minibatches of batch_size, the last one smaller
            starts = range(0, n_batches * self.batch_size, self.batch_size)
            return [positions[start : start + self.batch_size] for start in starts]
        if self.drop_last:
            positions = positions[: n_batches * self.batch_size]
        return np.array_split(positions, n_batches)

    def __iter__(self) -> Iterator[list[int]]:
        minibatches = self._minibatches()
        for i in super().__iter__():  # this replica's share
            yield minibatches[i].tolist()


class MosaicDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` that can read chunks of cells or keep data on device.

    Parameters
    ----------
    adata_manager
        The model's data manager.
    chunk_size
        Cells per chunk of :class:`ChunkedBatchSampler` for the training loader. ``None``
        (default): chunks of ``DEFAULT_CHUNK_SIZE`` when a registered count matrix is
        backed (on disk), the usual cell-level shuffling otherwise; ``0``: never chunk.
    data_on_device
        Copy the registered matrices to the training device once
        (:meth:`~mosaicvi.data.MosaicTorchDataset.to`) and gather every minibatch there: no
        host-to-device copy per step, no loader workers. For data that fit in the
        accelerator's memory (count matrices in memory, not backed).
    **kwargs
        :class:`~scvi.dataloaders.DataSplitter`'s arguments.
    """

    def __init__(
        self,
        adata_manager,
        chunk_size: int | None = None,
        data_on_device: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(adata_manager, **kwargs)
        backed = any(is_backed(m) for m in adata_manager.count_matrices().values())
        if data_on_device and backed:
            raise ValueError(_ON_DEVICE_BACKED)
        self._chunk_size_given = chunk_size is not None
        if chunk_size is None:
            chunk_size = DEFAULT_CHUNK_SIZE if backed else 0
        check_int("chunk_size", chunk_size, minimum=0)
        check_bool("data_on_device", data_on_device)
        self.chunk_size = int(chunk_size)
        self.data_on_device = bool(data_on_device)
        self._device_dataset = None

    def _loader_kwargs(self) -> tuple[dict, dict, int]:
        kwargs = dict(self.data_loader_kwargs)
        replicas = {}
        kwargs.pop("distributed_sampler", None)
        # several processes, whatever the strategy's name: split here (Lightning leaves a
        # DistributedSampler as it is)
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:
            replicas = {
                "num_replicas": world,
                "rank": self.trainer.global_rank,
                "seed": settings.seed or 0,
            }
        for key in ("data_and_attributes", "iter_ndarray", "drop_dataset_tail"):
            if kwargs.pop(key, None):
                raise ValueError(f"`{key}` is not supported with `chunk_size` or on device.")
        batch_size = kwargs.pop("batch_size", None) or settings.batch_size
        return kwargs, replicas, batch_size

    def _loader(self, indices: np.ndarray, sampler: Sampler, kwargs: dict) -> DataLoader:
        if not self.data_on_device:
            kwargs.setdefault("num_workers", settings.dl_num_workers)
            dataset = self.adata_manager.create_torch_dataset(indices=indices)
            return DataLoader(
                dataset, sampler=sampler, batch_size=None, pin_memory=self.pin_memory, **kwargs
            )
        if kwargs.pop("num_workers", 0):
            raise ValueError("`num_workers` must be 0 with `data_on_device=True`.")
        kwargs.pop("persistent_workers", None)
        if self._device_dataset is None:
            if self.trainer is None:
                raise RuntimeError("`data_on_device=True` needs the splitter used by a trainer.")
            dataset = self.adata_manager.create_torch_dataset()
            self._device_dataset = dataset.to(self.trainer.strategy.root_device)
        dataset = Subset(self._device_dataset, np.asarray(indices))
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0, **kwargs)

    def train_dataloader(self):
        kwargs, replicas, batch_size = self._loader_kwargs()
        if not (self.chunk_size or self.data_on_device or replicas):
            return super().train_dataloader()
        if self._chunk_size_given and self.chunk_size >= len(self.train_idx) > 1:
            warnings.warn(
                f"`chunk_size={self.chunk_size}` is at least the {len(self.train_idx)} training "
                "cells: they form one chunk, so they are not shuffled and every epoch has the "
                "same minibatches. Use a smaller `chunk_size` (e.g. 64).",
                UserWarning,
                stacklevel=2,
            )
        if self.chunk_size or replicas:
            sampler = ChunkedBatchSampler(
                self.train_idx, batch_size, self.chunk_size or 1, self.drop_last, **replicas
            )
        else:  # scvi-tools' AnnDataLoader sampler: the same order from the same seed
            cells = range(len(self.train_idx))
            sampler = BatchSampler(RandomSampler(cells), batch_size, self.drop_last)
        return self._loader(self.train_idx, sampler, kwargs)

    def _evaluation_loader(self, indices: np.ndarray, default):
        kwargs, replicas, batch_size = self._loader_kwargs()
        if len(indices) == 0 or not (self.data_on_device or replicas):
            return default()
        if replicas:  # every cell once, on one of the replicas
            sampler = ChunkedBatchSampler(indices, batch_size, 1, False, shuffle=False, **replicas)
        else:
            sampler = BatchSampler(SequentialSampler(range(len(indices))), batch_size, False)
        return self._loader(indices, sampler, kwargs)

    def val_dataloader(self):
        return self._evaluation_loader(self.val_idx, super().val_dataloader)

    def test_dataloader(self):
        return self._evaluation_loader(self.test_idx, super().test_dataloader)
