"""One line for everything wrong in a validated config (recipe, serve config, taxonomy,
evaluation spec, corpus manifest, a row of a shipped JSONL file): every error of a pydantic
validation, each naming the dotted key, with a did-you-mean for a misspelt key and the offending
value (cut short)."""

from __future__ import annotations

import difflib
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lexlora.errors import LexloraError

M = TypeVar("M", bound=BaseModel)

SHOWN_CHARS = 80  # how much of a rejected value an error message echoes


def describe(exc: ValidationError, model: type[BaseModel], noun: str = "field") -> str:
    """Every error of ``exc`` (raised validating ``model``) as ``"; "``-joined phrases:
    ``unknown key 'a.b' (did you mean 'c'?)``, ``missing required NOUN 'a'``,
    ``NOUN 'a.b': what was expected (got VALUE)``, or a whole-model check's own message."""
    messages = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        dotted = ".".join(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            messages.append(f"invalid JSON ({err.get('ctx', {}).get('error', 'malformed')})")
        elif err["type"] == "extra_forbidden":
            known = _fields_at(model, err["loc"][:-1])
            match = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            messages.append(f"unknown key '{dotted}'{hint}")
        elif err["type"] == "missing":
            messages.append(f"missing required {noun} '{dotted}'")
        elif not dotted:  # a check across keys names them itself
            messages.append(msg)
        else:
            got = err.get("input")
            echo = "" if isinstance(got, dict | list) else f" (got {shown(got)})"
            messages.append(f"{noun} '{dotted}': {msg[:1].lower() + msg[1:]}{echo}")
    return "; ".join(messages)


def validated(model: type[M], raw: object, where: str, noun: str = "field") -> M:
    """``model`` validated from ``raw`` (a mapping, or JSON text), or one LexloraError:
    ``WHERE: every problem`` (:func:`describe`)."""
    try:
        if isinstance(raw, str | bytes):
            return model.model_validate_json(raw)
        return model.model_validate(raw)
    except ValidationError as exc:
        raise LexloraError(f"{where}: {describe(exc, model, noun)}") from None


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 1.7 MB list is not echoed)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model that ``loc`` leads to inside ``model``: through nested models,
    ``Optional``, lists and dicts (a key of ``dict[str, Model]``, such as a builder's or a
    tenant's name, stays on that model)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        field = current.model_fields.get(str(part))
        if field is not None:
            current = _model_in(field.annotation)
    return list(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
