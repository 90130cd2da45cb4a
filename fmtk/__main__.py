"""`python -m fmtk` is the same as the `fmtk` command."""

from fmtk.cli import main

if __name__ == "__main__":
    main()
