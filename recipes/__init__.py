"""The recipes that ship with fmtk: one short file each, found by `fmtk run NAME`."""
