"""``tacegen study``: resumable sweeps of training runs with an accuracy-versus-cost answer.

Modules, one job each: :mod:`~tacegen.study.axes` (axes, validation, variants),
:mod:`~tacegen.study.config` (``--config study.toml``), :mod:`~tacegen.study.manifest`
(``manifest.json``), :mod:`~tacegen.study.executors` (local processes, submitit/SLURM),
:mod:`~tacegen.study.runner` (run or resume a study), :mod:`~tacegen.study.measure`
(errors, size, cost and speed of a run), :mod:`~tacegen.study.buildtime` (cold build
time), :mod:`~tacegen.study.table` and :mod:`~tacegen.study.plots` (the report),
:mod:`~tacegen.study.report` (``tacegen study report``), :mod:`~tacegen.study.progress`
(the live table). The package sits on :mod:`tacegen.train` and the runtime; the compiler
is imported only inside :func:`tacegen.study.measure.compiler_costs` and in the process
:mod:`~tacegen.study.buildtime` starts.
"""

from tacegen.study.axes import AxisError, Axes, Variant
from tacegen.study.manifest import Manifest
from tacegen.study.report import write_report
from tacegen.study.runner import StudyError, StudyOptions, run_study

__all__ = ["Axes", "AxisError", "Manifest", "StudyError", "StudyOptions", "Variant", "run_study", "write_report"]
