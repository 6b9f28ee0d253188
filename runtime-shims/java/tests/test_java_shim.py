"""The Java shim's logs, exit statuses and log socket, against a stub Runtime API (no agent needed)."""
import pytest
from common_shim_tests import *  # noqa: F401,F403 (the tests shared with the .NET shim, collected here)
from common_shim_tests import ShimNames


@pytest.fixture
def names():
    return ShimNames(handler="fixtures.Actions", function_error="java.lang.IllegalArgumentException",
                     bad_init="fixtures.BadInit", init_error="java.lang.IllegalStateException",
                     init_frame="fixtures.BadInit")
