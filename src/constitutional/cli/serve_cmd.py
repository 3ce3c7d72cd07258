"""`cai serve MODEL`: an OpenAI-compatible chat server for any model the toolkit loads."""

from __future__ import annotations

import os
from typing import Optional

import typer

from constitutional.cli.common import app, check_model, log


@app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="A built-in name, a model folder (e.g. "
                                "runs/quickstart/rl/model) or a hub id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this "
                             "machine only)."),
    port: int = typer.Option(8000, "--port", "-p"),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="Name of an environment "
                                            "variable holding a bearer token clients must "
                                            "send."),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="Largest max_tokens accepted."),
    max_request_bytes: int = typer.Option(1_000_000, "--max-request-bytes"),
    batch_window: float = typer.Option(0.02, "--batch-window", help="Seconds to gather "
                                       "concurrent requests into one batch."),
    max_logprobs: int = typer.Option(20, "--max-logprobs", help="Largest top-k of "
                                     "`logprobs` returned (choice scoring asks for top-k)."),
    max_pending: int = typer.Option(256, "--max-pending", help="Requests waiting or running "
                                    "at once; more get HTTP 429 with Retry-After."),
    retry_after: int = typer.Option(1, "--retry-after", help="Seconds a 429 asks clients to "
                                    "wait."),
    dtype: str = typer.Option("auto", "--dtype"),
    device: str = typer.Option("auto", "--device"),
):
    """Serve MODEL at http://HOST:PORT/v1 (chat and completions, streaming, batching) and
    GET /health. Streaming sends OpenAI's chunk events once a completion is finished (the
    engine decodes whole batches), so it does not lower the time to the first token."""
    import uvicorn

    from constitutional.backends import load_backend
    from constitutional.config import ModelConfig
    from constitutional.errors import InputError
    from constitutional.serve import create_app

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise InputError(f"environment variable {token_env} is not set", field="--token-env")
    cfg = ModelConfig(name=model, dtype=dtype, device=device)
    check_model(cfg)
    backend = load_backend(cfg, log=log)
    log(f"serving {model} at http://{host}:{port}/v1" + (" (bearer token required)"
                                                        if token else ""))
    uvicorn.run(create_app(backend, model, token, max_tokens, max_request_bytes, batch_window,
                           max_logprobs, max_pending, retry_after),
                host=host, port=port, log_level="warning")
