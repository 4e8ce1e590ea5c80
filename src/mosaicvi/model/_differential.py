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

import pandas as pd
from mudata import MuData

from ._de_run import _DifferentialRun


class MosaicDifferentialMixin(_DifferentialRun):
    """``differential_expression``, ``differential_accessibility``, ``differential_protein``."""

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
