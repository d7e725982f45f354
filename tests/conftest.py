import os

import pytest
import torch

# Two cores: keep torch from oversubscribing them when Ray workers also run.
torch.set_num_threads(int(os.environ.get("METASWEEP_TEST_THREADS", "1")))


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory):
    """The two minimal Omniglot background sets, unzipped once per session (skips where absent)."""
    from omniglotdata import unzip_omniglot

    return unzip_omniglot(tmp_path_factory.mktemp("omniglot"))
