"""Stage `self-instruct` of SELF-ALIGN. Self-instruct: the base model writes instructions round by
round from seed tasks. The step is in selfalign/pipeline.py."""

from constitutional.selfalign.pipeline import SelfAlignSection as Section  # noqa: F401
from constitutional.selfalign.pipeline import recipe_stage

FAKE = ("selfalign.model",)
run = recipe_stage("self-instruct", "Instructions written round by round from seed tasks (self_instruct/).")
