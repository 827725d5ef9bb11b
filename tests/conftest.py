"""Shared test setup: Detectron2 fixes first, datasets in a per-session temp folder."""
import atexit
import os
import shutil
import tempfile

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Generated demo data and any dataset files go to a throwaway root, never ./datasets.
os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="iaunet_d2_datasets_")
atexit.register(shutil.rmtree, os.environ["DETECTRON2_DATASETS"], ignore_errors=True)

import iaunet_d2.compat  # noqa: E402,F401  (before anything imports Detectron2)
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def repo_root():
    return _REPO_ROOT
