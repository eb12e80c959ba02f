"""The fast suite's distribution works: under `--dist loadgroup` (make test) a test marked with an
xdist_group carries its group in its node id, which is what makes pytest-xdist send a group's
tests (and so its module fixture, built once) to one worker. pytest 9.2 broke this silently for
pytest-xdist 3.8 (pyproject pins pytest below 9.2); this test notices the next such break."""

import pytest


@pytest.mark.xdist_group("grouping-check")
def test_a_grouped_test_carries_its_group_in_its_node_id(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not running under pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@grouping-check"), request.node.nodeid
