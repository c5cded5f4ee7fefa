"""The network-namespace testbed: every host a namespace, joined by veth pairs to a switch host."""

from miresga.testbed.testbed import Testbed, teardown_instance

__all__ = ["Testbed", "teardown_instance"]
