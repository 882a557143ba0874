"""``python -m medrecon``: the same command line as the ``medrecon`` console script."""

from medrecon.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
