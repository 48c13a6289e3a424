"""``python -m tacegen``: the command line (also what ``torchrun -m tacegen train`` runs)."""

from tacegen.cli import app

if __name__ == "__main__":
    app()
