"""Training MosaicANVI: the checks of its labels, held-out batches, calibration afterwards."""

from __future__ import annotations

import warnings

import numpy as np

from ._labels import MIN_CALIBRATION_CELLS
from ._mosaicvi import default_max_epochs


def pretrained_max_epochs(n_cells: int) -> int:
    """``max_epochs`` of :meth:`~mosaicvi.MosaicANVI.train` left at ``None`` after ``from_mosaicvi_model``.

    An eighth of :func:`~mosaicvi.model.default_max_epochs` (at least 2): 50 epochs up to
    20,000 cells, the budget of ``benchmarks/labels.py`` on PBMC.
    """
    return max(2, round(default_max_epochs(n_cells) / 8))


class MosaicLabelTrainingMixin:
    """:meth:`~mosaicvi.MosaicANVI.train` and the checks it runs first."""

    def train(
        self,
        max_epochs: int | None = None,
        *,
        calibration_batches: list[str] | None = None,
        **kwargs,
    ):
        """Train as :meth:`MosaicVI.train <mosaicvi.MosaicVI.train>`, then calibrate on held-out labels.

        With a validation set (``train_size`` below 1, scvi-tools' default 0.9), its
        labeled cells, held out of training, calibrate the probabilities and prediction
        sets (:meth:`calibrate`; at least 10 are needed, else a warning). Those cells come
        from the labeled batches: the calibration holds for cells like them. For cells of
        other donors or batches (unlabeled donors, queries), pass ``calibration_batches``:
        their labels are held out of the classification term (their cells still train the
        rest of the model, as unlabeled cells do) and calibrate the model afterwards, in the
        situation of a batch whose labels the classifier never saw (``docs/model.md``). A
        query model
        of :meth:`~mosaicvi.MosaicVI.load_query_data` (frozen) keeps the reference's
        classifier and its calibration, and any labels its data carry train nothing. A model
        of :meth:`from_mosaicvi_model` trains at the final KL weight from the first step (no
        second warm-up) unless ``plan_kwargs`` sets one, for
        :func:`~mosaicvi.model.pretrained_max_epochs` epochs unless ``max_epochs`` is given.

        Parameters
        ----------
        max_epochs
            As :meth:`MosaicVI.train <mosaicvi.MosaicVI.train>`.
        calibration_batches
            Labeled batches (names of ``batch_key``'s categories) whose labels are held out
            of training and used to calibrate; ``None``: the validation set's labeled cells.
        **kwargs
            :meth:`MosaicVI.train <mosaicvi.MosaicVI.train>`'s other arguments.
        """
        frozen = getattr(self, "_query_frozen", False)
        # which cells are labeled, read once (the labels do not change while training)
        labelled = None if frozen else self._labelled_cells()
        held_batches = self._calibration_batches(calibration_batches, frozen, labelled)
        if not frozen and not hasattr(self, "reference_batches_"):
            self._check_training_labels(held_batches, labelled)
        if self.label_calibration_ and not frozen:
            warnings.warn(
                "Training changes the model (its encoders or classifier): the label "
                "calibration fit before is dropped (a new one is fit on this training's "
                "held-out labeled cells, if any).",
                UserWarning,
                stacklevel=2,
            )
            self.label_calibration_ = {}
        if getattr(self, "was_pretrained", False):  # the MosaicVI's KL warm-up is done
            plan_kwargs = dict(kwargs.pop("plan_kwargs", None) or {})
            if {"n_epochs_kl_warmup", "n_steps_kl_warmup", "kl_warmup_share"}.isdisjoint(
                plan_kwargs
            ):
                plan_kwargs["kl_warmup_share"] = 0.0
            kwargs["plan_kwargs"] = plan_kwargs
        if kwargs.get("early_stopping_monitor") == "validation_loss":
            warnings.warn(
                "`validation_loss` includes the classification term of the validation set's "
                "labeled cells, which then calibrate the model: early stopping on it lets them "
                "choose the model. The default monitor, `objective_validation`, has no label.",
                UserWarning,
                stacklevel=2,
            )
        if max_epochs is None and getattr(self, "was_pretrained", False):
            max_epochs = pretrained_max_epochs(self.adata.n_obs)
        module = self.module
        module.held_out_batches.zero_()
        if held_batches is not None:
            module.held_out_batches[held_batches] = True
        module.holds_out_batches = held_batches is not None
        # a frozen query's labels (if its data carry any) train nothing, and its classifier
        # (batch-norm statistics included) stays the reference's
        module.train_classifier = not frozen
        try:
            result = super().train(max_epochs, **kwargs)
        finally:  # the module's buffer now (Lightning may have moved the module)
            self.module.held_out_batches.zero_()
            self.module.holds_out_batches = False
            self.module.train_classifier = True
        if frozen:
            return result
        # which labeled cells trained the classifier and which were held out (by name, for
        # `calibrate`'s default and its check; not saved: a loaded model has neither)
        obs_names = self.adata.obs_names
        in_held_batch = np.zeros(self.adata.n_obs, bool)
        if held_batches is not None:
            in_held_batch = np.isin(self.adata_manager.batch_codes(), held_batches)
        trained = np.zeros(self.adata.n_obs, bool)
        train_idx = getattr(self, "train_indices", None)
        trained[np.asarray([] if train_idx is None else train_idx, dtype=np.int64)] = True
        # the labels of every training so far trained the classifier: none of them calibrates
        before = getattr(self, "_trained_label_cells", obs_names[:0])
        self._trained_label_cells = before.union(obs_names[trained & labelled & ~in_held_batch])
        val_idx = getattr(self, "validation_indices", None)
        if held_batches is not None:
            held_out = in_held_batch & labelled
        else:
            held_out = np.zeros(self.adata.n_obs, bool)
            held_out[np.asarray([] if val_idx is None else val_idx, dtype=np.int64)] = True
            held_out &= labelled
        seen = held_out & obs_names.isin(self._trained_label_cells)
        if seen.any():
            warnings.warn(
                f"{int(seen.sum())} held-out labeled cells trained the classifier with their "
                "labels in an earlier training: they are left out of the calibration.",
                UserWarning,
                stacklevel=2,
            )
            held_out &= ~seen
        self._held_out_cells = obs_names[held_out]
        if held_out.sum() >= MIN_CALIBRATION_CELLS:
            self.calibrate(indices=np.flatnonzero(held_out))
        else:
            if held_batches is not None:
                where = f"in calibration_batches {calibration_batches}"
            elif val_idx is None and kwargs.get("train_size", 0.9) < 1:
                where = (
                    "(the validation split was made in other processes, as in multi-process "
                    "training: use `calibration_batches`)"
                )
            else:
                where = "in the validation set (a smaller `train_size`, e.g. 0.8, holds out more)"
            warnings.warn(
                f"{int(held_out.sum())} labeled cells were held out of training {where}, fewer "
                f"than {MIN_CALIBRATION_CELLS}: the probabilities are not calibrated and "
                "`predict_sets` needs `calibrate(adata, indices, labels)` with held-out "
                "labeled cells.",
                UserWarning,
                stacklevel=2,
            )
        return result

    def _labelled_cells(self) -> np.ndarray:
        """Whether each cell of the model's data is labeled, ``(n_cells,)``."""
        codes = self._label_codes(self.adata, np.arange(self.adata.n_obs))
        return codes < len(self.label_categories)

    def _check_training_labels(self, held_batches: list[int] | None, labelled: np.ndarray) -> None:
        """Refuse training without labeled cells; warn for modalities no labeled cell has."""
        if held_batches is not None:
            labelled = labelled & ~np.isin(self.adata_manager.batch_codes(), held_batches)
        if not labelled.any():
            raise ValueError(
                "No cell of the data is labeled now (was the labels column changed or removed "
                "after setup?): a semi-supervised model needs labeled cells to train on."
            )
        presence = self.adata_manager.presence()
        lacking = [
            m for j, m in enumerate(self.registered_modalities) if not presence[labelled, j].any()
        ]
        if lacking:
            warnings.warn(
                f"No labeled cell is measured in {lacking}: the classifier never sees a latent "
                "inferred from them, so predictions from them alone are guesses.",
                UserWarning,
                stacklevel=3,
            )

    def _calibration_batches(
        self, batches, frozen: bool, labelled: np.ndarray | None
    ) -> list[int] | None:
        """Codes of ``calibration_batches``, checked: known, labeled, not every labeled batch."""
        if batches is None:
            return None
        if frozen:
            raise ValueError(
                "`calibration_batches` does not apply to a frozen query model: its classifier "
                "is the reference's (and so is its calibration)."
            )
        if isinstance(batches, str) or not hasattr(batches, "__iter__"):
            raise TypeError(
                f"`calibration_batches` must be a non-empty list of batch names, got {batches!r}."
            )
        batches = list(batches)
        if not batches:
            raise TypeError("`calibration_batches` must be a non-empty list of batch names.")
        manager = self.adata_manager
        categories = manager.batch_categories()
        unknown = [b for b in batches if str(b) not in categories]
        if unknown:
            raise ValueError(
                f"`calibration_batches` names batches the model does not have: {unknown}; the "
                f"batches are {categories}."
            )
        codes = sorted({categories.index(str(b)) for b in batches})
        batch = manager.batch_codes()
        empty = [categories[c] for c in codes if not labelled[batch == c].any()]
        if empty:
            raise ValueError(f"`calibration_batches` {empty} have no labeled cell.")
        if not (labelled & ~np.isin(batch, codes)).any():
            raise ValueError(
                "`calibration_batches` hold every labeled cell: none would be left to train "
                "the classifier."
            )
        return codes
