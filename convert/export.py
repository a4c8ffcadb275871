"""Flax variables → a PyTorch state dict with the reference's names (the inverse of ``load``).

``torch.save(export(variables, kind, config), "model.pth")`` gives a file the
original code loads with ``load_state_dict``. Not exported: ``num_batches_tracked``
(torch's BatchNorm fills in a missing counter when loading) and the reference-only
keys our modules do not have (the ECG encoder's unused timm ``head``, loss buffers
such as ``criterion.pos_weight``). The MAE's fixed ``pos_embed``/``decoder_pos_embed``
tables are exported, recomputed from the config, because the reference stores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np
from flax import traverse_util

from convert.targets import binding
from jaxecg.config import Config
from jaxecg.errors import CheckpointError

if TYPE_CHECKING:  # torch is needed only to export, so importing convert does not pull it in
    import torch


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy (arrays from JAX are read-only views)."""
    import torch

    array = np.array(array, copy=True, order="C")
    if array.dtype == ml_dtypes.bfloat16:
        # torch.from_numpy does not know ml_dtypes.bfloat16: move the raw bits.
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def export(
    variables: Mapping[str, Any], kind: str, config: Config | Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """``{"params": ..., "batch_stats": ...}`` of ``kind``/``config`` → ``{torch name: tensor}``.

    Raises :class:`~jaxecg.errors.CheckpointError` naming every leaf that is missing, unexpected or of the wrong
    shape for ``Module(config)``.
    """
    target = binding(kind)
    config = target.config(config)
    entries, abstract = target.entries(config)
    expected = {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(abstract).items()}
    collections = {p[0] for p in expected}  # others, e.g. sown "intermediates", are ignored
    flat = {
        p: np.asarray(v)
        for p, v in traverse_util.flatten_dict(dict(variables)).items()
        if p[0] in collections
    }
    problems = [f"missing {'/'.join(p)}" for p in expected if p not in flat]
    problems += [f"unexpected {'/'.join(p)}" for p in flat if p not in expected]
    problems += [
        f"{'/'.join(p)}: shape {flat[p].shape} vs model {shape}"
        for p, shape in expected.items()
        if p in flat and flat[p].shape != shape
    ]
    if problems:
        raise CheckpointError(
            f"variables do not fit {kind} with this config ({len(problems)} problem(s)): "
            + "; ".join(problems)
        )
    state = {e.torch_key: _tensor(e.to_torch(flat)) for e in entries}
    state.update({k: _tensor(v) for k, v in target.fixed_tables(config).items()})
    return state
