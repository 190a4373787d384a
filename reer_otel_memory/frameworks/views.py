"""Profile targets that are views: the route tables of Flask, Starlette/FastAPI and Django hold them too.

``@app.route`` and ``@app.get`` keep the function they decorate in the framework's route table,
so wrapping the module attribute alone changes nothing a request calls. :class:`ViewTables`
also puts the wrapper in every route table slot that holds the original function: in routes
registered while targets are watched (the frameworks' route constructors are hooked when their
modules are imported) and in the apps, routers and ``urlpatterns`` of the target's own module.
A slot holding another object for the same view (a decorator above the route decorator) cannot
be profiled through the target; that is logged once. ``uninstall`` puts every original back where
the wrapper still is, and takes the hooks out.
"""

from __future__ import annotations

import logging
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import wrapt

logger = logging.getLogger(__name__)

_LOG_PREFIX = "reer_otel_memory instrumentation"


@dataclass
class _View:
    """A wrapped target that is a plain function: where to look for it, what to put there."""

    spec: str
    original: Callable[..., Any]
    wrapper: Callable[..., Any]


@dataclass
class _Patch:
    """One route-table slot changed: undo puts ``original`` back while ``wrapper`` is still there."""

    undo: Callable[[], None]


def _same_view(candidate: object, original: Callable[..., Any]) -> bool:
    """A different object standing for the same function (``functools.wraps`` copies both names)."""
    return (
        candidate is not original
        and getattr(candidate, "__module__", None) == getattr(original, "__module__", None)
        and getattr(candidate, "__qualname__", None) == getattr(original, "__qualname__", None)
    )


def _unwrap_partials(endpoint: object) -> object:
    import functools

    while isinstance(endpoint, functools.partial):
        endpoint = endpoint.func
    return endpoint


