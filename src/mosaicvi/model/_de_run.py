"""One differential analysis run: batches, decoding passes, scvi-tools' test, raw statistics."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy import sparse
from scvi.model.base import DifferentialComputation

from mosaicvi._checks import check_bool
from mosaicvi._compat import fdr_de_prediction
from mosaicvi.data._backed import row_blocks

from ._de_checks import _check_test, _comparisons
from ._de_samples import _GivenSamples, _GroupCounts, _Replay

#: scvi-tools' default number of pairs with ``use_permutation=True``
_M_PERMUTATION = (
    inspect.signature(DifferentialComputation.get_bayes_factors)
    .parameters["m_permutation"]
    .default
)

#: Raw statistics of the measured cells of each group (``all_stats``)
_STATS = [
    f"{stat}{k}"
    for stat in ("n_measured", "raw_mean", "non_zeros_proportion", "raw_normalized_mean")
    for k in "12"
]

#: Bytes of posterior samples held at once, both groups together (float32). When the samples
#: of all features would need more, the features are decoded in passes of as many as fit, the
#: same latent samples each pass.
SAMPLE_BYTES = 2**30
#: Bytes of scvi-tools' test temporaries per call: its ``"change"`` mode holds about
#: ``_TEST_BYTES_PER_VALUE`` bytes per sample and feature (float64 log fold changes, their
#: copies and masks), so the test runs on as many features at a time as fit.
TEST_BYTES = 2**28
_TEST_BYTES_PER_VALUE = 48
#: Values of the measured counts read per block for the raw statistics.
RAW_BLOCK_VALUES = 2**22


class _DifferentialRun:
    """The machinery of :class:`MosaicDifferentialMixin`'s public methods."""

    def _differential(
        self,
        mod: str,
        adata: MuData | None,
        groupby: str | None,
        group1,
        group2,
        idx1: Sequence[int] | Sequence[bool] | None,
        idx2: Sequence[int] | Sequence[bool] | None,
        given: Sequence[str] | None,
        mode: Literal["vanilla", "change"],
        delta: float,
        batch_size: int | None,
        all_stats: bool,
        batch_correction: bool,
        batchid1: Sequence[str] | None,
        batchid2: Sequence[str] | None,
        fdr_target: float,
        n_samples_overall: int,
        seed: int,
        decode_kwargs: dict | None = None,
        **kwargs,
    ) -> pd.DataFrame:
        self._check_if_trained(warn=False)
        self._require(mod)
        test = _check_test(mode, delta, fdr_target, n_samples_overall, seed, kwargs)
        for name, value in (("all_stats", all_stats), ("batch_correction", batch_correction)):
            check_bool(name, value)
        for name, value in (decode_kwargs or {}).items():
            check_bool(name, value)
        mdata, _, _, _ = self._prepare(adata, None, None, batch_size)  # the gate
        given = self._check_given(given)
        manager = self.get_anndata_manager(mdata, required=True)
        usable = np.ones(mdata.n_obs, dtype=bool)
        if given is not None:  # a latent needs at least one of the given modalities
            usable = manager.cells_with(given)
        comparisons = _comparisons(mdata, groupby, group1, group2, idx1, idx2)
        batches = self._de_batches(manager, mod, batch_correction, batchid1, batchid2, test)
        test["use_observed_batches"] = not batch_correction
        run = {
            "mdata": mdata, "manager": manager, "mod": mod, "given": given,
            "batch_size": batch_size, "usable": usable, "test": test, "batches": batches,
            "rng": np.random.default_rng(seed), "all_stats": all_stats,
            "decode_kwargs": decode_kwargs or {},
        }  # fmt: skip
        with torch.random.fork_rng():  # reproducible latent samples; the global RNG untouched
            torch.manual_seed(seed)
            frames = [self._compare(run, comparison) for comparison in comparisons]
        for frame in frames:
            if mode == "change":
                frame[f"is_de_fdr_{fdr_target}"] = fdr_de_prediction(
                    frame["proba_de"], fdr=fdr_target
                )
        return pd.concat(frames)

    def _de_batches(self, manager, mod, batch_correction, batchid1, batchid2, test) -> tuple:
        """The batches each group is decoded in (``[None]``: the cells' own), as scvi-tools.

        scvi-tools documents ``batchid1`` / ``batchid2`` as used only with
        ``batch_correction=True``, each defaulting to every batch: here every batch that
        measured ``mod`` (the others have no learned effect on it).
        """
        if not batch_correction:
            named = [
                n for n, b in (("batchid1", batchid1), ("batchid2", batchid2)) if b is not None
            ]
            if named:
                warnings.warn(
                    f"{' and '.join(f'`{n}`' for n in named)} ignored: as in scvi-tools, "
                    "`batchid1` / `batchid2` are only used with `batch_correction=True` "
                    "(without it each cell is decoded in its own batch).",
                    UserWarning,
                    stacklevel=4,
                )
            return [None], [None]
        categories = manager.batch_categories()
        measured = [str(b) for b in self.measured_batches_[mod]]
        out = []
        for name, value in (("batchid1", batchid1), ("batchid2", batchid2)):
            if value is None:
                out.append(measured)
                continue
            if isinstance(value, str) or np.ndim(value) == 0:
                value = [value]
            wanted = [str(b) for b in value]  # batches are compared as strings
            unknown = [b for b in wanted if b not in categories]
            if unknown or not wanted:
                raise ValueError(
                    f"`{name}` must name batches of the model, got {list(value)!r}; the "
                    f"batches are {categories}."
                )
            if len(set(wanted)) != len(wanted):
                raise ValueError(f"`{name}` names a batch twice: {wanted}.")
            unmeasured = [b for b in wanted if b not in measured]
            if unmeasured:
                raise ValueError(
                    f"`{name}` batches {unmeasured} have no cell measured in {mod!r}, so the "
                    f"model has no effect of theirs on it to decode in; the batches that "
                    f"measured it are {measured}."
                )
            out.append(wanted)
        n = test["n_samples_overall"]
        for name, batches in zip(("batchid1", "batchid2"), out):
            if n // len(batches) == 0:
                raise ValueError(
                    f"`n_samples_overall`={n} is fewer than the {len(batches)} batches of "
                    f"`{name}`: each batch needs at least one sample."
                )
        rows = [n // len(b) * len(b) for b in out]
        if set(out[0]) != set(out[1]) and rows[0] != rows[1] and not test.get("use_permutation"):
            raise ValueError(
                f"`batchid1` ({len(out[0])} batches) and `batchid2` ({len(out[1])}) split "
                f"`n_samples_overall`={n} into {rows[0]} and {rows[1]} samples, which "
                "scvi-tools pairs one to one: pass `use_permutation=True` or an "
                "`n_samples_overall` divisible by both numbers of batches."
            )
        return tuple(out)

    def _compare(self, run: dict, comparison: tuple) -> pd.DataFrame:
        """One comparison: posterior samples in passes over the features, scvi-tools' test.

        The samples of each group are ``n_samples_overall // len(batches)`` cells per batch,
        drawn uniformly with replacement, one latent sample each, decoded in float32 into
        arrays of at most ``SAMPLE_BYTES`` (both groups); a feature set too wide for it is
        decoded in passes that replay the same latent samples. scvi-tools' test then runs on
        as many features at a time as ``TEST_BYTES`` allows.
        """
        label1, label2, cells1, cells2 = comparison
        cells1, cells2 = cells1 & run["usable"], cells2 & run["usable"]
        for label, cells in ((label1, cells1), (label2, cells2)):
            if not cells.any():
                raise ValueError(
                    f"Group {label!r} has no cell"
                    + (f" with any of the modalities given={run['given']}" if run["given"] else "")
                    + "; choose other groups or `given`."
                )
        mod, test, rng = run["mod"], dict(run["test"]), run["rng"]
        n_samples = test.pop("n_samples_overall")
        draws = []  # per group: (transform_batch, sorted cells) per batch
        for cells, batches in zip((cells1, cells2), run["batches"]):
            indices = np.flatnonzero(cells)
            size = n_samples // len(batches)
            draws.append([(b, np.sort(rng.choice(indices, size=size))) for b in batches])
        labels = [
            np.concatenate([[np.nan if b is None else b] * len(c) for b, c in group])
            for group in draws
        ]
        n_features = len(self._feature_names(mod))
        n_rows = [len(lab) for lab in labels]
        width = max(1, SAMPLE_BYTES // (4 * sum(n_rows)))
        passes = [slice(a, min(a + width, n_features)) for a in range(0, n_features, width)]
        need_pseudocounts = test["mode"] == "change" and test.get("pseudocounts") is None
        stats = {}
        if run["all_stats"] or need_pseudocounts:
            stats = self._measured_stats(run["manager"], mod, cells1, cells2)
        replay = _Replay(self.module)
        scales = None
        if need_pseudocounts:  # scvi-tools' estimate, from every sample of every feature
            maxima = [np.empty(n_features, np.float32) for _ in draws]
            for cols in passes:
                scales = None  # the previous pass freed before the next is decoded
                scales = self._decode_pass(run, draws, n_rows, cols, replay)
                for out, scale in zip(maxima, scales):
                    out[cols] = scale.max(axis=0)
            estimate = _GivenSamples(
                [(cells1, maxima[0][None], np.full(1, np.nan)),
                 (cells2, maxima[1][None], np.full(1, np.nan))],
                _GroupCounts([(cells1, stats["raw_mean1"]), (cells2, stats["raw_mean2"])]),
            ).get_bayes_factors(
                cells1, cells2, **{**test, "use_permutation": False, "use_observed_batches": True}
            )  # fmt: skip
            # a NumPy float64, so that the test's arithmetic is float64 as scvi-tools' own
            test["pseudocounts"] = np.float64(estimate["pseudocounts"])
        permuted = test.get("m_permutation", _M_PERMUTATION) if test["use_permutation"] else 0
        rows_tested = max(*n_rows, permuted)
        step = max(1, TEST_BYTES // (_TEST_BYTES_PER_VALUE * rows_tested))
        parts = []
        for cols in passes:
            if len(passes) > 1 or scales is None:
                scales = None  # the previous pass freed before the next is decoded
                scales = self._decode_pass(run, draws, n_rows, cols, replay)
            for a in range(cols.start, cols.stop, step):
                sub = slice(a - cols.start, min(a + step, cols.stop) - cols.start)
                tester = _GivenSamples(
                    [(cells1, scales[0][:, sub], labels[0]),
                     (cells2, scales[1][:, sub], labels[1])]
                )  # fmt: skip
                with warnings.catch_warnings():
                    if parts:  # scvi-tools' warnings, once per comparison, not once per call
                        warnings.simplefilter("ignore")
                    info = tester.get_bayes_factors(cells1, cells2, **test)
                parts.append(
                    {k: np.broadcast_to(v, (sub.stop - sub.start,)) for k, v in info.items()}
                )
        info = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if run["all_stats"]:
            info.update(stats)
        frame = pd.DataFrame(info, index=self._feature_names(mod))
        key = "proba_de" if test["mode"] == "change" else "bayes_factor"
        frame = frame.sort_values(key, ascending=False, kind="stable")
        frame["comparison"] = f"{label1} vs {label2}"
        frame["group1"], frame["group2"] = label1, label2
        return frame

    def _decode_pass(self, run, draws, n_rows, cols: slice, replay) -> list[np.ndarray]:
        """Float32 samples ``(n_rows[k], cols)`` of each group, the latent draws replayed."""
        out = []
        for k, group in enumerate(draws):
            scale = np.empty((n_rows[k], cols.stop - cols.start), dtype=np.float32)
            start = 0
            for j, (batch, cells) in enumerate(group):
                replay.at((k, j))
                loader = self._make_data_loader(
                    adata=run["mdata"], indices=cells, batch_size=run["batch_size"]
                )
                blocks = self._denoised_blocks(
                    run["mod"], run["mdata"], loader, run["given"], batch, 1,
                    sample_latent=True, columns=cols, **run["decode_kwargs"],
                )  # fmt: skip
                for block in blocks:
                    scale[start : start + len(block)] = block
                    start += len(block)
            out.append(scale)
        return out

    def _measured_stats(self, manager, mod: str, cells1, cells2) -> dict[str, np.ndarray]:
        """Raw statistics of the cells of each group that were measured in ``mod``.

        Per feature, over the entries measured: a cell whose batch did not measure a
        feature (or whose count is NaN) is left out of that feature's statistics and of
        ``n_measured``.

        The measured rows are read from the user's matrix ``RAW_BLOCK_VALUES`` values at a
        time (in memory or backed), each block summed in float64: never a whole group.
        """
        rows = manager.modality_rows()[mod]
        matrix = manager.measured_counts(mod)[0]  # the user's matrix, in the model's order
        n_features = len(self._feature_names(mod))
        block_rows = max(1, RAW_BLOCK_VALUES // max(n_features, 1))
        batch_mask = manager.feature_masks().get(mod)
        entry_masks = batch_mask is not None or mod in manager.nan_modalities()
        codes = manager.batch_codes()
        out = {}
        for k, cells in (("1", cells1), ("2", cells2)):
            idx = np.flatnonzero(cells & (rows >= 0))
            order = np.argsort(rows[idx], kind="stable")
            measured, measured_codes = rows[idx][order], codes[idx][order]
            n_measured = np.full(n_features, len(measured))
            total, nonzero, normalized = (np.zeros(n_features) for _ in range(3))
            if entry_masks:  # unmeasured entries (a batch's panel, NaN) count nowhere
                n_measured = np.zeros(n_features, dtype=np.int64)
            for start, x in row_blocks(matrix, measured, block_rows):
                if entry_masks:
                    x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)
                    keep = ~np.isnan(x)
                    if batch_mask is not None:
                        keep &= batch_mask[measured_codes[start : start + len(x)]]
                    x = np.where(keep, x, 0.0)
                    n_measured += keep.sum(0)
                    factor = 1e4 / np.maximum(x.sum(1), 1)
                    normalized += (x * factor[:, None]).sum(0)
                    nonzero += (x != 0).sum(0)
                elif sparse.issparse(x):
                    x = sparse.csr_matrix(x, dtype=np.float64)
                    factor = 1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1)
                    normalized += np.asarray(x.multiply(factor[:, None]).sum(0)).ravel()
                    nonzero += np.asarray((x != 0).sum(0)).ravel()
                else:
                    x = np.asarray(x, dtype=np.float64)
                    factor = 1e4 / np.maximum(x.sum(1), 1)
                    normalized += (x * factor[:, None]).sum(0)
                    nonzero += (x != 0).sum(0)
                total += np.asarray(x.sum(0)).ravel()
            out[f"n_measured{k}"] = n_measured
            with np.errstate(invalid="ignore", divide="ignore"):  # no measured cell: NaN
                n = n_measured.astype(np.float64)
                out[f"raw_mean{k}"] = total / n
                out[f"non_zeros_proportion{k}"] = nonzero / n
                out[f"raw_normalized_mean{k}"] = normalized / n
        return out
