"""The wheel installs one package, `metasweep`, with core/sweeps/analysis as its subpackages."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_holds_only_the_metasweep_package(tmp_path):
    # built from a clean copy: setuptools reuses a build/ folder, which can hide a package missing from the list
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "results",
                                                             "runs", ".shim", ".venv"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("metasweep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"metasweep", wheel.name.split("-py")[0] + ".dist-info"}
    for module in ("core/adapt.py", "core/tasks/regression.py", "core/learners/base.py", "core/learners/blackbox/mann.py",
                   "sweeps/cli.py", "analysis/store.py", "sweeps/specs/quickstart.yaml"):
        assert f"metasweep/{module}" in names
    # every module of the three source folders, sub-packages included (a package left out of
    # pyproject's list once made a wheel without the learners)
    sources = {f"metasweep/{p.relative_to(ROOT).as_posix()}" for folder in ("core", "sweeps", "analysis")
               for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    assert sources and not sources - set(names), sorted(sources - set(names))
    shipped = {f"metasweep/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "sweeps" / "specs").glob("*.yaml")}
    assert not shipped - set(names), sorted(shipped - set(names))
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "metasweep = metasweep.sweeps.cli:main" in entry


def test_no_top_level_core_or_analysis_module(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import metasweep.core, metasweep.analysis.store\n"
                        "import importlib.util as u\nprint(u.find_spec('core'), u.find_spec('analysis'))"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "None None"
