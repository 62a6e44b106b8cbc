"""environment.yml (the conda entry point) must mirror pyproject.toml: same Python, same packages."""

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO_ROOT


def _pyproject():
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _environment():
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def _pip_section(env):
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "one pip section"
    return sections[0]


def test_same_python():
    project, env = _pyproject(), _environment()
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python[=<>]", d)]
    assert pythons == ["python=3.11"]
    assert "3.11" in SpecifierSet(project["requires-python"])


def test_same_packages_and_extras():
    project, env = _pyproject(), _environment()
    pip = _pip_section(env)
    editable = [line for line in pip if line.startswith("-e ")]
    assert len(editable) == 1
    extras = set(re.fullmatch(r"-e \.\[(.*)\]", editable[0]).group(1).split(","))
    assert extras == set(project["optional-dependencies"]), "the editable install names every extra"
    wanted = {Requirement(r) for r in project["dependencies"]}
    for extra in extras:
        wanted |= {Requirement(r) for r in project["optional-dependencies"][extra]}
    listed = {Requirement(line) for line in pip if not line.startswith("-")}
    as_text = lambda reqs: sorted(f"{r.name.lower()}{r.specifier}" for r in reqs)  # noqa: E731
    assert as_text(listed) == as_text(wanted)


def test_torch_is_pinned_exactly_everywhere():
    assert "torch==2.13.0" in _pyproject()["dependencies"]
    assert "torch==2.13.0" in _pip_section(_environment())


@pytest.mark.parametrize("name", ["environment.yml", "pyproject.toml"])
def test_no_exact_pins_besides_torch(name):
    text = (REPO_ROOT / name).read_text()
    pins = re.findall(r"([A-Za-z0-9_.-]+)==", text)
    assert set(pins) <= {"torch"}, pins
