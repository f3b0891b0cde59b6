import os

# One thread count for the whole session, in this process and in every command a test starts:
# the commands' default follows OMP_NUM_THREADS, and runs compared bit for bit (a resumed run
# against an uninterrupted one) must sum in the same order.
TEST_THREADS = min(2, os.cpu_count() or 1)
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

import gaheads  # noqa: E402, F401  (registers the models with timm)

torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    # a command run in-process (cli.main) sets the thread count; don't let it leak into later tests
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)
