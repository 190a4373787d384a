"""Web frameworks as the instrumentor meets them: Flask, Starlette/FastAPI and Django.

:mod:`.views` makes a profile target that is a view take effect in the framework's route
table; :mod:`.server_spans` measures every request (``REER_MEMORY_SERVER_SPANS``). Neither
imports a framework: each acts when the framework's own modules are imported.
"""
