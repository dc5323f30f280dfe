"""The organisation tree: one center, institutes under it, stations under them.

``SiteTree`` is a pure in-memory view (a county has ~190 sites, so the whole tree is
loaded for every question); ``Sites`` reads and writes the table, CSV included."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from scheduler.tables import sites as sites_table


class SiteKind(StrEnum):
    CENTER = "center"
    INSTITUTE = "institute"
    STATION = "station"


@dataclass(frozen=True)
class Site:
    """A node of the organisation tree."""

    code: str
    """Stable short code: ``C``, ``I01``, ``I01-S001``."""
    name: str
    kind: SiteKind
    parent: str | None
    """The parent's code; None only for the center."""
    region: str = ""
    """The street (街道) or township (乡镇) the site belongs to."""
    contact_name: str = ""
    contact_phone: str = ""


CSV_HEADER = ("code", "name", "kind", "parent", "region", "contact_name", "contact_phone")


class SiteError(ValueError):
    """A change that would leave the tree invalid; ``errors`` are (row, message) pairs,
    row numbers as a spreadsheet shows them (the header is row 1), 0 when not from a file."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"row {row}: {msg}" if row else msg for row, msg in errors))


class SiteTree:
    """An immutable snapshot of the tree with the questions permissions ask."""

    def __init__(self, all_sites: Iterable[Site]) -> None:
        self._sites: dict[str, Site] = {site.code: site for site in all_sites}
        self._children: dict[str, list[str]] = {}
        for site in self._sites.values():
            if site.parent is not None:
                self._children.setdefault(site.parent, []).append(site.code)
        for codes in self._children.values():
            codes.sort()

    def __contains__(self, code: object) -> bool:
        return code in self._sites

    def __len__(self) -> int:
        return len(self._sites)

    def get(self, code: str) -> Site:
        """The site with this code; KeyError when unknown."""
        return self._sites[code]

    def all(self) -> list[Site]:
        """Every site, parents before children (a valid import order)."""
        ordered: list[Site] = []
        for root in sorted(c for c, s in self._sites.items() if s.parent not in self._sites):
            ordered.extend(self.get(code) for code in self.subtree(root))
        return ordered

    def children(self, code: str) -> list[str]:
        return list(self._children.get(code, ()))

    def subtree(self, code: str) -> list[str]:
        """``code`` and every site below it, depth first, sorted among siblings."""
        self.get(code)
        result: list[str] = []
        stack = [code]
        while stack:
            current = stack.pop()
            result.append(current)
            stack.extend(reversed(self._children.get(current, ())))
        return result

    def ancestors(self, code: str) -> list[str]:
        """The parent, the parent's parent, … up to the root (nearest first)."""
        result: list[str] = []
        parent = self.get(code).parent
        while parent is not None and parent in self._sites:
            result.append(parent)
            parent = self._sites[parent].parent
        return result

    def is_within(self, code: str, root: str) -> bool:
        """Whether ``code`` is ``root`` or below it."""
        return code == root or root in self.ancestors(code)

    def institute_of(self, code: str) -> str | None:
        """The institute a site belongs to (itself for an institute, None for the center)."""
        for candidate in [code, *self.ancestors(code)]:
            if self.get(candidate).kind is SiteKind.INSTITUTE:
                return candidate
        return None


def validate(proposed: Mapping[str, Site], rows: Mapping[str, int] | None = None) -> None:
    """Raise SiteError unless ``proposed`` is a valid tree: one center and no parent for
    it, every other site with an existing parent, no cycles. ``rows`` maps codes to the
    file rows they came from, for the messages."""
    rows = rows or {}
    errors: list[tuple[int, str]] = []
    centers = sorted(code for code, site in proposed.items() if site.kind is SiteKind.CENTER)
    if len(centers) > 1:
        errors.append((rows.get(centers[1], 0), f"more than one center: {', '.join(centers)}"))
    for code, site in proposed.items():
        row = rows.get(code, 0)
        if site.kind is SiteKind.CENTER and site.parent is not None:
            errors.append((row, f"{code}: the center has no parent"))
        elif site.kind is not SiteKind.CENTER and site.parent is None:
            errors.append((row, f"{code}: a {site.kind} needs a parent"))
        elif site.parent is not None and site.parent not in proposed:
            errors.append((row, f"{code}: unknown parent {site.parent}"))
    if not errors:
        errors.extend(_cycles(proposed, rows))
    if errors:
        raise SiteError(sorted(errors))


