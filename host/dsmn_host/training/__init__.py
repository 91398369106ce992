"""Training: the DSMN models, complexity counts, training, distillation, multi-process
training, QAT (deploy form, fake quantization, the loop) and reading checkpoints back.

The phase order and what may import what: docs/architecture.md."""
