"""Fitting a module with Lightning and keeping the checkpoint that is best on the validation split."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class KeepBest(Callback):
    """Keeps, in memory, the weights of the epoch with the best `monitor` (validation metric, higher is better).

    The test split is never looked at. At the end of fit the best weights are loaded back into the module.
    Under DDP every rank sees the same synchronized metric, so every rank keeps the same epoch.
    """

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"selection metric '{self.monitor}' was not logged; logged: {sorted(trainer.callback_metrics)}"
            )
        value = float(value)
        self.history.append(value)
        if self.best is None or value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)


def fit(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer_kwargs: dict[str, Any],
    logger=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit `module`, restore the best validation checkpoint, and return what happened (for the cache meta)."""
    keep = KeepBest(module.selection_metric)
    kwargs = dict(trainer_kwargs)
    kwargs.setdefault("accelerator", "auto")
    kwargs.setdefault("devices", 1)
    trainer = L.Trainer(
        callbacks=[keep],
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        inference_mode=False,  # validation attacks need gradients
        num_sanity_val_steps=0,
        **kwargs,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return {
        "fit_seconds": time.perf_counter() - start,
        "selection_metric": keep.monitor,
        "best_value": keep.best,
        "best_epoch": keep.best_epoch,
        "val_history": keep.history,
        "epochs": trainer.current_epoch,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
        "trainer": trainer,
    }
