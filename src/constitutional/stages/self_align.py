"""Stage `self-align` of SELF-ALIGN. Principle-driven self-alignment: the writer answers under the
16 principles and 5 exemplars. The step is in selfalign/pipeline.py."""

from constitutional.selfalign.pipeline import SelfAlignSection as Section  # noqa: F401
from constitutional.selfalign.pipeline import recipe_stage

FAKE = ("selfalign.model", "selfalign.feedback")
run = recipe_stage("self-align", "The writer's principle-driven answers (self_align/).")
