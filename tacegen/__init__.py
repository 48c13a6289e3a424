"""tacegen: a symbolic tensor-algebra compiler for TACE interatomic potentials.

The compiler (``tacegen.algebra``, ``tacegen.paths``, ``tacegen.ir``, ``tacegen.backends``)
derives exact irreducible-Cartesian-tensor algebra and prints model source; the runtime
(``tacegen.runtime``) is what generated models import.
"""

__version__ = "0.1.0"

__all__ = ["Calculator", "load", "load_checkpoint", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import tacegen` stays light and the CLI does not pay for torch/ASE.
    if name in ("Calculator", "load", "load_checkpoint"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tacegen' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
