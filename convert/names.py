"""Flax module paths ↔ the reference's torch module names.

The models name their submodules after the torch modules (common naming
convention): a numeric index joins the previous name with ``_`` (``blocks_0`` ↔
``blocks.0``). The only renaming beyond that is the ResNet stem, which the
reference stores as the children of an ``nn.Sequential``: ``conv1`` ↔ ``0``,
``bn1`` ↔ ``1``, ``layer{k}_{j}`` ↔ ``{3+k}.{j}``.
"""

from __future__ import annotations

import dataclasses
import re

_INDEXED = re.compile(r"(.+?)_(\d+)")
_RESNET_STAGE = re.compile(r"layer(\d)_(\d+)")
_RESNET_STEM = {"conv1": "0", "bn1": "1"}
# torchvision children: conv1, bn1, relu, maxpool, layer1..layer4 -> layer k is child 3 + k.
_RESNET_STAGE_OFFSET = 3


@dataclasses.dataclass(frozen=True)
class Mount:
    """Flax subtree ``flax_root`` sits at torch prefix ``torch_root``; ``resnet``: stem renaming."""

    flax_root: tuple[str, ...]
    torch_root: str
    resnet: bool = False


def _generic_segment(segment: str) -> str:
    found = _INDEXED.fullmatch(segment)
    return f"{found.group(1)}.{found.group(2)}" if found else segment


def _resnet_segment(segment: str) -> str:
    if segment in _RESNET_STEM:
        return _RESNET_STEM[segment]
    found = _RESNET_STAGE.fullmatch(segment)
    if found is None:
        raise ValueError(
            f"unexpected ResNet submodule {segment!r}; expected conv1, bn1 or layerK_J"
        )
    return f"{int(found.group(1)) + _RESNET_STAGE_OFFSET}.{found.group(2)}"


def torch_module_name(mounts: tuple[Mount, ...], module_path: tuple[str, ...]) -> str:
    """The torch module name (dotted, no trailing dot) of a Flax module path.

    ``mounts`` are tried longest ``flax_root`` first; ``(Mount((), ""),)`` is the plain
    convention. E.g. with ``Mount(("encoder_imaging",), "encoder_imaging.encoder.", True)``,
    ``("encoder_imaging", "layer2_0", "downsample_0")`` →
    ``encoder_imaging.encoder.5.0.downsample.0``.
    """
    for mount in sorted(mounts, key=lambda m: -len(m.flax_root)):
        root = mount.flax_root
        if module_path[: len(root)] != root:
            continue
        rest = list(module_path[len(root) :])
        parts = []
        if rest and mount.resnet:
            parts.append(_resnet_segment(rest.pop(0)))
        parts.extend(_generic_segment(s) for s in rest)
        return (mount.torch_root + ".".join(parts)).rstrip(".")
    raise ValueError(f"no torch name for Flax module path {'/'.join(module_path)!r}")
