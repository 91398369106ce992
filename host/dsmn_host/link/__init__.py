"""Link: on-board evaluation over the serial link (session, recovery, journal, run loop)
and its report.

The phase order and what may import what: docs/architecture.md."""