def _cycles(proposed: Mapping[str, Site], rows: Mapping[str, int]) -> list[tuple[int, str]]:
    errors: list[tuple[int, str]] = []
    reported: set[str] = set()
    for start in proposed:
        path: list[str] = []
        current: str | None = start
        while current is not None and current not in path:
            path.append(current)
            current = proposed[current].parent
        if current is None:
            continue
        loop = path[path.index(current) :]
        if not reported.intersection(loop):
            reported.update(loop)
            first = min(loop, key=lambda c: (rows.get(c, 0), c))
            errors.append((rows.get(first, 0), f"cycle: {' → '.join([*loop, loop[0]])}"))
    return errors


def export_csv(tree: SiteTree) -> bytes:
    """The tree as CSV, UTF-8 with a BOM so Excel shows the Chinese names."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for site in tree.all():
        writer.writerow(
            [
                site.code,
                site.name,
                site.kind.value,
                site.parent or "",
                site.region,
                site.contact_name,
                site.contact_phone,
            ]
        )
    return out.getvalue().encode("utf-8-sig")


def parse_csv(data: bytes) -> tuple[list[Site], dict[str, int]]:
    """Sites from CSV bytes (BOM optional) and the row each code came from; SiteError
    with every row-level problem (bad header, kind, duplicate code, empty field)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SiteError([(0, f"not UTF-8: {exc}")]) from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
        raise SiteError([(1, f"header must be {','.join(CSV_HEADER)}")])
    errors: list[tuple[int, str]] = []
    parsed: list[Site] = []
    rows: dict[str, int] = {}
    for row_number, raw in enumerate(reader, start=2):
        if not any(cell.strip() for cell in raw):
            continue
        if len(raw) != len(CSV_HEADER):
            errors.append((row_number, f"expected {len(CSV_HEADER)} columns, got {len(raw)}"))
            continue
        code, name, kind, parent, region, contact_name, contact_phone = (c.strip() for c in raw)
        if not code or not name:
            errors.append((row_number, "code and name are required"))
            continue
        if kind not in SiteKind.__members__.values():
            errors.append((row_number, f"{code}: bad kind {kind!r}"))
            continue
        if code in rows:
            errors.append((row_number, f"duplicate code {code} (first on row {rows[code]})"))
            continue
        rows[code] = row_number
        parsed.append(
            Site(code, name, SiteKind(kind), parent or None, region, contact_name, contact_phone)
        )
    if errors:
        raise SiteError(errors)
    return parsed, rows


def _to_row(site: Site) -> dict[str, object]:
    row = {f.name: getattr(site, f.name) for f in fields(Site)}
    row["kind"] = site.kind.value
    return row


class Sites:
    """The sites table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def tree(self) -> SiteTree:
        async with self._engine.connect() as conn:
            return await self._load(conn)

    async def _load(self, conn: AsyncConnection) -> SiteTree:
        result = await conn.execute(sa.select(sites_table))
        return SiteTree(
            Site(
                code=r.code,
                name=r.name,
                kind=SiteKind(r.kind),
                parent=r.parent,
                region=r.region,
                contact_name=r.contact_name,
                contact_phone=r.contact_phone,
            )
            for r in result
        )

    async def upsert(self, changed: list[Site], rows: Mapping[str, int] | None = None) -> None:
        """Add or replace sites, all or nothing: the resulting tree is validated first
        (SiteError otherwise), under a transaction."""
        async with self._engine.begin() as conn:
            current = await self._load(conn)
            proposed = {site.code: site for site in current.all()}
            proposed.update((site.code, site) for site in changed)
            validate(proposed, rows)
            existing = [s for s in changed if s.code in current]
            new = [s for s in changed if s.code not in current]
            if new:
                await conn.execute(sa.insert(sites_table), [_to_row(s) for s in new])
            for site in existing:
                await conn.execute(
                    sa.update(sites_table)
                    .where(sites_table.c.code == site.code)
                    .values(_to_row(site))
                )

    async def add_missing(self, parsed: list[Site], rows: Mapping[str, int]) -> int:
        """Add the sites whose code is not in the tree yet (edits made since survive);
        how many were added."""
        tree = await self.tree()
        missing = [site for site in parsed if site.code not in tree]
        if missing:
            await self.upsert(missing, rows)
        return len(missing)

    async def delete(self, code: str) -> None:
        """Remove a leaf site (KeyError when unknown, SiteError when it has children)."""
        async with self._engine.begin() as conn:
            tree = await self._load(conn)
            tree.get(code)
            if tree.children(code):
                raise SiteError([(0, f"{code} still has {len(tree.children(code))} sites")])
            await conn.execute(sa.delete(sites_table).where(sites_table.c.code == code))

    async def import_csv(self, data: bytes) -> int:
        """Add or update the sites of a CSV file, all or nothing; the number of rows."""
        parsed, rows = parse_csv(data)
        await self.upsert(parsed, rows)
        return len(parsed)