class ViewTables:
    """Route-table slots of the watched targets; one per instrumentor."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._active = False
        self._views: list[_View] = []
        self._registered: list[weakref.ref[Any]] = []  # apps, routes and URL patterns seen
        self._patches: list[_Patch] = []
        self._class_hooks: list[tuple[type, str, object]] = []
        self._elsewhere_logged: set[str] = set()
        self._hooks_registered = False

    # --- lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        """Hook route registration of each framework when (or if) its module is imported."""
        with self._lock:
            self._active = True
            if self._hooks_registered:
                return
            self._hooks_registered = True
        for module_name, hook in (
            ("flask.app", self._hook_flask),
            ("starlette.routing", self._hook_starlette),
            ("fastapi.routing", self._hook_fastapi),
            ("django.urls.resolvers", self._hook_django),
        ):
            wrapt.register_post_import_hook(self._guarded(hook), module_name)

    def uninstall(self) -> None:
        """Put back every original still replaced by its wrapper, and take the hooks out."""
        with self._lock:
            self._active = False
            patches, self._patches = self._patches, []
            hooks, self._class_hooks = self._class_hooks, []
            # The next install() hooks again: the instrumentor is a singleton, instrumented anew.
            self._hooks_registered = False
            self._views.clear()
            self._registered.clear()
            self._elsewhere_logged.clear()
        for patch in reversed(patches):
            try:
                patch.undo()
            except Exception as exc:
                logger.error("%s: putting a view back into its route table failed: %r", _LOG_PREFIX, exc)
        for owner, attribute, handle in reversed(hooks):
            try:
                wrapt.unwrap_object(owner, attribute, handle, missing_ok=True)
            except Exception as exc:
                logger.error("%s: removing the route registration hook %s.%s failed: %r", _LOG_PREFIX, owner.__name__, attribute, exc)

    def _guarded(self, hook: Callable[[types.ModuleType], None]) -> Callable[[types.ModuleType], None]:
        def run(module: types.ModuleType) -> None:
            # Runs inside the service's import statement: never raises.
            with self._lock:
                if not self._active:
                    return
            try:
                hook(module)
            except Exception as exc:
                logger.error("%s: hooking route registration in %s failed; views registered there are not profiled: %r", _LOG_PREFIX, module.__name__, exc)

        return run

    # --- a target was wrapped ------------------------------------------------------------------

    def view_wrapped(self, spec: str, module: types.ModuleType, original: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
        """``module``'s attribute ``original`` is now ``wrapper``: put it in the route tables too."""
        view = _View(spec, original, wrapper)
        with self._lock:
            if not self._active:
                return
            self._views.append(view)
            for found in self._framework_objects(vars(module).values()):
                self._remember(found)
            for registered in self._live_registered():
                self._patch(registered)

    # --- registrations -------------------------------------------------------------------------

    def _remember(self, registered: object) -> None:
        if any(ref() is registered for ref in self._registered):
            return
        self._registered = [ref for ref in self._registered if ref() is not None]
        try:
            self._registered.append(weakref.ref(registered))
        except TypeError:
            pass

    def _live_registered(self) -> Iterator[Any]:
        for ref in list(self._registered):
            registered = ref()
            if registered is not None:
                yield registered

    def _registered_now(self, registered: object) -> None:
        """A hook saw ``registered`` (app, route or pattern) get a view: remember it, patch it."""
        with self._lock:
            if not self._active:
                return
            self._remember(registered)
            if self._views:
                self._patch(registered)

    def _framework_objects(self, values: Iterator[Any] | Any) -> Iterator[Any]:
        """Flask apps, Starlette/FastAPI routes (of apps and routers) and Django URL patterns among ``values``."""
        flask_app = getattr(sys.modules.get("flask.app"), "Flask", None)
        routing = sys.modules.get("starlette.routing")
        starlette_app = getattr(sys.modules.get("starlette.applications"), "Starlette", None)
        route_type = getattr(routing, "Route", None)
        router_type = getattr(routing, "Router", None)
        resolvers = sys.modules.get("django.urls.resolvers")
        pattern_type = getattr(resolvers, "URLPattern", None)
        for value in list(values):
            if flask_app is not None and isinstance(value, flask_app):
                yield value
            elif starlette_app is not None and isinstance(value, starlette_app):
                yield from (route for route in value.router.routes if route_type is not None and isinstance(route, route_type))
            elif router_type is not None and isinstance(value, router_type):
                yield from (route for route in value.routes if route_type is not None and isinstance(route, route_type))
            elif pattern_type is not None and isinstance(value, list):
                yield from (pattern for pattern in value if isinstance(pattern, pattern_type))

    # --- patching ------------------------------------------------------------------------------

    def _patch(self, registered: Any) -> None:
        """Put each watched view's wrapper in ``registered``'s slots that hold the original."""
        view_functions = getattr(registered, "view_functions", None)
        if isinstance(view_functions, dict):  # a Flask app
            for endpoint, function in list(view_functions.items()):
                for view in self._views:
                    if function is view.original:
                        self._patch_flask(registered, endpoint, view)
                    elif function is not view.wrapper:
                        self._check_elsewhere(view, function, f"Flask app {getattr(registered, 'name', '?')!r}, endpoint {endpoint!r}")
            return
        if hasattr(registered, "endpoint"):  # a Starlette or FastAPI route
            endpoint = registered.endpoint
            for view in self._views:
                if endpoint is view.original:
                    self._patch_route(registered, view)
                elif endpoint is not view.wrapper:
                    self._check_elsewhere(view, endpoint, f"route {getattr(registered, 'path', '?')!r}")
            return
        if hasattr(registered, "callback"):  # a Django URL pattern
            callback = registered.callback
            for view in self._views:
                if callback is view.original:
                    self._patch_attribute(registered, "callback", view)
                elif callback is not view.wrapper:
                    self._check_elsewhere(view, callback, f"URL pattern {str(getattr(registered, 'pattern', '?'))!r}")

    def _check_elsewhere(self, view: _View, found: object, where: str) -> None:
        if view.spec in self._elsewhere_logged or not _same_view(found, view.original):
            return
        self._elsewhere_logged.add(view.spec)
        logger.error(
            "%s: target %r is registered elsewhere: %s holds %r, not the module attribute the target names "
            "(a decorator applied above the route decorator?); requests through it are not profiled",
            _LOG_PREFIX, view.spec, where, found,
        )

    def _patch_flask(self, app: Any, endpoint: str, view: _View) -> None:
        table = app.view_functions
        table[endpoint] = view.wrapper

        def undo() -> None:
            if table.get(endpoint) is view.wrapper:
                table[endpoint] = view.original

        self._patches.append(_Patch(undo))

    def _patch_attribute(self, owner: Any, attribute: str, view: _View) -> None:
        setattr(owner, attribute, view.wrapper)

        def undo() -> None:
            if getattr(owner, attribute, None) is view.wrapper:
                setattr(owner, attribute, view.original)

        self._patches.append(_Patch(undo))

    def _patch_route(self, route: Any, view: _View) -> None:
        dependant = getattr(route, "dependant", None)
        if dependant is not None:  # FastAPI: the handler calls dependant.call on every request
            if getattr(dependant, "call", None) is view.original:
                self._patch_attribute(route, "endpoint", view)
                self._patch_attribute(dependant, "call", view)
                return
            self._check_elsewhere(view, getattr(dependant, "call", None), f"route {getattr(route, 'path', '?')!r}")
            return
        # Starlette: route.app = request_response(endpoint), a closure over the original.
        routing = sys.modules.get("starlette.routing")
        request_response = getattr(routing, "request_response", None)
        app = getattr(route, "app", None)
        handler = _unwrap_partials(view.original)
        if (
            request_response is None
            or not isinstance(handler, (types.FunctionType, types.MethodType))
            or getattr(app, "__code__", None) is not getattr(request_response(view.original), "__code__", False)
            or not any(_holds(_cell(cell), view.original) for cell in (getattr(app, "__closure__", None) or ()))
        ):
            if view.spec not in self._elsewhere_logged:
                self._elsewhere_logged.add(view.spec)
                logger.error(
                    "%s: target %r is a Starlette route endpoint whose route wraps it in more than request_response "
                    "(route middleware?); requests through route %r are not profiled",
                    _LOG_PREFIX, view.spec, getattr(route, "path", "?"),
                )
            return
        previous_app = app
        route.endpoint = view.wrapper
        route.app = request_response(view.wrapper)

        def undo() -> None:
            if getattr(route, "endpoint", None) is view.wrapper:
                route.endpoint = view.original
                route.app = previous_app

        self._patches.append(_Patch(undo))

    # --- framework hooks -----------------------------------------------------------------------

    def _hook_method(self, owner: type, attribute: str, after: Callable[[Any], None]) -> None:
        """Wrap ``owner.attribute`` so that ``after(self)`` runs once the call has returned."""

        def hook(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            result = wrapped(*args, **kwargs)
            try:
                after(instance)
            except Exception as exc:  # the registration itself succeeded: never undo it
                logger.error("%s: checking a registered view for profile targets failed: %r", _LOG_PREFIX, exc)
            return result

        with self._lock:
            # A post-import hook of an earlier install() may still be pending beside this one's.
            if any(hooked_owner is owner and hooked_attribute == attribute for hooked_owner, hooked_attribute, _ in self._class_hooks):
                return
            handle = wrapt.wrap_function_wrapper(owner, attribute, hook)
            self._class_hooks.append((owner, attribute, handle))

    def _hook_flask(self, module: types.ModuleType) -> None:
        app_type = getattr(sys.modules.get("flask.sansio.app"), "App", None) or module.Flask
        self._hook_method(app_type, "add_url_rule", self._registered_now)

    def _hook_starlette(self, module: types.ModuleType) -> None:
        self._hook_method(module.Route, "__init__", self._registered_now)

    def _hook_fastapi(self, module: types.ModuleType) -> None:
        if "__init__" in vars(module.APIRoute):  # it builds its own state, not through Route.__init__
            self._hook_method(module.APIRoute, "__init__", self._registered_now)

    def _hook_django(self, module: types.ModuleType) -> None:
        self._hook_method(module.URLPattern, "__init__", self._registered_now)


def _cell(cell: Any) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _holds(content: object, original: object) -> bool:
    """``content`` is ``original``, or ``request_response``'s ``partial(run_in_threadpool, original)``."""
    import functools

    return content is original or (isinstance(content, functools.partial) and any(arg is original for arg in content.args))
