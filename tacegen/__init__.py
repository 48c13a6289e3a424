"""tacegen: a symbolic tensor-algebra compiler for TACE interatomic potentials.

The compiler (``tacegen.algebra``, ``tacegen.paths``, ``tacegen.ir``, ``tacegen.backends``)
derives exact irreducible-Cartesian-tensor algebra and prints model source; the runtime
(``tacegen.runtime``) is what generated models import.
"""

__version__ = "0.1.0"
