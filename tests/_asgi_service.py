"""An ASGI service for tests/test_service_verdicts_asgi.py: a Starlette app served by uvicorn.

Requests overlap as tasks of one asyncio event loop, in one thread. Two endpoints await profiled
coroutines: ``/predict`` (numpy temporaries, allocated, held across an ``await`` so that other
requests run meanwhile, then freed) and ``/remember`` (keeps 64 KiB a call for the life of the
process). ``/report`` returns what the package concluded (``_service_report``). Explanations
follow ``REER_MEMORY_EXPLAIN`` and ``REER_MEMORY_EXPLAIN_SECONDS``, which the test sets.
"""

from __future__ import annotations

import asyncio

import numpy as np
from _service_report import KEEP_BYTES, report
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from reer_otel_memory import memory_profile

rng = np.random.default_rng(0)
kept: list[bytes] = []


@memory_profile(operation_name="predict")
async def predict() -> float:
    # About 240 KiB of temporaries, held while other requests run, and freed in the call.
    features = rng.random(30_000)
    scaled = features * 2.0 + 1.0
    await asyncio.sleep(0.001)
    score = float(scaled.sum())
    del features, scaled
    return score


@memory_profile(operation_name="remember")
async def remember() -> int:
    kept.append(b"x" * KEEP_BYTES)  # the leak: kept for the life of the process
    return len(kept)


async def predict_view(request: Request) -> JSONResponse:
    return JSONResponse({"score": await predict()})


async def remember_view(request: Request) -> JSONResponse:
    return JSONResponse({"kept": await remember()})


async def report_view(request: Request) -> JSONResponse:
    # A coroutine, so that the report runs on the event loop too, not in Starlette's thread pool.
    return JSONResponse(report(len(kept)))


app = Starlette(
    routes=[
        Route("/predict", predict_view, methods=["GET"]),
        Route("/remember", remember_view, methods=["GET"]),
        Route("/report", report_view, methods=["GET"]),
    ]
)
