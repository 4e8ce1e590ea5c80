"""The training plan: scvi-tools' :class:`~scvi.train.TrainingPlan` with a fused Adam step."""

from __future__ import annotations

import inspect
import math
import numbers

import torch
from scvi.train import TrainingPlan

#: The optimizers scvi-tools names that are made fused here, by name.
FUSED = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
#: scvi-tools' default optimizer (read from its signature, not copied).
_DEFAULTS = {
    name: param.default
    for name, param in inspect.signature(TrainingPlan.__init__).parameters.items()
    if name == "optimizer"
}


def _finite_at_least(value, minimum: float) -> bool:
    """Whether ``value`` is a real number (not a bool), finite and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and value >= minimum


class MosaicTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` whose ``"Adam"`` and ``"AdamW"`` are fused.

    A fused optimizer updates every parameter in one kernel per step (torch's
    ``fused=True``, on CPU and GPU) instead of one pass per tensor and operation. The wide
    ATAC layers (``n_regions x n_hidden``, three of them) make the optimizer step a large share
    of a training step at the default batch size; fused, it costs about half (see the speed
    benchmark). The update rule is the same. It goes through scvi-tools' public path for an
    optimizer of one's own (``optimizer="Custom"`` with an ``optimizer_creator``, built from
    the plan's ``lr``, ``eps`` and ``weight_decay`` when the optimizer is made, so that a
    learning-rate finder's change is used; ``optimizer_name`` reads ``"Custom"``); a
    ``Custom`` optimizer given in ``plan_kwargs`` is used as it is.

    The ``elbo_<mode>`` metrics are the ELBO of each cell's measured modalities, the joint
    term (:meth:`~mosaicvi.module.MosaicVAE.loss`); the objective's other terms and the
    per-modality reconstruction terms (``reconstruction_loss_<modality>_<mode>``,
    ``subset_reconstruction_loss_<modality>_<mode>``, ``subset_kl_<mode>``, ...) are extra
    metrics, summed over an epoch's minibatches (weighted by their cells) and logged once at
    its end:
    one Lightning ``log`` call per step and term was about a tenth of a step on small data.
    They are logged outside ``torch.inference_mode``: under a distributed strategy
    Lightning's end-of-epoch reduction of a value made inside it fails ("Inplace update to
    inference tensor outside InferenceMode").

    ``kl_warmup_share`` (what :meth:`~mosaicvi.MosaicVI.train` passes by default): the KL
    weight rises linearly from ``min_kl_weight`` to ``max_kl_weight`` over this share of the
    run's minibatches, instead of scvi-tools' ``n_epochs_kl_warmup`` / ``n_steps_kl_warmup``
    (give one of the three). ``objective_<mode>`` is logged at ``max_kl_weight``.

    Training always runs the module in training mode. scvi-tools leaves the module in
    ``eval()`` after ``train()`` (for the getters), and Lightning 2.6 keeps a submodule's mode
    when ``fit`` starts: without :meth:`on_fit_start`, a second ``train()`` call would train
    with dropout off, batch norm frozen at its running statistics and the full-width ATAC
    likelihood instead of the sampled one.
    """

    def __init__(self, module, *, kl_warmup_share: float | None = None, **kwargs) -> None:
        for name, minimum in (("max_kl_weight", 0.0), ("min_kl_weight", 0.0)):
            if name in kwargs and not _finite_at_least(kwargs[name], minimum):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {kwargs[name]!r}.")
        if kwargs.get("min_kl_weight", 0.0) > kwargs.get("max_kl_weight", 1.0):
            raise ValueError(
                f"`min_kl_weight` ({kwargs.get('min_kl_weight')}) is above `max_kl_weight` "
                f"({kwargs.get('max_kl_weight', 1.0)})."
            )
        if kl_warmup_share is not None:
            if not (_finite_at_least(kl_warmup_share, 0.0) and kl_warmup_share <= 1):
                raise ValueError(
                    f"`kl_warmup_share` must be a number in [0, 1], got {kl_warmup_share!r}."
                )
            given = {"n_epochs_kl_warmup", "n_steps_kl_warmup"} & set(kwargs)
            if given:
                raise ValueError(
                    f"Give `kl_warmup_share` or {sorted(given)}, not both: each sets the "
                    "KL warm-up."
                )
            kwargs["n_epochs_kl_warmup"] = None  # in steps, set when fit starts
        optimizer = kwargs.get("optimizer", _DEFAULTS["optimizer"])
        self._fused_cls = FUSED.get(optimizer)
        if self._fused_cls is not None:
            # scvi-tools' public path for an optimizer of one's own: "Custom" + a creator
            # (scvi-tools ignores a creator given with "Adam" / "AdamW"; so does this)
            kwargs["optimizer_creator"] = self._fused_optimizer
            kwargs["optimizer"] = "Custom"
        super().__init__(module, **kwargs)
        self.kl_warmup_share = kl_warmup_share

    def _fused_optimizer(self, params) -> torch.optim.Optimizer:
        """The fused Adam / AdamW with the plan's ``lr``, ``eps``, ``weight_decay`` (read now)."""
        return self._fused_cls(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=True
        )

    def on_fit_start(self) -> None:
        """Training mode; the KL warm-up's steps; the weight of the monitored objective.

        ``kl_warmup_share``: the KL weight rises over this share of the run's minibatches
        (Lightning's ``estimated_stepping_batches``), so a run of one epoch on a large data set
        warms up too. ``objective_*`` is logged at the schedule's final weight
        (``max_kl_weight``), the objective that training approaches.
        """
        self.module.train()
        if self.kl_warmup_share is not None:
            total = self.trainer.estimated_stepping_batches
            steps = round(self.kl_warmup_share * total) if math.isfinite(total) else 0
            self.n_steps_kl_warmup = steps or None
        self.module.objective_kl_weight = float(self.max_kl_weight)

    def compute_and_log_metrics(self, loss_output, metrics, mode: str) -> None:
        """Accumulate the epoch's ELBO terms and extra metrics; they are logged at its end.

        The ELBO metrics are updated as scvi-tools does (:class:`scvi.train.ElboMetric`), but
        logged once per epoch (``_log_epoch``) instead of through one Lightning ``log``
        call per metric and step, which cost about a tenth of a step on small data.
        """
        if self.on_step or not self.on_epoch:  # per-step logging asked for: scvi-tools' way
            super().compute_and_log_metrics(loss_output, metrics, mode)
            return
        n = loss_output.n_obs_minibatch
        metrics[f"elbo_{mode}"].update(
            reconstruction_loss=loss_output.reconstruction_loss_sum,
            kl_local=loss_output.kl_local_sum,
            kl_global=loss_output.kl_global_sum,
            n_obs_minibatch=n,
        )
        sums = self._extra_sums.setdefault(mode, {})
        with torch.no_grad():
            for key, value in (loss_output.extra_metrics or {}).items():
                if isinstance(value, torch.Tensor) and value.dim() == 0:
                    total, count = sums.get(key, (0.0, 0))
                    sums[key] = (total + value.detach().float() * n, count + n)

    @property
    def _extra_sums(self) -> dict:
        if not hasattr(self, "_extra_sum_store"):
            self._extra_sum_store = {}
        return self._extra_sum_store

    def _log_epoch(self, mode: str, metrics: dict) -> None:
        """Log the epoch's ELBO metrics and the cell-weighted mean of each extra metric."""
        sums = self._extra_sums.pop(mode, {})
        values = {}
        if not self.trainer.sanity_checking and metrics[f"reconstruction_loss_{mode}"].n_obs > 0:
            # computed (and so summed over processes, as torchmetrics does) before the reset
            values = {name: metric.compute() for name, metric in metrics.items()}
        for metric in metrics.values():
            metric.reset()
        if self.trainer.sanity_checking:
            return
        # values already the same on every process (torchmetrics sums, all_reduce below):
        # sync_dist averages equal values, and spares Lightning's warning
        for name, value in values.items():
            self.log(name, value, on_epoch=True, sync_dist=self.use_sync_dist)
        for key, (total, count) in sums.items():
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                total = torch.as_tensor(total, dtype=torch.float32, device=self.device)
                both = torch.stack([total, torch.tensor(float(count), device=self.device)])
                torch.distributed.all_reduce(both)  # the mean over every process's cells
                total, count = both[0], both[1]
            self.log(f"{key}_{mode}", total / count, on_epoch=True, sync_dist=self.use_sync_dist)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._log_epoch("train", self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_epoch("validation", self.val_metrics)
