"""``python -m stdiff``: the command line (also what ``torchrun ... -m stdiff train`` runs)."""

from stdiff.cli import entry

if __name__ == "__main__":
    entry()
