"""SELF-ALIGN (Dromedary): topic-guided red-teaming self-instruct, principle-driven
self-alignment, principle engraving and verbose cloning."""
