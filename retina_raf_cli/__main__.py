"""``python -m retina_raf_cli``: the ``retina-raf`` command."""

from retina_raf_cli import main

main()
