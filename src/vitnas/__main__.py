"""`python -m vitnas` (what `torchrun -m vitnas supernet ...` runs)."""

from vitnas.cli import main

main()
