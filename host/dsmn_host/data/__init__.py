"""Data: the TAU22 layout, the synthetic set, log-mel features and their cache,
augmentation, calibration inputs, and the int8 I/O contract (layouts, the one quantizer).

The phase order and what may import what: docs/architecture.md."""
