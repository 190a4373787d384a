"""Libraries the instrumentor needs installed: none, it instruments the process itself."""

_instruments: tuple[str, ...] = ()
