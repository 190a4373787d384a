"""A Flask service for tests/test_service_verdicts.py: served by gunicorn's threaded worker.

Two views call profiled operations: ``/predict`` (numpy temporaries, allocated and freed in the
call) and ``/remember`` (keeps 64 KiB a call for the life of the process). ``/report`` returns
what the package concluded (``_service_report``). Explanations follow ``REER_MEMORY_EXPLAIN`` and
``REER_MEMORY_EXPLAIN_SECONDS``, which the test sets for the server.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from _service_report import KEEP_BYTES, report
from flask import Flask, jsonify

from reer_otel_memory import memory_profile

rng = np.random.default_rng(0)
kept: list[bytes] = []

app = Flask(__name__)


@memory_profile(operation_name="predict")
def predict() -> float:
    # About 240 KiB of temporaries, allocated and freed in the call.
    features = rng.random(30_000)
    return float((features * 2.0 + 1.0).sum())


@memory_profile(operation_name="remember")
def remember() -> int:
    kept.append(b"x" * KEEP_BYTES)  # the leak: kept for the life of the process
    return len(kept)


@app.get("/predict")
def predict_view() -> Any:
    return jsonify(score=predict())


@app.get("/remember")
def remember_view() -> Any:
    return jsonify(kept=remember())


@app.get("/report")
def report_view() -> Any:
    return jsonify(report(len(kept)))
