"""create_app: the FastAPI app behind ``api.py``, around one batching Engine.

Routes are in ``routes.py``, the checks in front of them in ``guard.py``, error shapes in ``errors.py``, the
request fields in ``protocol.py`` (also at ``/docs``); ``server.py`` runs the app with its connection limits
and graceful drain.
"""

import contextlib
import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from .engine import Engine
from .errors import HANDLERS
from .guard import RequestGuard
from .prompts import PromptWorkers
from .routes import AppState, router
from .settings import ServerSettings

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    state: AppState = app.state.serving
    state.engine.start()
    await state.prompts.start()
    yield
    state.engine.stop()
    state.prompts.close()
    logger.info("engine stopped")


def create_app(tokenizer, model, settings: ServerSettings | None = None, *, model_name: str = "chatglm"):
    """The FastAPI app serving ``model``; its Engine starts and stops with the app's lifespan."""
    settings = settings or ServerSettings()
    engine = Engine(model, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
                    threads=settings.threads, prefill_chunk_tokens=settings.prefill_chunk_tokens)
    app = FastAPI(title="ChatGLM-6B API", lifespan=lifespan, exception_handlers=HANDLERS,
                  description="The original `POST /` and OpenAI-compatible `/v1/chat/completions`, "
                              "with concurrent requests batched together.")
    app.state.serving = AppState(engine, tokenizer, settings, model_name, model.config.max_sequence_length,
                                 PromptWorkers(tokenizer))
    app.state.engine = engine
    app.include_router(router)
    app.openapi = lambda: openapi_schema(app, settings)
    app.add_middleware(RequestGuard, settings=settings)
    if settings.cors_origins:  # added last, so it runs first and answers preflight requests itself
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


def openapi_schema(app: FastAPI, settings: ServerSettings) -> dict:
    """FastAPI's schema, saying that every route but /health needs the bearer key when one is set."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if settings.api_key:
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    operation["security"] = [] if path == "/health" else [{"bearer": []}]
                    if path != "/health":
                        operation.setdefault("responses", {}).setdefault("401", {"description": "missing or wrong "
                                                                                               "API key"})
        app.openapi_schema = schema
    return app.openapi_schema
