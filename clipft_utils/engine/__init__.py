"""The one training loop (``fit``) every trainable method uses, with its schedule, argument checks and checkpoints.

``loop`` (``fit``: epochs, steps, validation, the best epoch, early stopping, DDP), ``state`` (``WarmupCosine``,
``TrainResult``, a run's progress), ``checks`` (``fit``'s arguments, before any work), ``checkpoints`` (resume points).
The loaders it trains on are in ``loader``; the memory it reports is measured by ``memory``.
"""
from ..evaluate import autocast_context, resolve_precision
from .checkpoints import CHECKPOINT_FORMAT, CheckpointMismatch
from .loop import fit
from .state import TrainResult, WarmupCosine

__all__ = ["fit", "TrainResult", "resolve_precision", "autocast_context", "WarmupCosine", "CHECKPOINT_FORMAT",
           "CheckpointMismatch"]
