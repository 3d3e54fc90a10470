"""Build the gateway from a :class:`ServeConfig` and run it with uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

from lexlora.errors import LexloraError
from lexlora.serve.config import ServeConfig


def build_app(config: ServeConfig) -> FastAPI:
    """Resolve the base model, create the engine and the store, and assemble the app."""
    from lexlora.artifacts.adapter import base_config_hash
    from lexlora.models import resolve_base_model
    from lexlora.quiet import quiet_libraries
    from lexlora.registry import AdapterStore
    from lexlora.serve.app import create_app
    from lexlora.serve.engines import create_engine
    from lexlora.serve.prompts import PromptEncoder

    quiet_libraries()
    try:
        base_path = resolve_base_model(config.base_model)
    except LexloraError as exc:
        raise LexloraError(f"serve config base_model: {exc}") from None
    engine = create_engine(config, base_path)
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_path)
    store = AdapterStore(config.store)
    return create_app(config, engine, PromptEncoder(tokenizer), store, base_config_hash(base_path))


def run_server(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
