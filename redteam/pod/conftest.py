"""Red-team harness: the pod world of tests/transparent/test_pod_netns.py, reused."""
from tests.conftest import bg, test_ca  # noqa: F401  (fixtures)
from tests.transparent.test_pod_netns import world  # noqa: F401  (fixture)
