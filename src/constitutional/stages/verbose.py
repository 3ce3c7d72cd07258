"""Stage `verbose` of SELF-ALIGN. Verbose cloning: answers under the verbose prompt, then
fine-tuning without it. The step is in selfalign/pipeline.py."""

from constitutional.selfalign.pipeline import SelfAlignSection as Section  # noqa: F401
from constitutional.selfalign.pipeline import recipe_stage

FAKE = ("selfalign.model", "selfalign.feedback")
run = recipe_stage("verbose", "Verbose cloning: verbose answers, then fine-tuning (verbose/).")
