"""Training and evaluation of generated TACE models (an application on the runtime).

Modules, one job each:

- :mod:`~tacegen.train.config`      ``TrainConfig``: every option of ``tacegen train``, TOML in and out
- :mod:`~tacegen.train.labels`      reading structures and their reference labels (energy, forces, ...)
- :mod:`~tacegen.train.dataset`     preprocessed, memory-mapped data sets and batching
- :mod:`~tacegen.train.normalise`   E0s, average neighbour count, scale and shift from a training set
- :mod:`~tacegen.train.loss`        registry of named targets and the weighted loss
- :mod:`~tacegen.train.metrics`     MAE / RMSE accumulators (train validation and ``tacegen eval``)
- :mod:`~tacegen.train.ema`         exponential moving average of the weights
- :mod:`~tacegen.train.checkpoint`  checkpoints (``weights_only`` loadable), ``load_checkpoint``
- :mod:`~tacegen.train.distributed` torch.distributed set-up (torchrun, SLURM)
- :mod:`~tacegen.train.loop`        the training loop and run folder
- :mod:`~tacegen.train.evaluate`    ``tacegen eval``: error tables, JSON, parity plots

Units: energy eV, length Å, forces eV/Å, stress eV/Å^3 (ASE convention); error
reports use meV/atom, meV/Å and meV/Å^3.
"""
