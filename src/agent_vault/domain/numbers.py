"""Numbers in files people write (project config, settings.toml, provider options): lax pydantic
turns `true` into 1, which in such a file is always a mistake, so booleans are refused."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "expected a number, got boolean")
    return value


#: a number (int or float), never a boolean
Number = Annotated[float, BeforeValidator(_reject_bool)]
#: a whole number, never a boolean
WholeNumber = Annotated[int, BeforeValidator(_reject_bool)]
