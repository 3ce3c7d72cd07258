"""Backends: engines behind the narrow `generate` / `score_choices` interface.

Each is imported only when asked for, so `import constitutional` never pulls in torch.
"""

from __future__ import annotations

from constitutional.backends.base import Backend, Completion, Prompt, Sampling

__all__ = ["Backend", "Completion", "Prompt", "Sampling", "load_backend", "BACKENDS"]

# name -> "module:factory"; a new engine (vLLM, an OpenAI-compatible server) is one line here.
BACKENDS = {
    "transformers": "constitutional.backends.transformers_backend:TransformersBackend",
    "fake": "constitutional.backends.fake:FakeBackend",
    "openai": "constitutional.backends.openai_compat:OpenAICompatBackend",
    "vllm": "constitutional.backends.vllm_backend:VLLMBackend",
}


def load_backend(model_cfg, log=print) -> Backend:
    """Build the backend a ModelConfig names (loading the model once)."""
    import importlib

    module, _, factory = BACKENDS[model_cfg.backend].partition(":")
    return getattr(importlib.import_module(module), factory).from_config(model_cfg, log=log)
