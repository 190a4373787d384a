"""The YAML the generated deploy files need, written without a YAML library at runtime.

Rule files and provisioning files are mappings, lists, strings and numbers, so a small block
-style writer covers them: strings that could be read as something else (numbers, booleans,
``null``, anything with YAML syntax in it) are double-quoted, with escapes for whatever YAML
does not allow as is; multi-line strings become literal blocks so PromQL stays readable.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import ConfigurationError, InvalidArgumentError

# Plain scalars: a first character that starts no YAML syntax, then printable ASCII without the
# ": " and " #" that would end the scalar (":" and "#" are refused outright, to keep it simple).
_PLAIN = re.compile(r"[A-Za-z_/$(][\x20-\x7e]*")
_NOT_PLAIN = re.compile(r"[:#]")
# Prometheus durations ("5m") read as strings in every YAML version, so they stay unquoted.
_DURATION = re.compile(r"[0-9]+(ms|s|m|h|d|w|y)")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}
_INDENT = "  "


def dumps(value: Any, header: str = "") -> str:
    """``value`` as a YAML document; ``header`` lines go first as ``#`` comments."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines.extend(_block(value, 0))
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"value={value!r}: expected a finite number")
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        # YAML 1.1 reads a float only with a dot in it: 1e+20 would come back as a string.
        return f"{mantissa}.0{e}{exponent}" if e and "." not in mantissa else text
    if isinstance(value, str):
        if _DURATION.fullmatch(value):
            return value
        if _PLAIN.fullmatch(value) and not _NOT_PLAIN.search(value) and value.lower() not in _RESERVED and value == value.strip():
            return value
        return _quote(value)
    raise InvalidArgumentError(f"value={value!r}: expected a mapping, list, string, number, bool or None")


def _printable(char: str) -> bool:
    """Whether YAML allows ``char`` as is inside a scalar (other line breaks and the BOM excluded)."""
    code = ord(char)
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or (0xE000 <= code <= 0xFFFD and code not in (0x2028, 0x2029, 0xFEFF))
        or code >= 0x10000
    )


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t"}


def _quote(value: str) -> str:
    """A double-quoted scalar: anything not printable as is goes in as an escape."""
    parts = []
    for char in value:
        if char in _ESCAPES:
            parts.append(_ESCAPES[char])
        elif _printable(char):
            parts.append(char)
        elif ord(char) <= 0xFF:
            parts.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(f"\\U{ord(char):08x}")
    return '"' + "".join(parts) + '"'


def _is_literal_block(value: Any) -> bool:
    # A leading space on the first line would need an indentation indicator; quote those instead.
    return (
        isinstance(value, str)
        and "\n" in value.rstrip("\n")
        and not value[:1].isspace()
        and all(char in "\n\t" or _printable(char) for char in value)
    )


def _literal(value: str, depth: int) -> list[str]:
    chomp = "|" if value.endswith("\n") and not value.endswith("\n\n") else "|-"
    if value.endswith("\n\n"):
        # Keep-chomping is rare enough in generated files to quote instead.
        return [_quote(value)]
    body = value[:-1] if chomp == "|" else value
    prefix = _INDENT * depth
    return [chomp, *(f"{prefix}{line}" if line else "" for line in body.split("\n"))]


def _entry(prefix: str, value: Any, depth: int) -> list[str]:
    """``prefix`` (``key:`` or ``-``) followed by ``value`` nested at ``depth``."""
    if isinstance(value, dict) and value:
        return [prefix, *_block(value, depth)]
    if isinstance(value, list) and value:
        return [prefix, *_block(value, depth)]
    if isinstance(value, dict):
        return [f"{prefix} {{}}"]
    if isinstance(value, list):
        return [f"{prefix} []"]
    if _is_literal_block(value):
        first, *rest = _literal(value, depth)
        return [f"{prefix} {first}", *rest]
    return [f"{prefix} {_scalar(value)}"]


def _block(value: Any, depth: int) -> list[str]:
    prefix = _INDENT * depth
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(f"key={key!r}: expected a string")
            lines.extend(_entry(f"{prefix}{_scalar(key)}:", item, depth + 1))
        return lines or [f"{prefix}{{}}"]
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                # The first key shares the dash's line; the rest align under it.
                nested = _block(item, depth + 1)
                lines.append(f"{prefix}- {nested[0][len(prefix) + len(_INDENT):]}")
                lines.extend(nested[1:])
            else:
                lines.extend(_entry(f"{prefix}-", item, depth + 1))
        return lines or [f"{prefix}[]"]
    return [prefix + _scalar(value)]
