"""The deploy files as YAML, written by PyYAML in the style the shipped files use.

Block style with sequences indented under their key, keys in the order given, no line wrapping
and no anchors; multi-line strings as literal blocks so PromQL stays readable. Strings are plain
only when they look like a word or path (or a Prometheus duration such as ``5m``) and
double-quoted otherwise, so that no reader takes them for a number, a boolean, ``null`` or YAML
syntax.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from ..errors import ConfigurationError, InvalidArgumentError

_PLAIN = re.compile(r"[A-Za-z_/$(][\x20-\x7e]*")
_NOT_PLAIN = re.compile(r"[:#]")
_DURATION = re.compile(r"[0-9]+(ms|s|m|h|d|w|y)")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # "- item" indented under its key

    def choose_scalar_style(self) -> str:
        style = super().choose_scalar_style()
        return '"' if style == "'" else style

    def represent_data(self, data: Any) -> yaml.Node:
        """Only the types deploy files hold (subclasses as their base type); anything else is refused."""
        if data is None:
            return self.represent_none(data)
        if isinstance(data, bool):
            return self.represent_bool(data)
        if isinstance(data, int):
            return self.represent_int(data)
        if isinstance(data, float):
            if not math.isfinite(data):
                raise ConfigurationError(f"value={data!r}: expected a finite number")
            return self.represent_float(data)
        if isinstance(data, str):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style=_style(data))
        if isinstance(data, list):
            return self.represent_list(data)
        if isinstance(data, dict):
            for key in data:
                if not isinstance(key, str):
                    raise InvalidArgumentError(f"key={key!r}: expected a string")
            return self.represent_dict(data)
        raise InvalidArgumentError(f"value={data!r}: expected a mapping, list, string, number, bool or None")


#: Line breaks other than ``\n``: a literal block would read them back as ``\n``.
_OTHER_BREAKS = re.compile("[\r\x85\u2028\u2029]")


def _style(text: str) -> str | None:
    if "\n" in text.rstrip("\n") and not _OTHER_BREAKS.search(text):
        return "|"  # the emitter quotes instead where a literal block cannot hold the text
    if _DURATION.fullmatch(text):
        return None
    if _PLAIN.fullmatch(text) and not _NOT_PLAIN.search(text) and text.lower() not in _RESERVED and text == text.strip():
        return None
    return '"'


def dumps(value: Any, header: str = "") -> str:
    """``value`` as a YAML document; ``header`` lines go first as ``#`` comments."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    text = yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=2**31, default_flow_style=False)
    return comments + text
