"""Differential analysis of every modality, for cells measured in it or not.

The Bayesian testing is scvi-tools' (:class:`~scvi.model.base.DifferentialComputation`, the
``"vanilla"`` and ``"change"`` modes of scVI, totalVI and MultiVI, and its FDR control). What
mosaicvi adds is what it is tested on: posterior samples of a modality's denoised values
decoded from latents inferred from any modalities a cell has, or only from ``given`` ones. A
group of cells that never had protein measured can therefore be compared in protein, with the
posterior spread that implies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy import sparse
from scvi.model.base import DifferentialComputation
from scvi.model.base._de_core import _fdr_de_prediction

from mosaicvi.data._validation import check_int

from ._mixins import _check_indices

#: Raw statistics of the measured cells of each group (``all_stats``)
_STATS = [
    f"{stat}{k}"
    for stat in ("n_measured", "raw_mean", "non_zeros_proportion", "raw_normalized_mean")
    for k in "12"
]


class MosaicDifferentialMixin:
    """``differential_expression``, ``differential_accessibility``, ``differential_protein``."""

    def _scale_samples(
        self,
        mod: str,
        given: list[str] | None,
        batch_size: int | None,
        seed: int,
        **decode_kwargs,
    ):
        """``model_fn`` of :class:`~scvi.model.base.DifferentialComputation`.

        Returns ``n_samples_overall`` draws of the denoised values of ``mod``: cells drawn
        uniformly from ``indices``, one latent sample each from its posterior (given
        ``given``), decoded in ``transform_batch`` (``None``: the cell's own batch, or the
        batches that measured ``mod`` where its own did not).
        """
        rng = np.random.default_rng(seed)

        def model_fn(adata, indices, transform_batch=None, n_samples_overall=5000):
            cells = rng.choice(np.asarray(indices), size=int(n_samples_overall), replace=True)
            values, _ = self._denoised(
                mod,
                adata,
                np.sort(cells),
                given,
                transform_batch,
                1,
                batch_size,
                sample_latent=True,
                **decode_kwargs,
            )
            return values

        return model_fn

    def _differential(
        self,
        mod: str,
        adata: MuData | None,
        groupby: str | None,
        group1: str | Sequence[str] | None,
        group2: str | None,
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
        check_int("n_samples_overall", n_samples_overall)
        if mode not in ("vanilla", "change"):
            raise ValueError(f"`mode` must be 'vanilla' or 'change', got {mode!r}.")
        mdata, _, _, _ = self._prepare(adata, None, None, batch_size)  # the gate
        given = self._check_given(given)
        manager = self.get_anndata_manager(mdata, required=True)
        usable = np.ones(mdata.n_obs, dtype=bool)
        if given is not None:  # a latent needs at least one of the given modalities
            cols = [self.registered_modalities.index(m) for m in given]
            usable = manager.presence()[:, cols].any(axis=1)
        comparisons = _comparisons(mdata, groupby, group1, group2, idx1, idx2)
        if batch_correction and batchid1 is None and batchid2 is None:
            batchid1 = batchid2 = list(self.measured_batches_[mod])
        model_fn = self._scale_samples(mod, given, batch_size, seed, **(decode_kwargs or {}))
        computation = DifferentialComputation(model_fn, None, _MeasuredView(manager, mod))
        test = {
            "mode": mode,
            "delta": delta,
            "batchid1": batchid1,
            "batchid2": batchid2,
            "use_observed_batches": not batch_correction,
            "n_samples_overall": n_samples_overall,
            **kwargs,
        }
        with torch.random.fork_rng():  # reproducible latent samples; the global RNG untouched
            torch.manual_seed(seed)
            frames = [
                self._compare(computation, manager, mod, comparison, usable, given, test)
                for comparison in comparisons
            ]
        for frame in frames:
            if not all_stats:
                frame.drop(columns=[c for c in frame.columns if c in _STATS], inplace=True)
            if mode == "change":
                frame[f"is_de_fdr_{fdr_target}"] = _fdr_de_prediction(
                    frame["proba_de"], fdr=fdr_target
                )
        return pd.concat(frames)

    def _compare(self, computation, manager, mod, comparison, usable, given, test) -> pd.DataFrame:
        """One comparison of :meth:`_differential`: scvi-tools' test and the result frame."""
        label1, label2, cells1, cells2 = comparison
        cells1, cells2 = cells1 & usable, cells2 & usable
        for label, cells in ((label1, cells1), (label2, cells2)):
            if not cells.any():
                raise ValueError(
                    f"Group {label!r} has no cell"
                    + (f" with any of the modalities given={given}" if given else "")
                    + "; choose other groups or `given`."
                )
        info = computation.get_bayes_factors(cells1, cells2, **test)
        info.update(self._measured_stats(manager, mod, cells1, cells2))
        frame = pd.DataFrame(info, index=self._feature_names(mod))
        key = "proba_de" if test["mode"] == "change" else "bayes_factor"
        frame = frame.sort_values(key, ascending=False, kind="stable")
        frame["comparison"] = f"{label1} vs {label2}"
        frame["group1"], frame["group2"] = label1, label2
        return frame

    def _measured_stats(self, manager, mod: str, cells1, cells2) -> dict[str, np.ndarray]:
        """Raw statistics of the cells of each group that were measured in ``mod``."""
        rows = manager.modality_rows()[mod]
        matrix = manager.measured_counts(mod)[0]  # the user's matrix, in the model's order
        out = {}
        for k, cells in (("1", cells1), ("2", cells2)):
            measured = rows[cells & (rows >= 0)]
            out[f"n_measured{k}"] = np.full(len(self._feature_names(mod)), len(measured))
            if len(measured) == 0:
                nan = np.full(len(self._feature_names(mod)), np.nan)
                out[f"raw_mean{k}"] = out[f"non_zeros_proportion{k}"] = nan
                out[f"raw_normalized_mean{k}"] = nan
                continue
            x = matrix[np.sort(measured)]
            x = x.astype(np.float64) if sparse.issparse(x) else np.asarray(x, dtype=np.float64)
            factor = 1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1)[:, None]
            scaled = x.multiply(factor) if sparse.issparse(x) else x * factor
            out[f"raw_mean{k}"] = np.asarray(x.mean(0)).ravel()
            out[f"non_zeros_proportion{k}"] = np.asarray((x != 0).mean(0)).ravel()
            out[f"raw_normalized_mean{k}"] = np.asarray(scaled.mean(0)).ravel()
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
            Groups to test, each against ``group2`` (or the rest); all groups if ``None``.
        group2
            Reference group; ``None``: all cells not in ``group1``.
        idx1, idx2
            Instead of ``groupby``: the cells of the two groups (positions or boolean masks;
            ``idx2=None``: the rest).
        given
            Infer each cell's latent from only these modalities; cells lacking all of them are
            left out of both groups.
        mode
            ``"change"`` (default) or ``"vanilla"``.
        delta
            Log-fold-change threshold of ``mode="change"``.
        batch_size
            Minibatch size for inference.
        all_stats
            Add raw statistics of the measured cells of each group (``raw_mean``,
            ``non_zeros_proportion``, ``raw_normalized_mean``, ``n_measured``).
        batch_correction
            Decode every sample in each of ``batchid1`` / ``batchid2`` (default: every batch
            that measured the modality) instead of the cell's own batch.
        batchid1, batchid2
            Batches to decode the two groups in, with ``batch_correction``.
        fdr_target
            Target posterior FDR of the ``is_de_fdr_<target>`` column (``"change"`` mode).
        n_samples_overall
            Posterior samples per group (cells drawn uniformly, one latent sample each).
        seed
            Seed of the choice of cells.
        **kwargs
            More arguments of
            :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors`
            (``pseudocounts``, ``test_mode``, ``cred_interval_lvls`` ...).

        Returns
        -------
        pandas.DataFrame
            scvi-tools' result frame: one row per feature and comparison (``proba_de``,
            ``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``scale1``,
            ``scale2``, ...), sorted by ``proba_de`` (or ``bayes_factor``) within each
            comparison, with ``comparison``, ``group1`` and ``group2``.
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


def _comparisons(mdata: MuData, groupby, group1, group2, idx1, idx2) -> list[tuple]:
    """``(label1, label2, mask1, mask2)`` of each comparison; the user's data are not changed."""
    n = mdata.n_obs
    if idx1 is not None:
        if groupby is not None or group1 is not None:
            raise ValueError("Pass either `groupby` / `group1` or `idx1`, not both.")
        mask1 = _mask(idx1, n, "idx1")
        mask2 = ~mask1 if idx2 is None else _mask(idx2, n, "idx2")
        return [("idx1", "rest" if idx2 is None else "idx2", mask1, mask2)]
    if groupby is None:
        raise ValueError("Pass `groupby` (a column of mdata.obs) or `idx1`.")
    if groupby not in mdata.obs.columns:
        raise KeyError(f"`groupby` column {groupby!r} is not in mdata.obs.")
    labels = mdata.obs[groupby].astype(str).to_numpy()
    known = list(pd.unique(labels))
    if group1 is None:
        group1 = sorted(known)
        if len(group1) < 2:
            raise ValueError(f"mdata.obs[{groupby!r}] has a single group: nothing to compare.")
    elif isinstance(group1, str):
        group1 = [group1]
    unknown = [g for g in [*group1, *([] if group2 is None else [group2])] if g not in known]
    if unknown:
        raise ValueError(f"Groups {unknown} are not in mdata.obs[{groupby!r}] ({known[:10]}).")
    out = []
    for g in group1:
        mask1 = labels == g
        mask2 = ~mask1 if group2 is None else labels == group2
        out.append((g, "Rest" if group2 is None else group2, mask1, mask2))
    return out


def _mask(idx, n: int, name: str) -> np.ndarray:
    """Boolean mask of the cells ``idx`` (positions or a mask), checked like ``indices``."""
    mask = np.zeros(n, dtype=bool)
    mask[_check_indices(idx, n, name)] = True
    return mask


class _MeasuredView:
    """What :class:`~scvi.model.base.DifferentialComputation` reads from a data manager.

    scvi-tools reads the counts of each group (``get_from_registry("X")[mask]``) to find
    features that are almost never detected, for the pseudocounts of ``mode="change"``. On a
    mosaic, a group's counts are those of its cells measured in the modality: ``[mask]``
    returns those rows (possibly none), read from the user's matrix without padding.
    """

    def __init__(self, manager, mod: str) -> None:
        self.manager, self.mod = manager, mod
        self.adata = manager.adata

    def get_from_registry(self, key: str):
        if key != "X":
            return self.manager.get_from_registry(key)
        return self

    def __getitem__(self, mask) -> np.ndarray | sparse.spmatrix:
        rows = self.manager.modality_rows()[self.mod]
        measured = rows[np.asarray(mask) & (rows >= 0)]
        matrix = self.manager.measured_counts(self.mod)[0]
        if len(measured) == 0:
            return np.full((1, matrix.shape[1]), np.nan)  # no information: no zero features
        return matrix[np.sort(measured)]

    def __getattr__(self, name):
        return getattr(self.manager, name)
