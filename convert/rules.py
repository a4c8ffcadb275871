"""The reference's loading rules (docs/reference.md#loading-rules), one object per model kind.

A rule works on torch names only: which target keys it validates (``validates``),
which source keys it tries for a target (``names``), and how it matches a target
key/shape set against a state dict (``match``). The same code therefore reproduces
the reference's decisions on its own key sets (the golden ``mixin_targets``) and
drives :func:`convert.load` on the torch names of our Flax trees. Subclass a rule
and pass it as ``convert.load(..., rule=...)`` to load an unusual file.

Beyond the reference (never changing one of its decisions, only turning some of
its misses into matches): every name is also tried with a DDP ``module.`` prefix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, Literal

import numpy as np

from convert.report import LoadReport
from jaxecg.errors import CheckpointError, UsageError

Shape = tuple[int, ...]

Mode = Literal["finetune", "restore"]
# How the reference loads a classifier: while constructing it for fine-tuning, or into the
# finished model to restore a trained one. Other kinds have one path; both names accept it.
MODES: tuple[Mode, ...] = ("finetune", "restore")

UNWRAP_KEYS = ("state_dict", "model", "network")
DDP_PREFIX = "module."
_CMR_PREFIX = "encoder_imaging."
_CMR_CUT = len("encoder.")


def unwrap(checkpoint: Any) -> Mapping[str, Any]:
    """The state dict inside a checkpoint: ``state_dict``, ``model``, ``network``, repeatedly.

    Each round takes the first of those keys (in that order) that holds a mapping.
    """
    while isinstance(checkpoint, Mapping):
        inner = next(
            (checkpoint[k] for k in UNWRAP_KEYS if isinstance(checkpoint.get(k), Mapping)), None
        )
        if inner is None:
            return checkpoint
        checkpoint = inner
    raise CheckpointError(
        f"expected a checkpoint mapping of names to tensors, got {type(checkpoint).__name__}"
    )


def tensors_of(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The array entries of a state dict (non-tensor entries are dropped)."""
    return {str(k): v for k, v in state.items() if isinstance(v, np.ndarray)}


@dataclasses.dataclass(frozen=True)
class Match:
    """Result of matching target keys against a state dict (all lists sorted).

    ``matched``/``extra`` map a target key to the source key that fills it (validated
    targets / targets outside the rule's filter); ``mismatched`` holds ``(key, source
    shape, target shape)``.
    """

    total: int
    matched: dict[str, str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, Shape, Shape]]
    extra: dict[str, str]

    def report(self, *, source: str, kind: str, **fields: Any) -> LoadReport:
        """This match as a :class:`LoadReport` (``fields``: its optional fields)."""
        return LoadReport(
            source=source,
            kind=kind,
            total=self.total,
            matched=tuple(sorted(self.matched)),
            missing=tuple(self.missing),
            unexpected=tuple(self.unexpected),
            mismatched=tuple(self.mismatched),
            extra_loaded=tuple(sorted(self.extra)),
            **fields,
        )


class Rule:
    """Default rule: every target is validated and matched by its exact name."""

    kind = "generic"

    def validates(self, key: str) -> bool:
        """Whether ``key`` is one of the targets the reference counts and checks."""
        return True

    def names(self, key: str) -> tuple[str, ...]:
        """Source names tried for target ``key``, in order (reference semantics)."""
        return (key,)

    def for_mode(self, mode: Mode) -> Rule:
        """This rule for a construction path (only classifiers have two; see ``MODES``)."""
        if mode not in MODES:
            raise UsageError(f"mode={mode!r}: expected one of {list(MODES)}")
        return self

    def candidates(self, key: str) -> tuple[str, ...]:
        names = self.names(key)
        return names + tuple(DDP_PREFIX + n for n in names)

    @staticmethod
    def ignores(source_key: str) -> bool:
        """Source keys with no Flax counterpart: never "unexpected" in :func:`convert.load`."""
        return source_key.rsplit(".", 1)[-1] == "num_batches_tracked"

    def match(
        self,
        targets: Mapping[str, Shape],
        source: Mapping[str, Any],
        *,
        ignore_source: bool = False,
        resizable: Collection[str] = (),
        fill_unvalidated: bool = False,
    ) -> Match:
        """Find each target's source key (first candidate present) and compare shapes.

        With the defaults this is the reference mixin: targets the rule does not
        validate are dropped. ``fill_unvalidated``: match them too when found with the
        right shape (``extra``), never counting them as missing or mismatched.
        ``ignore_source``: leave :meth:`ignores` keys out of ``unexpected``.
        ``resizable``: targets whose shape may differ (the caller resizes them).
        """
        matched: dict[str, str] = {}
        extra: dict[str, str] = {}
        missing: list[str] = []
        mismatched: list[tuple[str, Shape, Shape]] = []
        used: set[str] = set()
        total = 0
        for key, shape in targets.items():
            validated = self.validates(key)
            if not (validated or fill_unvalidated):
                continue
            total += validated
            found = next((c for c in self.candidates(key) if c in source), None)
            if found is None:
                if validated:
                    missing.append(key)
                continue
            src_shape = tuple(np.shape(source[found]))
            if src_shape != tuple(shape) and key not in resizable:
                if validated:
                    mismatched.append((key, src_shape, tuple(shape)))
                    used.add(found)
                continue
            (matched if validated else extra)[key] = found
            used.add(found)
        unexpected = [
            k for k in source if k not in used and not (ignore_source and self.ignores(k))
        ]
        return Match(total, matched, sorted(missing), sorted(unexpected), sorted(mismatched), extra)


