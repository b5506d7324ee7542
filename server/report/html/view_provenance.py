"""The end of the page: privacy spent per site, the provenance tables and the footer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.format import finite, fmt_g, plain
from server.report.html.view_context import Context
from server.report.html.view_read import get, mapping, records, text, unique

__all__ = [
    "Footer",
    "Hash",
    "JoinedSite",
    "Privacy",
    "PrivacyRow",
    "Provenance",
    "Thickness",
    "read_footer",
    "read_privacy",
    "read_provenance",
]

HASH_CHARS = 12  # shown of a SHA-256; the whole hash is the tooltip


@dataclass(frozen=True)
class PrivacyRow:
    site: str
    epsilon: float | None
    epsilon_gdp: float | None
    delta: float | None
    releases: str
    unbounded: str | None  # why the site has no epsilon; None when it has one


@dataclass(frozen=True)
class Privacy:
    """Differential privacy of the run and the budget each site spent."""

    mode: str
    noise_multiplier: float | None
    clip_norm: float | None
    budget: float | None  # None: no budget was set
    accounting: str
    rows: tuple[PrivacyRow, ...]


@dataclass(frozen=True)
class Hash:
    full: str
    short: str  # the first characters, with an ellipsis when cut


@dataclass(frozen=True)
class Thickness:
    """Slice thickness over a site's cases: ``lo`` alone when every case agrees."""

    lo: str
    hi: str | None


@dataclass(frozen=True)
class JoinedSite:
    """A site that joined the run: role, case counts, acquisition and manifest."""

    name: str
    role: str
    n_train: str
    n_val: str | None  # None in reports from before the val split was recorded
    n_test: str
    vendor: str | None  # each value with its case count when there are several
    scanner_model: str | None
    kernel: str | None
    thickness: Thickness | None
    manifest: Hash | None


@dataclass(frozen=True)
class Provenance:
    """The run's facts, model hashes, joined sites, settings and configuration."""

    facts: tuple[tuple[str, str], ...]  # (label, value), the known ones
    models: tuple[tuple[str, Hash | None], ...]  # model weights' SHA-256
    sites: tuple[JoinedSite, ...]
    settings: tuple[tuple[str, str], ...]  # the report settings, as text
    config: tuple[tuple[str, str], ...]  # the resolved run configuration, as text

    @property
    def has_val(self) -> bool:
        """Whether any site's validation count was recorded (a column for it)."""
        return any(s.n_val is not None for s in self.sites)


@dataclass(frozen=True)
class Footer:
    version: str
    code_version: str


def read_privacy(ctx: Context) -> Privacy | None:
    """None without differential privacy (the page then has no privacy section)."""
    block = ctx.report.get("privacy")
    if not block or not isinstance(block, Mapping):
        return None
    rows = []
    for row in records(block.get("sites")):
        unbounded = None
        if row.get("epsilon") is None:
            unbounded = "; ".join(str(u) for u in row.get("unbounded") or []) or "no guarantee"
        rows.append(
            PrivacyRow(
                site=text(row.get("site")),
                epsilon=finite(row.get("epsilon")),
                epsilon_gdp=finite(row.get("epsilon_gdp")),
                delta=finite(row.get("delta")),
                releases=text(row.get("releases")),
                unbounded=unbounded,
            )
        )
    return Privacy(
        mode=text(block.get("mode")),
        noise_multiplier=finite(block.get("noise_multiplier")),
        clip_norm=finite(block.get("clip_norm")),
        budget=finite(block.get("max_epsilon")) or None,
        accounting=text(block.get("accounting")).upper(),
        rows=tuple(rows),
    )


def _hash(value: object) -> Hash | None:
    full = str(value or "")
    if not full:
        return None
    return Hash(full, full[:HASH_CHARS] + ("\u2026" if len(full) > HASH_CHARS else ""))


def _counts(acquisition: Mapping[str, Any], key: str) -> str | None:
    """A categorical acquisition field: the value, or each value with its case count."""
    counts = acquisition.get(key)
    if not isinstance(counts, Mapping) or not counts:
        return None
    if len(counts) == 1:
        return str(next(iter(counts)))
    return ", ".join(f"{k} ({v})" for k, v in counts.items())


def _thickness(acquisition: Mapping[str, Any]) -> Thickness | None:
    rng = acquisition.get("slice_thickness_mm")
    if not isinstance(rng, Mapping) or finite(rng.get("min")) is None:
        return None
    lo, hi = (fmt_g(finite(rng.get(k)) or 0) for k in ("min", "max"))
    return Thickness(lo, None if lo == hi else hi)


def _joined(ctx: Context, manifests: Mapping[str, Any]) -> tuple[JoinedSite, ...]:
    by_name = {str(s.get("name")): s for s in ctx.joined}
    names = unique([*(str(s.get("name")) for s in ctx.joined), *map(str, manifests)])
    sites = []
    for name in names:
        s = by_name.get(name, {})
        acquisition = mapping(s.get("acquisition"))
        sites.append(
            JoinedSite(
                name=name,
                role=text(s.get("role", "n/a")),
                n_train=text(s.get("n_train", "n/a")),
                n_val=text(s["n_val"]) if "n_val" in s else None,
                n_test=text(s.get("n_test", "n/a")),
                vendor=_counts(acquisition, "vendor"),
                scanner_model=_counts(acquisition, "scanner_model"),
                kernel=_counts(acquisition, "kernel"),
                thickness=_thickness(acquisition),
                manifest=_hash(manifests.get(name, s.get("manifest_sha256", ""))),
            )
        )
    return tuple(sites)


def read_provenance(ctx: Context) -> Provenance:
    prov = mapping(ctx.report.get("provenance"))
    facts = (
        ("Code version", prov.get("code_version")),
        ("Run folder", prov.get("run_dir")),
        ("Report created", ctx.report.get("created")),
        ("Report format version", ctx.report.get("report_version")),
    )
    models = mapping(prov.get("model_sha256"))
    return Provenance(
        facts=tuple((k, str(v)) for k, v in facts if v not in (None, "")),
        models=tuple((str(m), _hash(h)) for m, h in models.items()),
        sites=_joined(ctx, mapping(prov.get("manifest_sha256"))),
        settings=tuple((str(k), plain(v)) for k, v in mapping(ctx.report.get("settings")).items()),
        config=tuple((str(k), plain(v)) for k, v in mapping(prov.get("config")).items()),
    )


def read_footer(ctx: Context) -> Footer:
    return Footer(
        version=text(ctx.report.get("report_version")),
        code_version=text(get(ctx.report, "provenance", "code_version")),
    )
