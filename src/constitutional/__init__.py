"""constitutional: align a language model to a written constitution with AI feedback.

Importing the package is cheap on purpose: torch, transformers and every optional engine are
imported lazily by the modules that need them, so `cai --help` and config checks stay instant.
The Python API (`constitutional.api`: load_backend, generate, critique, label, load_recipe,
run_recipe, read_rows, to_dataset) is importable from here and loads on first use.
"""

__version__ = "0.1.0"

from constitutional.errors import InputError  # noqa: E402

API = ("load_backend", "generate", "critique", "label", "load_recipe", "run_recipe",
       "read_rows", "to_dataset")
__all__ = ["InputError", "__version__", *API]


def __getattr__(name: str):
    if name in API:
        from constitutional import api

        return getattr(api, name)
    raise AttributeError(f"module 'constitutional' has no attribute {name!r}")
