"""Recipe regression tests: a recipe states a short run and what it must reach (:class:`Check`);
``fmtk check`` trains it and says pass or fail; golden runs compare a run epoch by epoch."""

from fmtk.regression.check import Check

__all__ = ["Check"]
