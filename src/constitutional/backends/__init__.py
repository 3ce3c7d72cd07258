"""Backends: engines behind the narrow `generate` / `score_choices` interface.

Each is imported only when asked for, so `import constitutional` never pulls in torch.
"""

from __future__ import annotations

from constitutional.backends.base import Backend, Completion, Prompt, Sampling

__all__ = ["Backend", "BackendCache", "Completion", "Prompt", "Sampling", "load_backend",
           "BACKENDS"]

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


def load_run_backend(model_cfg, run_dir, log_calls: bool, log=print) -> Backend:
    """A run's backend: loaded once, timed, and with `log_calls` every call logged to the
    run folder's calls.jsonl."""
    import time

    from constitutional.calllog import LoggedBackend
    from constitutional.rundir import RunDir

    t0 = time.time()
    backend = load_backend(model_cfg, log=log)
    log(f"Loaded {model_cfg.name} ({model_cfg.backend}) in {time.time() - t0:.1f}s")
    return LoggedBackend(backend, RunDir.of(run_dir).calls) if log_calls else backend


class BackendCache:
    """Backends of one run, each model loaded once: keyed by the model config (batch sizes
    aside, they do not change the model). Stages that fine-tune call `release()` first."""

    def __init__(self, load):
        self.load = load                    # ModelConfig -> Backend
        self.cache: dict[str, Backend] = {}

    @staticmethod
    def key(model_cfg) -> str:
        return model_cfg.model_dump_json(exclude={"batch_size", "score_batch_tokens"})

    def get(self, model_cfg) -> Backend:
        key = self.key(model_cfg)
        if key not in self.cache:
            self.cache[key] = self.load(model_cfg)
        return self.cache[key]

    def loader(self, model_cfg):
        """A `get_backend` for a stage: loads only if the stage has work to do."""
        return lambda: self.get(model_cfg)

    def release(self, model_cfg=None) -> None:
        """Free one model (or all of them)."""
        import gc

        if model_cfg is None:
            self.cache.clear()
        else:
            self.cache.pop(self.key(model_cfg), None)
        gc.collect()
