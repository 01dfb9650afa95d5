"""``python -m retina_raf``: the ``retina-raf`` command line."""


def main() -> None:
    """Run the ``retina-raf`` command line (:mod:`retina_raf_cli`).

    This is the command line's entry point, not part of the library: the command line sits
    above ``retina_raf`` and ``analysis``, so it is imported here, inside the function, and
    no module of ``retina_raf`` imports it (or ``analysis``) when ``retina_raf`` is imported.
    """
    from retina_raf_cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
