"""Export of trained models to the engines users run (an application on the runtime).

- :mod:`~tacegen.export.metatomic`  a metatomic ``AtomisticModel`` file for LAMMPS, i-PI and
  ASE (``tacegen export``; needs the optional extra ``tacegen[metatomic]``)
"""
