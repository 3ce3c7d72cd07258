"""Backend `vllm`: vLLM in process (optional extra `constitutional[vllm]`, GPUs).

generate: `LLM.generate` with the same sampling (n, temperature, top-p/k, max tokens, stop,
a per-prompt seed from `sample_seed`, as the other backends); chats are rendered with the
model's chat template. score_choices: each prompt + option is scored with vLLM's prompt
log-probabilities (`prompt_logprobs=0`, one token generated), and, as in the transformers
backend, only the tokens that tell the options apart count: shared leading tokens are
conditioned on, shared trailing tokens dropped. Tensor parallelism from
`server.tensor_parallel_size`.

Not exercised here: this machine has no GPU. The tests cover the import guard and the
configuration only (see the README).
"""

from __future__ import annotations

from typing import Sequence

from constitutional.backends.base import (Completion, Progress, Prompt, Sampling, option_span,
                                          prompt_key, sample_seed)
from constitutional.errors import InputError


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise InputError("backend vllm needs the vllm package and a GPU: pip install "
                         "'constitutional[vllm]'", field="model.backend") from None
    return vllm


class VLLMBackend:
    def __init__(self, llm, name: str):
        self.llm, self.name = llm, name
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def from_config(cls, cfg, log=print) -> "VLLMBackend":
        from constitutional.models import resolve_model

        vllm = import_vllm()
        path = resolve_model(cfg.name, log=log).path
        llm = vllm.LLM(model=path, trust_remote_code=cfg.trust_remote_code,
                       tensor_parallel_size=cfg.server.tensor_parallel_size,
                       gpu_memory_utilization=cfg.server.gpu_memory_utilization,
                       dtype="auto" if cfg.dtype == "auto" else cfg.dtype,
                       revision=cfg.revision)
        return cls(llm, cfg.name)

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(list(prompt), tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 progress: Progress | None = None) -> list[list[Completion]]:
        vllm = import_vllm()
        params = [vllm.SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k or -1, max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sample_seed(sampling.seed, prompt_key(p), 0) % (2 ** 31)) for p in prompts]
        outs = self.llm.generate([self.render(p) for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:
            result.append([Completion(c.text, len(c.token_ids),
                                      "length" if c.finish_reason == "length" else "stop",
                                      len(o.prompt_token_ids)) for c in o.outputs])
            if progress:
                progress(1)
        return result

    def score_choices(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]],
                      progress: Progress | None = None) -> list[list[float]]:
        vllm = import_vllm()
        texts = [self.render(p) + o for p, opts in zip(prompts, options) for o in opts]
        params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
        outs = iter(self.llm.generate(texts, params, use_tqdm=False))
        result = []
        for opts in options:
            rows = [next(outs) for _ in opts]
            ids = [r.prompt_token_ids for r in rows]
            lead, tail = option_span(ids)
            vals = []
            for r, x in zip(rows, ids):
                end = len(x) - tail
                vals.append(sum(r.prompt_logprobs[t][x[t]].logprob for t in range(lead, end)))
            result.append(vals)
            if progress:
                progress(1)
        return result

