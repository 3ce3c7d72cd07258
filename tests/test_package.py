"""Import budget: the package and its CLI module load without torch."""

import subprocess
import sys


def test_import_does_not_import_torch():
    code = ("import constitutional, constitutional.cli, constitutional.config, "
            "constitutional.backends, constitutional.artifacts, sys; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
