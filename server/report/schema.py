"""The JSON Schema of ``report.json``, generated from the models, and validation through them.

``schema()`` is ``server.report.model.Report``'s JSON Schema (Draft 2020-12) with the
report's ``$id``, title and description; ``validate(report)`` checks a document with the
same models and raises ``ReportError`` naming the first path that is wrong. The committed
``server/report/report.schema.json`` is generated: after changing a model, rewrite it with

    python -m server.report.schema

(a test fails while the file and the models differ).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, core_schema

from server.report.model import REPORT_VERSION, Report

SCHEMA_FILE = "report.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = f"https://hepafed.invalid/schemas/report-{REPORT_VERSION}.schema.json"


class ReportError(ValueError):
    """A run folder or report file cannot be turned into a report."""


class _ReportSchema(GenerateJsonSchema):
    """pydantic's generator without what the report's schema does not mean: no titles on
    fields (the names say it) and no ``default`` (an optional key has no default value: it is
    absent); and every property keeps its description, even one that repeats its block's."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        out.pop("default", None)
        return out

    def handle_ref_overrides(self, json_schema: JsonSchemaValue) -> JsonSchemaValue:
        return json_schema


def _one_line(node: Any) -> Any:
    """Descriptions with their docstring line breaks and indentation folded into spaces."""
    if isinstance(node, dict):
        return {
            k: " ".join(v.split()) if k == "description" and isinstance(v, str) else _one_line(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return node


def published_schema(model: type[BaseModel], schema_id: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) a document model publishes: its ``$id``, title and
    description first, no field titles or defaults (``_ReportSchema``), one-line texts."""
    generated = _one_line(copy.deepcopy(model.model_json_schema(schema_generator=_ReportSchema)))
    head = {
        "$schema": DIALECT,
        "$id": schema_id,
        "title": generated.pop("title"),
        "description": generated.pop("description"),
    }
    defs = generated.pop("$defs")
    return {**head, **generated, "$defs": defs}


def schema_json(schema: dict[str, Any]) -> str:
    """A published schema as its committed file holds it."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def schema() -> dict[str, Any]:
    """The published JSON Schema of ``report.json``, generated from ``Report``."""
    return published_schema(Report, SCHEMA_ID)


def schema_text() -> str:
    """``schema()`` as the committed file holds it."""
    return schema_json(schema())


def validate(report: Mapping[str, Any]) -> None:
    """Raise ``ReportError`` naming the first path that breaks the schema."""
    try:
        Report.model_validate(report)
    except ValidationError as err:
        where, message = first_problem(err.errors(), report)
        raise ReportError(f"report does not match {SCHEMA_FILE} at {where}: {message}") from err


def first_problem(errors: Sequence[ErrorDetails], report: Any) -> tuple[str, str]:
    """The first path of the document (in sorted order, as ``a/0/b``; ``(top level)`` for the
    document itself) that has an error, and what is wrong there."""
    found: dict[tuple[int | str, ...], list[str]] = {}
    for error in errors:
        path, message = _locate(error, report)
        if message not in found.setdefault(path, []):
            found[path].append(message)
    path = min(found, key=lambda p: [(isinstance(k, str), k) for k in p])
    messages = found[path]
    should = "Input should be "
    if len(messages) > 1 and all(m.startswith(should) for m in messages):  # a union's members
        alternatives = [m.removeprefix(should).split(", got ")[0] for m in messages]
        got = messages[0].partition(", got ")[2]
        message = should + ", ".join(alternatives[:-1]) + " or " + alternatives[-1]
        messages = [f"{message}, got {got}" if got else message]
    return "/".join(str(k) for k in path) or "(top level)", "; ".join(messages)


def _locate(error: ErrorDetails, report: Any) -> tuple[tuple[int | str, ...], str]:
    """The document path of one pydantic error, and its message.

    pydantic's ``loc`` also names union members (``str``, ``int``...), which are not keys of
    the document: only the steps that exist in the document are kept. A missing or
    unexpected key is reported at the object that holds it, as JSON Schema validators do."""
    loc, kind = error["loc"], error["type"]
    steps = loc[:-1] if kind in ("missing", "extra_forbidden") and loc else loc
    path: list[int | str] = []
    node = report
    for key in steps:
        if _holds(node, key):
            node = node[key]
            path.append(key)
    if kind == "missing":
        return tuple(path), f"{loc[-1]!r} is a required property"
    if kind == "extra_forbidden":
        return tuple(path), f"Additional properties are not allowed ({loc[-1]!r} was unexpected)"
    message = error["msg"]
    value = error.get("input")
    if value is None or isinstance(value, str | int | float):
        message += f", got {str(json.dumps(value))[:60]}"
    return tuple(path), message


def _holds(node: Any, key: int | str) -> bool:
    if isinstance(node, Mapping):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)


def main() -> None:
    """Rewrite ``server/report/report.schema.json`` from the models."""
    target = Path(__file__).with_name(SCHEMA_FILE)
    target.write_text(schema_text(), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")


if __name__ == "__main__":
    main()
