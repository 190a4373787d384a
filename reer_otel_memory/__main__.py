"""``python -m reer_otel_memory``: the ``reer-otel-memory`` command."""

from .cli import main

raise SystemExit(main())