class ECGEncoderRule(Rule):
    """``ECGEncoder``: ``head.*`` never loads (the timm fork's unused 2-class head)."""

    kind = "ecg_encoder"

    def names(self, key: str) -> tuple[str, ...]:
        return () if key.startswith("head.") else (key,)


class _ClassifierRule(Rule):
    """A classifier the reference loads in one of two ways (``mode``):

    - ``"finetune"``: while constructing it, before the modules in ``_BUILT_AFTER_LOADING``
      exist, so only the others are validated (an encoder or MAE file passes, as there);
      the late modules are still filled when the file has them (a fine-tuned classifier).
    - ``"restore"``: into the finished classifier (evaluating a trained one): every key is
      validated, so a file without the head or pooling is refused as the reference does.
    """

    _BUILT_AFTER_LOADING: tuple[str, ...] = ()

    def __init__(self, mode: Mode = "finetune") -> None:
        if mode not in MODES:
            raise UsageError(f"mode={mode!r}: expected one of {list(MODES)}")
        self.mode = mode

    def validates(self, key: str) -> bool:
        return not (self.mode == "finetune" and key.startswith(self._BUILT_AFTER_LOADING))

    def for_mode(self, mode: Mode) -> Rule:
        return type(self)(mode)


class ECGClassifierRule(_ClassifierRule):
    """``ECGClassifier``: ``fc_norm`` and ``attention_pool`` are built after fine-tuning's load."""

    kind = "ecg_classifier"
    _BUILT_AFTER_LOADING = ("fc_norm.", "attention_pool.")


class MAERule(Rule):
    """``MaskedAutoencoderViT``: only encoder keys are validated.

    The reference drops keys containing ``decoder`` or starting with ``mask_token``,
    ``projector`` or ``predictor``; we still fill those targets when the file has them
    with the right shape (a full MAE checkpoint), reported as ``extra_loaded``.
    """

    kind = "mae"

    def validates(self, key: str) -> bool:
        return "decoder" not in key and not key.startswith(("mask_token", "projector", "predictor"))


class CMREncoderRule(Rule):
    """``CMREncoder`` (keys ``encoder.<i>...``): ``encoder_imaging.`` + the key with its first
    8 characters cut blindly, then ``encoder_imaging.`` + the key, then the key itself."""

    kind = "cmr_encoder"

    def names(self, key: str) -> tuple[str, ...]:
        return (_CMR_PREFIX + key[_CMR_CUT:], _CMR_PREFIX + key, key)


class CMRClassifierRule(_ClassifierRule, CMREncoderRule):
    """``CMRClassifier``: fine-tuning loads into the encoder before the ``head`` exists."""

    kind = "cmr_classifier"
    _BUILT_AFTER_LOADING = ("head.",)


class SimCLRRule(Rule):
    """SimCLR (keys ``encoder_imaging.encoder.*``, ``projection_head.layers.*``): encoder keys
    also come from a published image-encoder file (``encoder_imaging.<i>``) or a raw CMREncoder
    state dict (``encoder.<i>``)."""

    kind = "simclr"
    _ENCODER = _CMR_PREFIX + "encoder."

    def names(self, key: str) -> tuple[str, ...]:
        if key.startswith(self._ENCODER):
            rest = key[len(self._ENCODER) :]
            return (key, _CMR_PREFIX + rest, "encoder." + rest)
        return (key,)


class LinearClassifierRule(Rule):
    """``LinearClassifier`` (``model.*``), also SimCLR's online ``classifier.model.*``."""

    kind = "linear_classifier"

    def names(self, key: str) -> tuple[str, ...]:
        return (key, "classifier." + key)


RULES: dict[str, Rule] = {
    rule.kind: rule
    for rule in (
        ECGEncoderRule(),
        MAERule(),
        ECGClassifierRule(),
        CMREncoderRule(),
        CMRClassifierRule(),
        SimCLRRule(),
        LinearClassifierRule(),
    )
}
