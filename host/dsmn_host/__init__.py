"""dsmn-host: DSMN acoustic scene classification from TAU22 audio to int8 firmware on Cortex-M.

Each pipeline stage is one module with a function that reads and writes files and a
`register(subparsers)` hook that adds its `dsmn-host` subcommand. Stage modules keep heavy
imports (torch, tensorflow, onnx) inside functions so `dsmn-host --help` stays fast.
"""

__version__ = "0.1.0"
