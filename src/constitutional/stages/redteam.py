"""Stage `redteam` of SELF-ALIGN. Topic-guided red-teaming: topics per adversarial type, one
instruction per topic, both sets screened together. The step is in selfalign/pipeline.py."""

from constitutional.selfalign.pipeline import SelfAlignSection as Section  # noqa: F401
from constitutional.selfalign.pipeline import recipe_stage

FAKE = ("selfalign.model",)
run = recipe_stage("redteam", "Red-team instructions by topic, screened with self-instruct's (instructions/).")
