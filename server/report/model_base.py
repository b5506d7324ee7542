"""What every model of ``report.json`` shares: the strict base class and the field types.

The report's JSON Schema is generated from these models (``server.report.schema``), so a
constraint written here holds both for pydantic validation and for the published schema.
Three kinds of optional field occur, and they differ:

- required and nullable (``float | None``, no default): the number could not be computed;
- ``Omittable[X]`` (default ``None``): the key may be left out, but when present it is an
  ``X``, never null (the schema shows ``X`` alone; an explicit null is rejected);
- omittable and nullable (``X | None = None``): both absent and null are allowed.

Dump with ``exclude_unset=True`` so that a key left out stays left out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

T = TypeVar("T")


class ReportModel(BaseModel):
    """A JSON object of the report: unknown keys are errors, no type coercion (a number
    given as a string is wrong), and non-finite numbers are refused (JSON has none)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _not_null(value: T | None) -> T:
    if value is None:
        raise PydanticCustomError("null_not_allowed", "may be left out but is never null")
    return value


def _without_null(schema: dict[str, Any]) -> None:
    """The field's JSON Schema without its null branch and without its default: the key may
    be absent, but not null."""
    branches = [b for b in schema.pop("anyOf") if b != {"type": "null"}]
    (only,) = branches
    schema.update(only)
    schema.pop("default", None)


Omittable = Annotated[T | None, AfterValidator(_not_null), Field(json_schema_extra=_without_null)]
"""A key that may be left out but is never null; declare it with ``= Field(None, ...)``."""

# ---- numbers ----------------------------------------------------------------------------------

Probability = Annotated[float, Field(ge=0, le=1)]
"""On [0, 1]: a proportion, an AUC, a p-value, a distance in units of the window width."""
OpenProbability = Annotated[float, Field(gt=0, lt=1)]
"""On (0, 1): a threshold, a delta."""
NonNegative = Annotated[float, Field(ge=0)]
"""A variance, a ratio, a distance, an epsilon."""
AucDifference = Annotated[float, Field(ge=-1, le=1)]
"""A difference of two AUCs."""
Count = Annotated[int, Field(ge=0)]
"""A number of cases, sites or releases."""
PositiveCount = Annotated[int, Field(ge=1)]
"""A number of sites pooled, of cases that record a value."""

# ---- text -------------------------------------------------------------------------------------

SHA256_HEX = r"^[0-9a-f]{64}$"
Sha256Hex = Annotated[str, Field(pattern=SHA256_HEX)]
"""A SHA-256 digest in lower-case hex."""

# ---- choices (as the document spells them; common.keys holds the config's enums) -------------

Role = Literal["internal", "external"]
"""Of an evaluation: whether the site's data trained the model (server.designs)."""
EvalSplit = Literal["test", "all"]
"""Which of a site's cases were scored (common.keys.Split.TEST or common.keys.EVAL_ALL)."""

# ---- descriptions shared by several rows ------------------------------------------------------

SITE = "Site name."
MODEL = "Model evaluated."
ROLE = "internal: the site's data trained the model; external: it did not."
SPLIT = "Which cases were scored: the site's test split, or all its cases."
N_EVALUATED = "Number of cases evaluated."
ADAPTATION = (
    "How the site adapted the model before scoring it: 'none' (as received), "
    "'own-local-layers' (a training site with the layers a hook kept local), the test-time "
    "hooks it ran ('bn-adapt', 'tent', joined by '+'), or forced statistics re-estimation at "
    "a site that never trained a model whose normalisation layers were kept local."
)
