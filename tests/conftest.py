"""Test options: the long simulation/synthesis sweeps are opt-in with ``--runslow``."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (full configuration sweeps; nightly/bench jobs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    deselected = [item for item in items if "slow" in item.keywords]
    if deselected:
        # Deselected (reported in the summary), not skipped: the default run is the CI subset.
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "slow" not in item.keywords]
