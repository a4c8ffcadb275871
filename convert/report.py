"""What a load did (:class:`LoadReport`), the reference's checks (docs/reference.md#loading-rules).

``validate`` applies the reference ``PretrainedWeightsMixin``'s checks in its order:
every shape mismatch at once, then the missing-key ratio against
``missing_key_threshold``, then ``strict``; unexpected source keys only warn.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Collection
from typing import Any

from jaxecg.errors import CheckpointError

log = logging.getLogger("convert")


class CheckpointMismatchError(CheckpointError, RuntimeError):
    """The checkpoint does not fit the model (shapes, too many or, under ``strict``, any missing).

    A :class:`~jaxecg.errors.CheckpointError` (so a ``ValueError``) like every bad-input
    error here, and a ``RuntimeError`` like the reference's own exception, so code written
    against either keeps working. ``report`` is the :class:`LoadReport` that failed
    validation; ``headline`` is the message without the key lists, for a caller that
    prints the report itself (the lists would appear twice).
    """

    def __init__(self, headline: str, report: LoadReport, keys: str = "") -> None:
        super().__init__(headline + keys)
        self.headline = headline
        self.report = report


Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """Outcome of matching a checkpoint against a model's target keys (torch names).

    ``total``/``matched``/``missing`` count the targets the kind's rule validates (the
    reference's filtered key set); ``mismatched`` holds ``(key, checkpoint shape, model
    shape)``; ``unexpected`` are source keys nothing used. ``extra_loaded``: targets
    outside the validated set that the file still supplied (the MAE decoder);
    ``initialised``: (torch names of) leaves left at their fresh init; ``notes``: anything
    else worth knowing (resized or recomputed position tables); ``source_sha256``: of the
    file as stored on disk.
    """

    source: str
    kind: str
    total: int
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, Shape, Shape], ...] = ()
    extra_loaded: tuple[str, ...] = ()
    initialised: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    source_sha256: str | None = None

    @property
    def coverage(self) -> float:
        """Fraction of validated target keys found with the right shape."""
        return len(self.matched) / self.total if self.total else 0.0

    @property
    def missing_ratio(self) -> float:
        return len(self.missing) / self.total if self.total else 1.0

    @property
    def shared_prefix(self) -> str | None:
        """The prefix under which most missing keys sit among the unexpected ones, if any.

        E.g. ``"model."`` for a Lightning file whose module was an attribute ``model``:
        ``convert.load(..., strip_prefix="model.")`` then loads it.
        """
        return shared_prefix(self.missing, self.unexpected)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for the sidecar of ``convert.save``)."""
        out = dataclasses.asdict(self)
        out["mismatched"] = [[k, list(a), list(b)] for k, a, b in self.mismatched]
        out["coverage"] = self.coverage
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadReport:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for key in ("matched", "missing", "unexpected", "extra_loaded", "initialised", "notes"):
            values[key] = tuple(values.get(key, ()))
        values["mismatched"] = tuple(
            (k, tuple(a), tuple(b)) for k, a, b in values.get("mismatched", ())
        )
        return cls(**values)

    def summary(self) -> str:
        """A few human-readable lines: counts, then every problem key."""
        lines = [
            (
                f"{self.kind} <- {self.source}: matched {len(self.matched)}/{self.total} "
                f"({100 * self.coverage:.1f}% coverage), missing {len(self.missing)}, "
                f"unexpected {len(self.unexpected)}, shape mismatches {len(self.mismatched)}"
            )
        ]
        if self.missing:
            lines.append(f"  missing: {', '.join(self.missing)}")
        if self.mismatched:
            lines.append(f"  mismatched: {_format_mismatches(self.mismatched)}")
        if self.unexpected:
            lines.append(f"  unexpected: {', '.join(self.unexpected)}")
        if self.extra_loaded:
            lines.append(f"  also loaded: {', '.join(self.extra_loaded)}")
        # Missing keys are initialised too; list only the others, so no key appears twice.
        fresh = [k for k in self.initialised if k not in set(self.missing)]
        if fresh:
            lines.append(f"  also freshly initialised: {', '.join(fresh)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.shared_prefix:
            lines.append(f"  hint: {_prefix_hint(self)}")
        return "\n".join(lines)


def shared_prefix(missing: Collection[str], unexpected: Collection[str]) -> str | None:
    """The dotted prefix ``p`` with ``p + key`` unexpected for more than half the missing keys."""
    wanted = set(missing)
    counts: collections.Counter[str] = collections.Counter()
    for key in unexpected:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in wanted:
                counts[".".join(parts[:i]) + "."] += 1
    if not counts:
        return None
    prefix, count = counts.most_common(1)[0]
    return prefix if 2 * count > len(wanted) else None


def _prefix_hint(report: LoadReport) -> str:
    prefix = report.shared_prefix
    return (
        f"the file holds the missing keys under the prefix {prefix!r} (e.g. "
        f"{prefix + report.missing[0]!r}): load with strip_prefix={prefix!r} "
        f"(python -m convert ... --strip-prefix {prefix})"
    )


def _format_mismatches(mismatched: tuple[tuple[str, Shape, Shape], ...]) -> str:
    return "; ".join(
        f"{key}: checkpoint {tuple(src)} vs model {tuple(dst)}" for key, src, dst in mismatched
    )


def _abbreviate(keys: tuple[str, ...], limit: int = 12) -> str:
    """The first ``limit`` keys for a log line (the report keeps them all)."""
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def validate(
    report: LoadReport, *, strict: bool = False, missing_key_threshold: float = 0.1
) -> None:
    """Raise :class:`CheckpointMismatchError` as the reference would; log the outcome otherwise."""
    if report.mismatched:
        raise CheckpointMismatchError(
            f"Shape mismatch for {len(report.mismatched)} key(s) loading {report.source!r} as "
            f"{report.kind}",
            report,
            f": {_format_mismatches(report.mismatched)}",
        )
    if report.total == 0:
        raise CheckpointMismatchError(f"no target keys to load for {report.kind}", report)
    n_missing, total = len(report.missing), report.total
    hint = f"; hint: {_prefix_hint(report)}" if report.shared_prefix else ""
    if report.missing_ratio > missing_key_threshold:
        raise CheckpointMismatchError(
            f"Too many missing keys: {n_missing}/{total} ({100 * n_missing / total:.1f}% > "
            f"{100 * missing_key_threshold:.1f}%) threshold. Loading {report.source!r} as "
            f"{report.kind}{hint}",
            report,
            f"; missing: {', '.join(report.missing)}",
        )
    if strict and report.missing:
        raise CheckpointMismatchError(
            f"Strict loading: {n_missing}/{total} missing key(s) loading {report.source!r} as "
            f"{report.kind}{hint}",
            report,
            f": {', '.join(report.missing)}",
        )
    if report.unexpected:
        log.warning(
            "%d unexpected key(s) in %s not loaded: %s",
            len(report.unexpected),
            report.source,
            _abbreviate(report.unexpected),
        )
    if report.missing:
        log.warning(
            "%d missing key(s) keep their initialisation: %s",
            n_missing,
            _abbreviate(report.missing),
        )
    log.info(
        "loaded %d/%d keys (%.1f%% coverage) from %s as %s",
        len(report.matched),
        total,
        100 * report.coverage,
        report.source,
        report.kind,
    )
