"""Fuzz campaigns over every packet entry point: the switch and agent eBPF programs (through
BPF_PROG_TEST_RUN) and the front-end engine with its frame codec, with invariants checked on
every input. `miresga fuzz` runs them; docs/hardening.md says how and what they found."""
