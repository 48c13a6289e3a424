"""``python -m tacegen``: the same command line as the installed ``tacegen`` script
(also what ``torchrun -m tacegen train`` runs)."""

from .cli import app

if __name__ == "__main__":  # pragma: no branch
    app()
