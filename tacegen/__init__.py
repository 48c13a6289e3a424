"""tacegen: a symbolic tensor-algebra compiler for TACE interatomic potentials.

The compiler (``tacegen.algebra``, ``tacegen.paths``, ``tacegen.ir``, ``tacegen.backends``)
derives exact irreducible-Cartesian-tensor algebra and prints model source; the runtime
(``tacegen.runtime``) is what generated models import.
"""

__version__ = "0.1.0"

__all__ = ["Calculator", "load", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import tacegen` stays light and the CLI does not pay for torch/ASE.
    if name in ("Calculator", "load"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'tacegen' has no attribute {name!r}")
