import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The command line's persistent compilation cache stays off in the tests (and in the CLI
# processes they start), so no test reads or writes ~/.cache; tests/test_compile_cache.py
# turns it on in a directory of its own.
os.environ.setdefault("RECTRAIN_COMPILE_CACHE", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_addoption(parser):
  parser.addoption("--full", action="store_true", default=False,
                   help="run the full slow matrices (e.g. all 20 fault-injection kills), "
                        "not their representative default subsets")


import pytest  # noqa: E402


@pytest.fixture
def full(request):
  """True with ``pytest --full`` (or RECTRAIN_FULL_TESTS=1): the whole slow matrix."""
  return request.config.getoption("--full") or os.environ.get("RECTRAIN_FULL_TESTS") == "1"
