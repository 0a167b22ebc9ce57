"""The base of every schema a user's file is validated against: pydantic's lax mode, less its type guesses.

Pydantic's lax mode turns ``true`` into 1, ``'64'`` into 64 and ``1`` or ``'yes'`` into True. In a suite
those are typos, not intents: ``batch_size: true`` trained with batches of one, ``minibatch_std: 1``
switched a layer on. ``Checked`` refuses a boolean where a number is expected, text where a number or a
boolean is expected and a number where a boolean is expected, at the top of a field and in the items of a
list or tuple field, before pydantic converts anything. Everything else stays lax on purpose: ``steps:
10.0`` is still 10 steps (a whole float is the number it says), an int is a float and a list is a tuple.

Pydantic's strict mode does none of this selectively (it also refuses ``10.0`` for an int, a list for a
tuple and text for an enum), hence a ``field_validator('*')`` here, inherited by every subclass.
"""
from __future__ import annotations

import enum
import math
import types
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationInfo, field_validator

_NUMBER, _BOOL, _TEXT, _OTHER = "number", "bool", "text", "other"


def _kinds(annotation: Any) -> frozenset[str]:
    """What kinds of scalar an annotation accepts; ``other`` for anything this module does not judge."""
    try:
        return _cached_kinds(annotation)
    except TypeError:  # an annotation with unhashable metadata (Annotated[int, {...}]) is worked out each time
        return _kinds_of(annotation)


def _kinds_of(annotation: Any) -> frozenset[str]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return frozenset().union(*(_kinds(a) for a in get_args(annotation)))
    if origin is Literal:
        return frozenset(_TEXT if isinstance(v, str) else _BOOL if isinstance(v, bool) else _NUMBER
                         if isinstance(v, (int, float)) else _OTHER for v in get_args(annotation))
    if annotation is type(None):
        return frozenset()
    if annotation is bool:
        return frozenset({_BOOL})
    if annotation in (int, float):
        return frozenset({_NUMBER})
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return frozenset({_TEXT})
    if origin in (list, tuple, set, frozenset):
        return frozenset({"sequence"})
    return frozenset({_OTHER})


_cached_kinds = lru_cache(maxsize=None)(_kinds_of)


def _items(annotation: Any, n: int) -> list[Any] | None:
    """The annotations of the ``n`` items of a list/tuple value of a field, or None where not one such type."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _items(get_args(annotation)[0], n)
    if origin is Union or origin is types.UnionType:
        seqs = [a for a in get_args(annotation) if _kinds(a) == frozenset({"sequence"})]
        return _items(seqs[0], n) if len(seqs) == 1 else None
    args = get_args(annotation)
    if origin in (list, set, frozenset) and len(args) == 1:
        return [args[0]] * n
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return [args[0]] * n
        return list(args) if len(args) == n else None  # a wrong length: pydantic says so
    return None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as the YAML file says it
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + "..."


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` should not be coerced to ``annotation`` (None when it may go on to pydantic)."""
    if isinstance(value, (list, tuple)):
        items = _items(annotation, len(value))
        for i, (v, a) in enumerate(zip(value, items or ())):
            problem = type_problem(v, a)
            if problem:
                return f"item {i}: {problem}"
        return None
    kinds = _kinds(annotation)
    if _OTHER in kinds or not kinds:
        return None
    if isinstance(value, bool):
        if _BOOL not in kinds and _NUMBER in kinds:
            return f"expected a number, got the boolean {_shown(value)}"
    elif isinstance(value, (int, float)):
        if _NUMBER not in kinds and _BOOL in kinds:
            return f"expected true or false, got the number {_shown(value)}"
    elif isinstance(value, str) and _TEXT not in kinds:  # only text pydantic would convert; it words the rest
        if _NUMBER in kinds and _numeral(value):
            return f"expected a number, got the text {_shown(value)} (write it without quotes)"
        if _BOOL in kinds and value.strip().lower() in _BOOL_WORDS:
            return f"expected true or false, got the text {_shown(value)} (write true or false without quotes)"
    return None


_BOOL_WORDS = {"0", "1", "off", "on", "f", "t", "false", "true", "n", "y", "no", "yes"}  # pydantic's lax booleans


def _numeral(text: str) -> bool:
    """A finite number written as text (text such as 'inf' is refused for what it means, by the schema)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _refuse_type_guess(cls: type, value: Any, info: ValidationInfo) -> Any:
    field = getattr(cls, "__pydantic_fields__", {}).get(info.field_name or "")  # a model's or a dataclass's
    if field is not None:
        problem = type_problem(value, field.annotation)
        if problem:
            raise ValueError(problem)
    return value


def no_type_guessing(*fields: str) -> Any:
    """The validator of ``fields`` (default all), for a pydantic dataclass: ``_no_type_guessing =
    no_type_guessing('low', 'high')`` in its body. Pydantic allows no such validator on a union's
    discriminator field."""
    return field_validator(*(fields or ("*",)), mode="before")(classmethod(_refuse_type_guess))


class Checked(BaseModel):
    """A pydantic model that refuses the type guesses above in every field, its subclasses' too."""

    _no_type_guessing = no_type_guessing()
