"""repro: a runnable reproduction of "Unpacking SDXL Turbo" (Surkov et al.).

The package `__init__` only re-exports; each submodule has one job.
"""

__version__ = "0.1.0"

from repro.errors import ReproError  # noqa: E402

__all__ = ["ReproError", "__version__"]
