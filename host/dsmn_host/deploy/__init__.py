"""Deployment: ONNX export, int8 TFLite conversion, model cards (the hub contract),
verification of every form, and the code generator's command with the builds that run
its output (runner) and compare it layer by layer (compare).

The phase order and what may import what: docs/architecture.md."""
