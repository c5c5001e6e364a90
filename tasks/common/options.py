"""Command-line options of the flows' ``main()``: JSON values and ``NAME=VALUE`` pairs.

In:  the option's name (as the user typed it, e.g. ``--filters``) and its text.
Out: the parsed value, or an :class:`~tasks.common.errors.InputError` that names the option
     (and the entry, for ``NAME=VALUE`` options) and says where the text is wrong.

- :func:`json_option`: a JSON option, e.g. ``--filters '{"clip_score": 0.3}'``.
- :func:`parse_overrides`: repeated ``NAME=VALUE`` entries (``--override``, ``--subset``); VALUE is
  JSON when it looks like JSON (a number, ``-``, ``[``, ``{``, ``"``, ``true``, ``false``,
  ``null``), else a plain string: ``--subset balanced=[...]``, ``--subset clip=datacomp:clip_l14_30``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from tasks.common.errors import InputError

_JSON_WORDS = ("true", "false", "null")


def check_known_settings(where: str, values: Iterable[str], known: Iterable[str]) -> None:
    """An InputError naming ``where``, the unknown settings among ``values`` and the ``known`` ones, if any."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")


def json_option(name: str, text: str) -> Any:
    """``text`` parsed as JSON; an InputError naming option ``name`` and the position otherwise."""
    if not text.strip():
        raise InputError(f"{name}: empty value, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON at line {exc.lineno} column {exc.colno} (character {exc.pos}): "
                         f"{exc.msg}; got {text!r}") from None


def parse_overrides(items: Iterable[str], option: str = "--override") -> dict[str, Any]:
    """``{NAME: value}`` from entries ``NAME=VALUE``: JSON when VALUE looks like JSON, else the string."""
    overrides = {}
    for name, value in _pairs(option, items):
        looks_json = value[:1].isdigit() or value[:1] in '-[{"' or value in _JSON_WORDS
        overrides[name] = json_option(f"{option} {name}", value) if looks_json else value
    return overrides


def _pairs(option: str, items: Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise InputError(f"{option} {item!r}: expected NAME=VALUE")
        if not value.strip():
            raise InputError(f"{option} {name}: empty value (expected {name}=VALUE)")
        pairs.append((name, value))
    return pairs
