"""The two minimal Omniglot background sets of shared/data/omniglot (beside the checkout), checked
against SHA256SUMS and unzipped for tests (`omniglot_root`, a session fixture in conftest.py)."""

import hashlib
import os
import zipfile
from pathlib import Path

import pytest


def _shared_omniglot() -> Path:
    """The minimal sets live in shared/ beside the checkout (CI: a fresh clone with shared/ beside it)."""
    root = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("METASWEEP_SHARED_DATA", ""), root.parent / "shared" / "data",
                      root / "shared" / "data", Path("/work/shared/data")):
        if candidate and (Path(candidate) / "omniglot" / "SHA256SUMS").is_file():
            return Path(candidate) / "omniglot"
    return root.parent / "shared" / "data" / "omniglot"


SHARED = _shared_omniglot()
ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
N_CHARACTERS = 292  # 136 + 156 characters in the two minimal sets
SPLITS = (200, 40, 52)


def unzip_omniglot(dest: Path) -> Path:
    if not all((SHARED / z).is_file() for z in ZIPS):
        pytest.skip(reason="minimal Omniglot sets not available")
    sums = dict(line.split()[::-1] for line in (SHARED / "SHA256SUMS").read_text().splitlines() if line.strip())
    for z in ZIPS:
        digest = hashlib.sha256((SHARED / z).read_bytes()).hexdigest()
        assert digest == sums[z], f"{z}: checksum mismatch"
        with zipfile.ZipFile(SHARED / z) as f:
            f.extractall(dest)
    return dest
