"""constitutional: align a language model to a written constitution with AI feedback.

Importing the package is cheap on purpose: torch, transformers and every optional engine are
imported lazily by the modules that need them, so `cai --help` and config checks stay instant.
"""

__version__ = "0.1.0"

from constitutional.errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__"]
