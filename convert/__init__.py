"""PyTorch checkpoints <-> Flax variable trees.

``load`` a reference checkpoint into ``{"params", "batch_stats"}`` with a
:class:`LoadReport`; ``save``/``restore`` them as an Orbax directory with a JSON
sidecar; ``export`` them back to a torch state dict with the reference's names.
"""

from convert.export import export
from convert.loading import check, load
from convert.report import LoadReport
from convert.store import restore, save

__all__ = ["LoadReport", "check", "export", "load", "restore", "save"]
