"""The fixed choices of command-line options, in a module that imports nothing heavy: ``fmtk --help``
lists them without waiting for torch."""

PRECISIONS = ("32", "bf16", "16-mixed")
BACKENDS = ("gloo", "nccl")
