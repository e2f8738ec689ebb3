"""Offline features: point-in-time-correct training sets.

For each row of a spine (entity_id, timestamp, anything else such as labels) each requested feature
takes the value of the latest event at or before that timestamp for that entity (DuckDB ASOF JOIN).
A value recorded after the timestamp can never leak into the row, which is what keeps a model's offline
metrics honest.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from mlplat.features.registry import FeatureRegistry
from mlplat.warehouse.store import Warehouse

SPINE = "__mlplat_spine"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_refs(registry: FeatureRegistry, refs: Sequence[str]) -> dict[str, list[str]]:
    """'set.feature' or 'set' (every feature of the set) -> {set: [features]}, checked against the registry."""
    wanted: dict[str, list[str]] = {}
    for ref in refs:
        set_name, _, feature = ref.partition(".")
        known = [f.name for f in registry.get(set_name).features]
        if feature and feature not in known:
            raise ValueError(f"feature set {set_name!r} has no feature {feature!r} (it has {', '.join(known)})")
        chosen = wanted.setdefault(set_name, [])
        chosen += [n for n in ([feature] if feature else known) if n not in chosen]
    return wanted


async def training_set(
    warehouse: Warehouse, registry: FeatureRegistry, spine: pa.Table, features: Sequence[str],
    *, timestamp_column: str = "timestamp", entity_column: str = "entity_id",
) -> pa.Table:
    """The spine, in its order, with one column per requested feature as of each row's timestamp.

    Output columns are named `<set>__<feature>` so features of different sets never collide.
    """
    for column in (entity_column, timestamp_column):
        if column not in spine.column_names:
            raise ValueError(f"spine has no {column!r} column (it has {', '.join(spine.column_names)})")
    wanted = parse_refs(registry, features)
    prepared = spine.append_column("__row", pa.array(range(spine.num_rows), pa.int64()))
    prepared = prepared.set_column(
        prepared.schema.get_field_index(entity_column), entity_column, pc.cast(prepared[entity_column], pa.string())
    )
    selects = [f"s.{_ident(c)}" for c in spine.column_names]
    joins = []
    for i, (set_name, names) in enumerate(wanted.items()):
        fs = registry.get(set_name)
        alias = f"f{i}"
        selects += [f"{alias}.{_ident(n)} AS {_ident(f'{set_name}__{n}')}" for n in names]
        joins.append(
            f"ASOF LEFT JOIN (SELECT entity_id, event_time, {', '.join(_ident(n) for n in names)} "
            f"FROM {_ident(fs.table)}) {alias} ON s.{_ident(entity_column)} = {alias}.entity_id "
            f"AND s.{_ident(timestamp_column)}::TIMESTAMPTZ >= {alias}.event_time"
        )
    sql = f"SELECT {', '.join(selects)} FROM {SPINE} s {' '.join(joins)} ORDER BY s.__row"
    return await warehouse.read(sql, tables={SPINE: prepared})
