"""Differential analysis of every modality, for cells measured in it or not.

The Bayesian testing is scvi-tools' (:class:`~scvi.model.base.DifferentialComputation`, the
``"vanilla"`` and ``"change"`` modes of scVI, totalVI and MultiVI, and its FDR control). What
mosaicvi adds is what it is tested on: posterior samples of a modality's denoised values
decoded from latents inferred from any modalities a cell has, or only from ``given`` ones. A
group of cells that never had protein measured can therefore be compared in protein, with the
posterior spread that implies.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy import sparse
from scvi.model.base import DifferentialComputation

from mosaicvi._compat import fdr_de_prediction
from mosaicvi.data._backed import row_blocks
from mosaicvi.data._validation import check_bool, check_int

from ._mixins import _check_indices

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

#: Arguments of :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors` that the
#: methods set themselves.
_SET_HERE = {
    "self", "idx1", "idx2", "mode", "delta", "batchid1", "batchid2", "use_observed_batches",
    "n_samples_overall",
}  # fmt: skip
#: scvi-tools' default number of pairs with ``use_permutation=True``
_M_PERMUTATION = (
    inspect.signature(DifferentialComputation.get_bayes_factors)
    .parameters["m_permutation"]
    .default
)
#: What to pass instead of some of those (and of scvi-tools' DE arguments of other names).
_INSTEAD = {
    "use_observed_batches": "batch_correction",
    "fdr": "fdr_target",
    "n_samples": "n_samples_overall",
    "idx": "idx1",
}


class MosaicDifferentialMixin:
    """``differential_expression``, ``differential_accessibility``, ``differential_protein``."""

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
            cols = [self.registered_modalities.index(m) for m in given]
            usable = manager.presence()[:, cols].any(axis=1)
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

    def differential_expression(
        self,
        adata: MuData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | None = None,
        idx2: Sequence[int] | Sequence[bool] | None = None,
        given: Sequence[str] | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        n_samples_overall: int = 5000,
        seed: int = 0,
        **kwargs,
    ) -> pd.DataFrame:
        r"""Bayesian differential expression of genes between groups of cells.

        scvi-tools' test (:meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors`:
        ``mode="change"`` estimates the probability that the log fold change of the
        normalised expression exceeds ``delta``; ``"vanilla"`` gives Bayes factors) on
        posterior samples of the denoised expression. Every cell has one, measured in RNA
        or not: with ``given=["protein"]`` a group of protein-only cells is compared in RNA
        inferred from their protein alone.

        Parameters
        ----------
        adata
            MuData set up like the training data; the training data if ``None``.
        groupby
            Column of ``mdata.obs`` defining the groups.
        group1
            A group (a value of the column, compared with its type: ``3`` and ``"3"`` differ)
            or a list of groups to test, each against ``group2`` (or the rest); ``None``: every
            group (but ``group2``).
        group2
            One reference group; ``None``: all cells not in the tested group.
        idx1, idx2
            Instead of ``groupby``: the cells of the two groups (positions or boolean masks;
            ``idx2=None``: the rest).
        given
            Infer each cell's latent from only these modalities; cells lacking all of them are
            left out of both groups.
        mode
            ``"change"`` (default) or ``"vanilla"``.
        delta
            Log-fold-change threshold of ``mode="change"``, a positive number (scvi-tools'
            ``delta=None``, estimated from the data, is not offered).
        batch_size
            Minibatch size for inference.
        all_stats
            Add raw statistics of the measured cells of each group (``raw_mean``,
            ``non_zeros_proportion``, ``raw_normalized_mean``, ``n_measured``).
        batch_correction
            Decode each group's samples in each batch of ``batchid1`` / ``batchid2`` (the
            same number of samples per batch) instead of each cell's own batch, as scvi-tools'
            ``batch_correction``.
        batchid1, batchid2
            Batches (names of the model's batches) to decode group 1 / group 2 in. As in
            scvi-tools, only used with ``batch_correction=True``: without it they are ignored,
            with a warning. Each defaults to every batch that measured the modality (a batch
            that never measured it has no learned effect on it and is refused).
        fdr_target
            Target posterior FDR of the ``is_de_fdr_<target>`` column (``"change"`` mode),
            in (0, 1).
        n_samples_overall
            Posterior samples per group: ``n_samples_overall // len(batches)`` cells per
            batch decoded in (one batch, the cells' own, without ``batch_correction``), drawn
            uniformly with replacement, one latent sample each.
        seed
            Seed of the choice of cells and of the latent samples.
        **kwargs
            More arguments of
            :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors`, checked:
            ``pseudocounts`` (``None``: estimated), ``threshold_counts``, ``test_mode``,
            ``cred_interval_lvls``, ``use_permutation``, ``m_permutation``, ``change_fn``,
            ``m1_domain_fn``.

        Returns
        -------
        pandas.DataFrame
            scvi-tools' result frame: one row per feature and comparison (``proba_de``,
            ``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``scale1``,
            ``scale2``, ...), sorted by ``proba_de`` (or ``bayes_factor``) within each
            comparison, with ``comparison``, ``group1`` and ``group2``.

        Notes
        -----
        Memory does not grow with the number of cells and is bounded in the number of
        features: the samples of both groups are held in float32, at most 1 GiB at a time
        (``n_samples_overall`` x 2 x 4 bytes per feature: 25,734 regions at the default 5,000
        samples fit in one pass; wider feature sets are decoded in passes that replay the same
        latent samples, at the cost of one more decoding per pass). scvi-tools' test then runs
        on as many features at a time as fit in 256 MiB (its float64 temporaries; with
        ``use_permutation``, ``m_permutation`` rows), and the raw statistics read the measured
        counts in blocks of about 4 million values. When the pseudocounts are estimated and
        there is more than one pass, every pass is decoded twice (the estimate needs every
        feature's samples first). See ``docs/reliability.md``.
        """
        return self._differential(
            "rna", adata, groupby, group1, group2, idx1, idx2, given, mode, delta, batch_size,
            all_stats, batch_correction, batchid1, batchid2, fdr_target, n_samples_overall,
            seed, **kwargs,
        )  # fmt: skip

    def differential_accessibility(
        self,
        adata: MuData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | None = None,
        idx2: Sequence[int] | Sequence[bool] | None = None,
        given: Sequence[str] | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.05,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        n_samples_overall: int = 5000,
        seed: int = 0,
        **kwargs,
    ) -> pd.DataFrame:
        """Bayesian differential accessibility of regions between groups of cells.

        As :meth:`differential_expression`, on posterior samples of the accessibility
        (:meth:`~mosaicvi.MosaicVI.get_accessibility_estimates`), for cells measured in ATAC
        or not. The default ``delta`` is MultiVI's (0.05).

        Parameters
        ----------
        adata, groupby, group1, group2, idx1, idx2, given, mode, batch_size, all_stats
            As in :meth:`differential_expression`.
        batch_correction, batchid1, batchid2, fdr_target, n_samples_overall, seed, kwargs
            As in :meth:`differential_expression`.
        delta
            Log-fold-change threshold of ``mode="change"``.

        Returns
        -------
        pandas.DataFrame
            As :meth:`differential_expression`, one row per region and comparison.
        """
        return self._differential(
            "atac", adata, groupby, group1, group2, idx1, idx2, given, mode, delta, batch_size,
            all_stats, batch_correction, batchid1, batchid2, fdr_target, n_samples_overall,
            seed, **kwargs,
        )  # fmt: skip

    def differential_protein(
        self,
        adata: MuData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | None = None,
        idx2: Sequence[int] | Sequence[bool] | None = None,
        given: Sequence[str] | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        n_samples_overall: int = 5000,
        seed: int = 0,
        include_background: bool = False,
        **kwargs,
    ) -> pd.DataFrame:
        """Bayesian differential protein abundance between groups of cells.

        As :meth:`differential_expression`, on posterior samples of the denoised protein
        (:meth:`~mosaicvi.MosaicVI.get_protein_expression`: totalVI's foreground), for cells
        measured in protein or not: ``given=["rna"]`` compares groups in protein imputed
        from their RNA, e.g. for a donor whose protein was never measured.

        Parameters
        ----------
        adata, groupby, group1, group2, idx1, idx2, given, mode, delta, batch_size
            As in :meth:`differential_expression`.
        all_stats, batch_correction, batchid1, batchid2, fdr_target, n_samples_overall
            As in :meth:`differential_expression`.
        seed, kwargs
            As in :meth:`differential_expression`.
        include_background
            Test the expected counts including background instead of the foreground.

        Returns
        -------
        pandas.DataFrame
            As :meth:`differential_expression`, one row per protein and comparison.
        """
        return self._differential(
            "protein", adata, groupby, group1, group2, idx1, idx2, given, mode, delta,
            batch_size, all_stats, batch_correction, batchid1, batchid2, fdr_target,
            n_samples_overall, seed, {"include_background": include_background}, **kwargs,
        )  # fmt: skip


def _check_real(name: str, value, low: float, high: float, closed: str) -> None:
    """Raise unless ``value`` is a real number in the interval (``closed``: "left", "neither")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    inside = (low <= value if closed == "left" else low < value) and value < high
    if not inside or not np.isfinite(value):
        left = "[" if closed == "left" else "("
        raise ValueError(f"`{name}` must be in {left}{low}, {high}), got {value!r}.")


def _check_test(mode, delta, fdr_target, n_samples_overall, seed, kwargs) -> dict:
    """The arguments of scvi-tools' test, checked; ``kwargs`` are its optional ones."""
    if mode not in ("vanilla", "change"):
        raise ValueError(f"`mode` must be 'vanilla' or 'change', got {mode!r}.")
    if delta is None:
        raise ValueError(
            "`delta` must be a positive number (the log fold change below which a feature is "
            "not differential); mosaicvi does not estimate it from the data."
        )
    _check_real("delta", delta, 0.0, np.inf, "neither")
    _check_real("fdr_target", fdr_target, 0.0, 1.0, "neither")
    check_int("n_samples_overall", n_samples_overall)
    check_int("seed", seed, minimum=0)
    accepted = set(inspect.signature(DifferentialComputation.get_bayes_factors).parameters)
    accepted -= _SET_HERE
    for name in kwargs:
        if name not in accepted:
            instead = f" (pass `{_INSTEAD[name]}`)" if name in _INSTEAD else ""
            raise TypeError(
                f"Unexpected argument `{name}`{instead}; the arguments passed on to scvi-tools' "
                f"test are {sorted(accepted)}."
            )
    test = {"use_permutation": False, **kwargs}
    check_bool("use_permutation", test["use_permutation"])
    if "m_permutation" in test:
        check_int("m_permutation", test["m_permutation"])
    if test.get("pseudocounts") is not None:
        _check_real("pseudocounts", test["pseudocounts"], 0.0, np.inf, "left")
    if "threshold_counts" in test:
        _check_real("threshold_counts", test["threshold_counts"], 0.0, np.inf, "left")
    if test.get("test_mode", "three") not in ("two", "three"):
        raise ValueError(f"`test_mode` must be 'two' or 'three', got {test['test_mode']!r}.")
    levels = test.get("cred_interval_lvls")
    if levels is not None:
        if np.ndim(levels) != 1 or len(levels) == 0:
            raise TypeError(f"`cred_interval_lvls` must be a list of levels, got {levels!r}.")
        for level in levels:
            _check_real("cred_interval_lvls", level, 0.0, 1.0, "neither")
    change_fn = test.get("change_fn")
    if not (change_fn is None or change_fn == "log-fold" or callable(change_fn)):
        raise ValueError(f"`change_fn` must be 'log-fold' or a function, got {change_fn!r}.")
    if test.get("m1_domain_fn") is not None and not callable(test["m1_domain_fn"]):
        raise TypeError(f"`m1_domain_fn` must be a function, got {test['m1_domain_fn']!r}.")
    return {"mode": mode, "delta": delta, "n_samples_overall": n_samples_overall, **test}


def _comparisons(mdata: MuData, groupby, group1, group2, idx1, idx2) -> list[tuple]:
    """``(label1, label2, mask1, mask2)`` of each comparison; the user's data are not changed."""
    n = mdata.n_obs
    if idx1 is not None:
        if groupby is not None or group1 is not None or group2 is not None:
            raise ValueError(
                "Pass either `groupby` / `group1` / `group2` or `idx1` / `idx2`, not both."
            )
        mask1 = _mask(idx1, n, "idx1")
        mask2 = ~mask1 if idx2 is None else _mask(idx2, n, "idx2")
        return [("idx1", "rest" if idx2 is None else "idx2", mask1, mask2)]
    if idx2 is not None:
        raise ValueError("`idx2` needs `idx1` (the cells of the first group).")
    if groupby is None:
        if group1 is not None or group2 is not None:
            raise ValueError("`group1` / `group2` need `groupby` (the column they are values of).")
        raise ValueError("Pass `groupby` (a column of mdata.obs) or `idx1`.")
    if not isinstance(groupby, str):
        raise TypeError(f"`groupby` must be a column name of mdata.obs, got {groupby!r}.")
    if groupby not in mdata.obs.columns:
        raise KeyError(f"`groupby` column {groupby!r} is not in mdata.obs.")
    column = mdata.obs[groupby]
    known = pd.Index(pd.unique(column.dropna()))
    shown = sorted(known[:20], key=str) + (["..."] if len(known) > 20 else [])

    def check(name, group) -> object:
        if isinstance(group, list | tuple | set | np.ndarray | pd.Index | pd.Series):
            raise TypeError(
                f"`{name}` must be one group of mdata.obs[{groupby!r}], got {group!r}."
            )
        try:
            found = known.get_indexer([group])[0] >= 0
        except TypeError:  # unhashable
            found = False
        if not found:
            raise ValueError(
                f"`{name}`={group!r} ({type(group).__name__}) is not a group of "
                f"mdata.obs[{groupby!r}], whose groups are {shown} "
                f"({known.dtype}; values are compared with their type)."
            )
        return group

    if group2 is not None:
        group2 = check("group2", group2)
    if group1 is None:
        group1 = [g for g in known if group2 is None or g != group2]
        try:
            group1 = sorted(group1)
        except TypeError:
            group1 = sorted(group1, key=str)
        if len(known) < 2:
            raise ValueError(f"mdata.obs[{groupby!r}] has a single group: nothing to compare.")
    else:
        single = isinstance(group1, str) or np.ndim(group1) == 0
        group1 = [check("group1", g) for g in ([group1] if single else list(group1))]
        if not group1:
            raise ValueError("`group1` is empty; pass groups to test, or None for all of them.")
        if len(set(map(str, group1))) != len(group1):
            raise ValueError(f"`group1` names a group twice: {group1}.")
        if group2 is not None and any(g == group2 for g in group1):
            raise ValueError(f"`group1` contains `group2`={group2!r}: a group against itself.")
    values = column.to_numpy()
    out = []
    for g in group1:
        mask1 = values == g
        mask2 = ~mask1 if group2 is None else values == group2
        out.append((str(g), "Rest" if group2 is None else str(group2), mask1, mask2))
    return out


def _mask(idx, n: int, name: str) -> np.ndarray:
    """Boolean mask of the cells ``idx`` (positions or a mask), checked like ``indices``."""
    mask = np.zeros(n, dtype=bool)
    mask[_check_indices(idx, n, name)] = True
    return mask


class _GroupCounts:
    """What scvi-tools' test reads of the counts: the mean counts of each group's measured cells.

    :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors` averages
    ``get_from_registry("X")[mask]`` over rows to find the features a group almost never
    has, for its pseudocount estimate. Here ``[mask]`` is the group's mean counts as one row
    (read in blocks by ``_measured_stats``), so no group's counts are read whole.
    """

    adata = None

    def __init__(self, groups: list[tuple]) -> None:
        self.groups = groups  # (mask, raw_mean) of each group

    def get_from_registry(self, key: str):
        if key != "X":
            raise KeyError(key)
        return self

    def __getitem__(self, selection) -> np.ndarray:
        return _lookup(self.groups, selection)[1][None, :]


class _GivenSamples(DifferentialComputation):
    """scvi-tools' test on posterior samples drawn beforehand.

    :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors` asks
    ``scale_sampler`` for the samples of each group: here they are handed over (float32,
    already decoded in the requested batches). No reference cycle: the samples are freed as
    soon as the test returns.

    Parameters
    ----------
    groups
        ``(mask, scale, batch)`` of each group: the mask passed as ``idx1`` / ``idx2``, the
        samples ``(n_samples, n_features)`` and the batch of each sample (NaN: its cell's own).
    counts
        The groups' mean counts (``_GroupCounts``), for the pseudocount estimate.
    """

    def __init__(self, groups: list[tuple], counts: _GroupCounts | None = None) -> None:
        super().__init__(model_fn=None, representation_fn=None, adata_manager=counts or _NO_COUNTS)
        self.groups = groups

    def scale_sampler(self, selection, **kwargs) -> dict:
        _, scale, batch = _lookup(self.groups, selection)
        return {"scale": scale, "batch": batch}


_NO_COUNTS = _GroupCounts([])


def _lookup(groups: list[tuple], selection) -> tuple:
    """The group whose mask is ``selection`` (the very array passed to scvi-tools)."""
    for group in groups:
        if group[0] is selection:
            return group
    raise ValueError("The cells asked for are not those of either group.")


class _Replay:
    """The torch random state before each group's and batch's latent draws.

    The first pass over the features records it, later passes restore it, so that every pass
    decodes the same latent samples.
    """

    def __init__(self, module) -> None:
        self.device = next(module.parameters()).device
        self.states: dict = {}

    def _get(self):
        if self.device.type == "cuda":
            return torch.get_rng_state(), torch.cuda.get_rng_state(self.device)
        if self.device.type == "mps":
            return torch.get_rng_state(), torch.mps.get_rng_state()
        return torch.get_rng_state(), None

    def at(self, key) -> None:
        if key not in self.states:
            self.states[key] = self._get()
            return
        cpu, device = self.states[key]
        torch.set_rng_state(cpu)
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(device, self.device)
        elif self.device.type == "mps":
            torch.mps.set_rng_state(device)
