"""Target: firmware build, QEMU emulation, flashing, the TFLM tree, the on-device front
end's host reference and the host side of the serial protocol.

The phase order and what may import what: docs/architecture.md."""
