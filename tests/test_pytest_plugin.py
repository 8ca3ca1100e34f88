"""mcu-nn's pytest plugin (mcu_nn.pytest_plugin, entry point pytest11): the example project in
examples/pytest_project runs in a subprocess against an emulated board and writes JUnit XML
through pytest's own --junitxml; without --mcunn-export its tests skip; the plugin costs
nothing in a run that does not use it."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fixtures.make_standin import make_standin
from mcu_nn.device.emulator import free_port

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "examples" / "pytest_project"
PLUGIN = "mcu_nn.pytest_plugin"


def _plugin_args() -> list[str]:
    """-p mcu_nn.pytest_plugin unless the installed mcu-nn registers it (pip install -e .):
    loading it twice would be refused."""
    registered = any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))
    return [] if registered else ["-p", PLUGIN]


def run_project(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", str(PROJECT), *_plugin_args(), "-p", "no:cacheprovider",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _suite(xml: Path) -> ET.Element:
    root = ET.parse(xml).getroot()
    return root if root.tag == "testsuite" else root.find("testsuite")


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plugin") / "standin"
    make_standin(d)
    return d


def test_the_entry_point_is_declared():
    import tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"]["mcunn"] == PLUGIN


@pytest.mark.qemu
def test_example_project_on_an_emulated_board_writes_junit_xml(standin, tmp_path):
    xml = tmp_path / "out.xml"
    r = run_project("--mcunn-export", str(standin), "--mcunn-board", "qemu-mps2-an386", f"--junitxml={xml}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    suite = _suite(xml)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "0", "0", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    check = cases["test_the_chip_still_computes_what_the_simulator_says[qemu-mps2-an386]"]
    props = {p.get("name"): p.get("value") for p in check.iter("property")}
    assert props["mcunn_board"] == "qemu-mps2-an386" and props["mcunn_model"] == "standin"
    assert props["mcunn_passed"] == props["mcunn_sequences"] == "4" and props["mcunn_rule"] == "0 differing bits"
    assert len(props["mcunn_sha256"]) == 64


def test_without_an_export_the_example_tests_skip(tmp_path):
    xml = tmp_path / "out.xml"
    r = run_project(f"--junitxml={xml}", timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    suite = _suite(xml)
    assert (suite.get("tests"), suite.get("skipped")) == ("3", "3")
    assert "--mcunn-export" in r.stdout or "--mcunn-export" in xml.read_text()


def test_an_unreachable_board_is_an_error_in_the_junit_xml(standin, tmp_path):
    xml = tmp_path / "out.xml"
    dead = f"rfc2217://127.0.0.1:{free_port()}"
    r = run_project("--mcunn-export", str(standin), "--mcunn-port", dead, f"--junitxml={xml}", timeout=120)
    assert r.returncode == 1
    suite = _suite(xml)
    # the client fixture's set-up errors; the check (opening the port in the test) fails
    assert suite.get("tests") == "3" and int(suite.get("errors")) + int(suite.get("failures")) == 3
    assert "cannot open serial port" in xml.read_text()


def test_the_plugin_costs_nothing_when_unused():
    """Importing it (in a pytest run: pytest is loaded) adds no mcu-nn module beyond the package
    itself and takes milliseconds; it adds only its --mcunn-* options,
    and no parametrisation of tests that do not ask for a board."""
    code = ("import sys, time, pytest, mcu_nn; before = set(sys.modules); t = time.perf_counter(); "
            f"import {PLUGIN}; dt = time.perf_counter() - t; "
            "new = sorted(m for m in set(sys.modules) - before if m.startswith('mcu_nn')); print(dt, new)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split(maxsplit=1)
    assert out[1].strip() == f"['{PLUGIN}']"
    assert float(out[0]) < 0.05
    r = subprocess.run([sys.executable, "-m", "pytest", *_plugin_args(), "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    options = {w.split("=")[0].rstrip(",") for w in r.stdout.split() if w.startswith("--mcunn")}
    assert options == {"--mcunn-export", "--mcunn-board", "--mcunn-port", "--mcunn-timeout"}


def test_tests_without_board_fixtures_are_not_parametrised():
    from mcu_nn import pytest_plugin

    class Meta:
        fixturenames = ["tmp_path"]
        config = None

        def parametrize(self, *a, **k):
            raise AssertionError("parametrised a test that uses no board")
    pytest_plugin.pytest_generate_tests(Meta())
