"""The whole supervised stage of Constitutional AI in one resumable run:

    critique/   red-team prompts -> answer -> critique -> revision (N rounds)
    helpful/    helpful prompts answered by the helpful model (the paper: 2 samples each)
    refusals/   (helpful.refusals) the critic's deliberate over-refusals of the same prompts,
                the rejected side of DPO's over-refusal pairs
    export/     the revision data as HF datasets (messages; prompt/chosen/rejected) + card
    sl_model/   SFT of the base model on revisions + the helpfulness mix -> model/
    sl_answers/ the SL-CAI model answers the first red-team prompts (to compare)

Each step is a stage of the run folder: a finished one is reused, a killed one resumes. The
helpful model is loaded once for critique and helpful answers, and released before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import Field, model_validator

from constitutional.artifacts import StageResult
from constitutional.config import GenerateConfig, SamplingConfig, StrictModel
from constitutional.rundir import RunDir
from constitutional.stages.critique import CritiqueConfig
from constitutional.train.sft import SFTTrainConfig


class HelpfulConfig(StrictModel):
    """The helpfulness mix, answered by the critique stage's (helpful) model."""
    prompts: str = Field("bundled:helpful", description="Helpful prompts (JSONL).")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    samples: int = Field(2, ge=1, description="Answers per prompt (the paper: 2).")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=128))
    system_prompt: str | None = None
    refusals: bool = Field(False, description="The critic also writes, for every helpful "
                           "prompt and sample, a reply that wrongly refuses it (RUN/refusals/):"
                           " the rejected side of DPO's over-refusal pairs "
                           "(rl.dpo.refusal_pairs). Not used in SFT.")

    @model_validator(mode="after")
    def _one_sample_per_call(self):
        if self.sampling.n != 1:
            raise ValueError("use `samples` for answers per prompt; sampling.n must stay 1")
        return self


class SLCAIConfig(StrictModel):
    critique: CritiqueConfig = Field(default_factory=CritiqueConfig)
    helpful: HelpfulConfig | None = Field(default_factory=HelpfulConfig, description=
                                          "Helpfulness mix (null: revisions only).")
    sft: SFTTrainConfig = Field(default_factory=SFTTrainConfig,
                                description="Fine-tuning; `revisions`/`helpful` are filled "
                                "in from this run.")
    show: int = Field(3, ge=0, description="Red-team prompts the SL-CAI model answers at the "
                      "end, printed next to their critique -> revision chains.")


def set_model(cfg: SLCAIConfig, name: str) -> None:
    """`--model X`: X is the helpful model and the model fine-tuned (the policy)."""
    roles = getattr(cfg, "roles", None)
    if roles is not None:
        roles.policy.name = name
    cfg.critique.model.name = name
    cfg.sft.model.name = name
    if roles is not None:
        cfg.pm.model.name = name


def run_sl_cai(cfg: SLCAIConfig, run_dir: str | Path, load_backend: Callable,
               log: Callable[[str], None] = print) -> dict[str, StageResult]:
    """`load_backend(model_cfg)` loads a backend; it is called at most once per model."""
    from constitutional.export import export_revisions
    from constitutional.stages.critique import run_critique
    from constitutional.stages.generate import run_generate
    from constitutional.train.sft import run_sft

    from constitutional.backends import BackendCache

    run_dir = RunDir.of(run_dir)
    backends = BackendCache(load_backend)

    critic = backends.loader(cfg.critique.critic) if cfg.critique.critic else None
    out = {"critique": run_critique(cfg.critique, run_dir,
                                    backends.loader(cfg.critique.model), log,
                                    get_critic=critic)}
    if cfg.helpful:
        h = cfg.helpful
        helpful = GenerateConfig(
            model=cfg.critique.model, prompts=h.prompts, limit=h.limit,
            sampling=h.sampling.model_copy(update={"n": h.samples}),
            system_prompt=h.system_prompt, log_calls=cfg.critique.log_calls)
        out["helpful"] = run_generate(helpful, run_dir, backends.loader(helpful.model),
                                      log, folder=run_dir.helpful)
        if h.refusals:
            out["refusals"] = run_over_refusals(cfg, run_dir, backends, log)
    export_revisions(run_dir)
    backends.release()      # free the helpful model before training
    sft = cfg.sft.model_copy(update={"revisions": str(out["critique"].output),
                                     "helpful": str(out["helpful"].output) if cfg.helpful
                                     else None})
    out["sl_model"] = run_sft(sft, run_dir, log)
    if cfg.show:          # a retrained model changes this stage's inputs: answers are redone
        answers = GenerateConfig(
            model=cfg.critique.model.model_copy(update={"name": str(out["sl_model"].output)}),
            sampling=cfg.critique.sampling, prompts=cfg.critique.prompts, limit=cfg.show,
            system_prompt=cfg.critique.system_prompt)
        out["sl_answers"] = run_generate(answers, run_dir, backends.loader(answers.model),
                                         log, folder=run_dir.sl_answers)
    return out


def run_over_refusals(cfg: SLCAIConfig, run_dir: RunDir, backends, log) -> StageResult:
    """The critic's deliberate over-refusal of every helpful prompt, one per helpful answer
    (sampled as the revisions are; transcripts.OVER_REFUSAL_REQUEST)."""
    from constitutional.stages.generate import run_generate
    from constitutional.transcripts import OVER_REFUSAL_REQUEST

    h, c = cfg.helpful, cfg.critique
    writer = c.critic or c.model
    refusals = GenerateConfig(
        model=writer, prompts=h.prompts, limit=h.limit, user_template=OVER_REFUSAL_REQUEST,
        sampling=c.sampling.model_copy(update={"n": h.samples}), log_calls=c.log_calls)
    return run_generate(refusals, run_dir, backends.loader(writer), log,
                        folder=run_dir.refusals)


# -- the recipe stage ------------------------------------------------------------------------

Section = SLCAIConfig
FAKE = ("critique.model", "critique.critic")


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """Critique -> revision, the helpfulness mix, export, SFT -> sl_model/model."""
    out = run_sl_cai(cfg, run, models.load, run.log)
    return [out[k] for k in ("critique", "helpful", "refusals", "sl_model", "sl_answers")
            if k in out]
