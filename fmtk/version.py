"""The version of fmtk (read by setup.cfg, saved in every checkpoint)."""

__version__ = "0.1.0"
