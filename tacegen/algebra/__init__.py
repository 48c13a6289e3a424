"""Exact irreducible-Cartesian-tensor algebra (pure SymPy / fractions; never imports torch).

* :mod:`.ict` - the detracer, the ICT basis T_l and its storage forms;
* :mod:`.coupling` - the couplings l1 x l2 -> l3 (even and odd paths);
* :mod:`.projectors` - irreducible decomposition of general rank-n tensors;
* :mod:`.characters` - multiplicities by weight counting.

Float64 accessors for studies and tests: :func:`ict_tensor`, :func:`coupling_tensor`,
:func:`projectors`.
"""

from .coupling import Coupling, coupling, coupling_tensor
from .ict import detrace, gram, ict_polynomials, ict_reduced, ict_symbolic, ict_tensor
from .projectors import exact_parts, multiplicities, projectors

__all__ = [
    "Coupling", "coupling", "coupling_tensor",
    "detrace", "gram", "ict_polynomials", "ict_reduced", "ict_symbolic", "ict_tensor",
    "exact_parts", "multiplicities", "projectors",
]
