"""An installed scorer (a wheel, as in a container image) must carry its Avro contracts.

The development install is editable and reads schemas/ from the source tree, so only a real wheel shows
whether `scorer run` would find schemas/prediction.avsc after `pip install scorer`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools reuses a build/ directory, whose leftovers could hide a missing file.
    source = tmp_path_factory.mktemp("source") / "scorer"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "bench"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("scorer-*.whl")
    return built


def test_the_wheel_ships_every_contract(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for contract in sorted((REPO / "schemas").glob("*.avsc")):
        assert f"scorer/schemas/{contract.name}" in names, f"{contract.name} is not in {wheel.name}"


def test_an_unpacked_wheel_loads_the_prediction_contract_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -S skips site.py, so the editable install's path hook does not point `scorer` back at this checkout;
    # the third-party packages come from this virtualenv's site-packages, appended after the wheel.
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import scorer.schema as s; print(s.__file__); print(s.load_contract('prediction')['name'])"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(site), sysconfig.get_paths()["purelib"]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    module_file, record_name = done.stdout.split()
    assert Path(module_file).is_relative_to(site), f"imported {module_file}, not the unpacked wheel"
    assert record_name == "Prediction"
