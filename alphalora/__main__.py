"""`python -m alphalora …` entry point."""

from alphalora.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
