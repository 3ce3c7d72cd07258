"""Stage `engrave` of SELF-ALIGN. Principle engraving: the policy fine-tuned on the principle-
driven answers, without the principles. The step is in selfalign/pipeline.py."""

from constitutional.selfalign.pipeline import SelfAlignSection as Section  # noqa: F401
from constitutional.selfalign.pipeline import recipe_stage

FAKE = ()
run = recipe_stage("engrave", "Principle engraving: the policy fine-tuned on those answers (engrave/).")
