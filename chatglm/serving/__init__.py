"""Serving many chats with one model: the batching engine and the HTTP API behind ``api.py``.

    engine.py       Engine, Sequence: continuous batching on one background thread (batch.py: its rows)
    updates.py      follow / follow_blocking: waiting for a sequence's new tokens
    text_stream.py  TextStream: the answer's text piece by piece
    protocol.py     request and response bodies (pydantic), which /openapi.json publishes
    app.py          create_app: the FastAPI app (routes.py, guard.py, errors.py)
"""

from .engine import CANCELLED, ERROR, LENGTH, SHUTDOWN, STOP, Engine, QueueFull, Sequence, default_engine_threads
from .text_stream import TextStream
from .updates import follow, follow_blocking

__all__ = ["CANCELLED", "ERROR", "LENGTH", "SHUTDOWN", "STOP", "Engine", "QueueFull", "Sequence", "TextStream",
           "default_engine_threads", "follow", "follow_blocking"]
