"""Shared fixtures: a default testbed per test session, torn down even when tests fail."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root for network namespaces")
        for item in items:
            if "netns" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def testbed():
    """The default deployment on a kernel-routed switch host (peers and back-ends running)."""
    from miresga.testbed import Testbed
    with Testbed() as tb:
        yield tb
