"""LazyModelLoader: a model loaded on first use, unloadable on demand or under memory pressure.

The first attribute access or call loads the model exactly once, even when many threads get
there together; the load is profiled (a ``model_load`` span) and every access counts as a use
for the profiler's ``idle`` advice. :meth:`LazyModelLoader.unload` drops the reference,
collects and trims, and measures the RSS freed (nothing, if the program still holds the model).
Under memory pressure one cleanup hook, holding loaders weakly, unloads loaded models (those idle
for ``idle_timeout_s``, or all when it is None) and skips a model whose load is in progress. The
loader's own names take precedence over the model's attributes (``lazy_model.load().name``
reaches those).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .. import _names as names
from .._runtime import RUNTIME
from ..config import checked_number
from ..errors import InvalidArgumentError
from ..monitoring.cleanup import register_cleanup_hook, release_memory
from .profiler import MemoryProfiler, get_memory_profiler, run_profiled

#: The name of the cleanup hook that unloads idle lazy models.
CLEANUP_HOOK_NAME = "reer.lazy_models"

_UNLOADED = object()
_OWN_ATTRIBUTES = frozenset(
    {
        "_load_model_func",
        "_model_path",
        "_args",
        "_kwargs",
        "_model",
        "_lock",
        "_model_name",
        "_idle_timeout_s",
        "_profiler",
        "_last_used_s",
        "_last_unload_freed_bytes",
    }
)

# The live instances the gauges describe, held weakly: not process state a reset could forget,
# but objects the user's code made and still holds.
_loaders: weakref.WeakSet[LazyModelLoader] = weakref.WeakSet()


class LazyModelLoader:
    """A model proxy that loads on first use; see the module docs."""

    def __init__(
        self,
        load_model_func: Callable[..., Any],
        model_path: Any = None,
        *args: Any,
        model_name: str | None = None,
        idle_timeout_s: float | None = None,
        profiler: MemoryProfiler | None = None,
        **kwargs: Any,
    ) -> None:
        if not callable(load_model_func):
            raise InvalidArgumentError(f"LazyModelLoader(load_model_func={load_model_func!r}): expected a callable returning the model")
        if idle_timeout_s is not None:
            checked_number(
                idle_timeout_s, 0, where="LazyModelLoader", name="idle_timeout_s",
                expected="expected seconds >= 0 (math.inf: never unload on cleanup) or None",
            )
        if model_name is None:
            model_name = str(model_path) if model_path is not None else getattr(load_model_func, "__qualname__", repr(load_model_func))
        elif not isinstance(model_name, str) or not model_name:
            raise InvalidArgumentError(f"LazyModelLoader(model_name={model_name!r}): expected a non-empty string or None")
        if profiler is not None and not isinstance(profiler, MemoryProfiler):
            raise InvalidArgumentError(f"LazyModelLoader(profiler={profiler!r}): expected a MemoryProfiler or None")
        self._load_model_func = load_model_func
        self._model_path = model_path
        self._args = args
        self._kwargs = kwargs
        self._model: Any = _UNLOADED
        self._lock = threading.Lock()
        self._model_name = model_name
        self._idle_timeout_s = idle_timeout_s
        self._profiler = profiler if profiler is not None else get_memory_profiler()
        self._last_used_s = time.monotonic()
        self._last_unload_freed_bytes: int | None = None
        _loaders.add(self)
        RUNTIME.after_fork_call(self)
        register_cleanup_hook(CLEANUP_HOOK_NAME, unload_idle_models)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it when the process forked

    # --- state ---------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def is_loaded(self) -> bool:
        return self._model is not _UNLOADED

    @property
    def idle_timeout_s(self) -> float | None:
        return self._idle_timeout_s

    @property
    def idle_s(self) -> float:
        """Seconds since the model was last loaded or used."""
        return time.monotonic() - self._last_used_s

    @property
    def last_unload_freed_bytes(self) -> int | None:
        """RSS the last :meth:`unload` released, as measured; None before any unload."""
        return self._last_unload_freed_bytes

    # --- loading -------------------------------------------------------------------------------

    def _call_loader(self) -> Any:
        if self._model_path is not None:
            return self._load_model_func(self._model_path, *self._args, **self._kwargs)
        return self._load_model_func(*self._args, **self._kwargs)

    def load(self) -> Any:
        """The model, loading it first if needed (one load, however many threads ask at once)."""
        model = self._model
        if model is _UNLOADED:
            with self._lock:
                model = self._model
                if model is _UNLOADED:
                    model = self._profiler.profile_model_loading(self._model_name, self._call_loader)
                    self._profiler.track_usage(self._model_name)
                    self._model = model
        now = self._last_used_s = time.monotonic()
        self._profiler.record_model_use(self._model_name, now)
        return model

    def unload(self, collect: bool = True) -> int:
        """Drop the model; with ``collect``, also collect garbage and trim the heap. Returns RSS freed (bytes).

        Safe to call when not loaded (returns 0). The next access loads the model again.
        """
        with self._lock:
            return self._unload_locked(collect)

    def _unload_locked(self, collect: bool) -> int:
        if self._model is _UNLOADED:
            return 0

        def drop() -> None:
            self._model = _UNLOADED

        released, _ = run_profiled(
            names.OPERATION_MODEL_UNLOAD, {names.ATTR_MODEL_NAME: self._model_name}, lambda: release_memory(drop, collect=collect, trim=collect)
        )
        freed = released.freed_bytes
        self._last_unload_freed_bytes = freed
        self._profiler.record_model_unload(self._model_name, freed)
        return freed

    def _unload_if_idle(self, now_s: float) -> bool:
        """For the cleanup hook: unload if idle long enough and no load is in progress."""
        if self._model is _UNLOADED:
            return False
        timeout = self._idle_timeout_s
        if timeout is not None and now_s - self._last_used_s < timeout:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            # The cleanup that runs this hook collects and trims right after.
            self._unload_locked(collect=False)
        finally:
            self._lock.release()
        return True

    # --- proxying ------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called for names the loader itself lacks. Dunders (copy, pickle, ... probes) and
        # the loader's own fields (missing only while __init__ runs) never trigger a load.
        if (name.startswith("__") and name.endswith("__")) or name in _OWN_ATTRIBUTES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.load(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __dir__(self) -> list[str]:
        own = set(super().__dir__())
        model = self._model
        if model is not _UNLOADED:
            own |= set(dir(model))
        return sorted(own)

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"<LazyModelLoader {self._model_name!r} ({state})>"


def unload_idle_models() -> list[str]:
    """Unload every lazy model due for it (see the module docs); the names unloaded.

    This is the cleanup hook :func:`reer_otel_memory.run_cleanup` calls.
    """
    now = time.monotonic()
    unloaded = []
    for loader in list(_loaders):
        if loader._unload_if_idle(now):
            unloaded.append(loader._model_name)
    return unloaded
