"""Binder: the files repo2docker reads in binder/, and an install that follows them.

mybinder.org builds the course's image with repo2docker. When a repository has a binder/ folder,
repo2docker reads its configuration from there alone (the root's pyproject.toml is not used):
binder/runtime.txt picks the Python, and `pip install -r binder/requirements.txt` runs in the
repository root, into the environment the Jupyter server and its kernel run in. The README's
badge opens JupyterLab at its `urlpath`.

No Binder service can be reached from here, so these tests check what can be checked: the files
parse, every package they name is one pyproject.toml declares, and a fresh virtual environment
installed the way the file says runs lesson 01 in its own kernel and serves JupyterLab on
lessons/ with the widget extensions the lessons draw with. (Binder gives 2 GB of memory; each
lesson's peak is what `python -m kdlearn.course measure` reports, about 600 MB.)

The install tests are slow, about 2 minutes on a 2-core machine: a virtual environment gets
torch, triton, JupyterLab and the rest (about 1 minute, from PyPI, as `make test` installs), then
lesson 01 runs top to bottom (about 1 minute). PyTorch's CPU wheel index cannot be reached from
CI, so the install drops the file's index option and takes torch from wherever pip finds it, as
the Makefile does; the pinned version must then be a CPU build, and the test checks that it is.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, where pytest brings tomli
    import tomli as tomllib

ROOT = Path(__file__).parents[1]
BINDER = ROOT / "binder"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INDEX_OPTIONS = ("--index-url", "--extra-index-url", "-i")
# A comment starts a line or follows whitespace (pip's rule; a URL's fragment is not one).
COMMENT = re.compile(r"(^|\s)#.*$")
LOCAL_PROJECT = re.compile(r"^(?P<path>\.[^\[\s]*)(\[(?P<extras>[^\]]*)\])?$")
BINDER_BADGE = re.compile(r"https://mybinder\.org/v2/gh/[^/\s)]+/[^/\s)]+/[^?\s)]+\?urlpath=(?P<urlpath>[^\s)&]+)")
# Files with which repo2docker would build the image its own way and leave requirements.txt uninstalled.
OTHER_ENVIRONMENT_FILES = ("Dockerfile", "default.nix", "environment.yml", "Pipfile", "Pipfile.lock", "pyproject.toml")
# The JupyterLab extensions the lessons' plots and sliders need in the browser.
WIDGET_EXTENSIONS = {"@jupyter-widgets/jupyterlab-manager", "jupyterlab-plotly"}
SERVER_START_TIMEOUT_S = 120
# Where the README's badge opens JupyterLab: the lessons folder.
BADGE_URLPATH = "lab/tree/lessons"
# `jupyter lab`, reporting its port on stdout once it listens. The server logs its URL before it
# binds the port (a callback queued while it initialises, which a callback queued now follows).
START_JUPYTERLAB = """
import sys
from jupyterlab.labapp import LabApp
server = LabApp.initialize_server(argv=sys.argv[1:])
server.io_loop.add_callback(lambda: print(server.port, flush=True))
server.start()
"""


def requirement_lines(text: str) -> list[str]:
    """The lines of a requirements file that pip acts on: comments and blank lines left out."""
    return [line for raw in text.splitlines() if (line := COMMENT.sub("", raw).strip())]


def binder_requirements() -> list[str]:
    return requirement_lines((BINDER / "requirements.txt").read_text(encoding="utf-8"))


def is_index_option(line: str) -> bool:
    return line.split("=", 1)[0].split()[0] in INDEX_OPTIONS


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def declared_requirements() -> dict[str, Requirement]:
    """What pyproject.toml declares for the library and the course, by package name."""
    project = pyproject()["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["course"]
    return {canonicalize_name(req.name): req for req in map(Requirement, lines)}


def pinned_requirements() -> list[Requirement]:
    """binder/requirements.txt's package requirements: its options and the local project left out."""
    return [Requirement(line) for line in binder_requirements()
            if not line.startswith("-") and not LOCAL_PROJECT.match(line)]


def runtime_python() -> str:
    """binder/runtime.txt's Python as 'X.Y'."""
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    match = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert match, f"binder/runtime.txt must read python-3.X (repo2docker's form), not {runtime!r}"
    return match.group(1)


# --- the files ----------------------------------------------------------------------------------


def test_runtime_is_a_python_the_project_supports():
    version = runtime_python()
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    assert requires.contains(version), f"binder/runtime.txt asks for Python {version}; pyproject needs {requires}"


def test_requirements_txt_is_what_repo2docker_installs():
    present = [name for name in OTHER_ENVIRONMENT_FILES if (BINDER / name).exists()]
    assert not present, f"with {present} in binder/, repo2docker would not install binder/requirements.txt"


def test_torch_comes_from_pytorchs_cpu_index_and_the_rest_from_pypi():
    options = [line for line in binder_requirements() if line.startswith("-")]
    assert options == [f"--extra-index-url {PYTORCH_CPU_INDEX}"], (
        "binder/requirements.txt should add PyTorch's CPU index to PyPI (--extra-index-url), "
        f"so that torch is the CPU build and every other package still resolves; its options: {options}")


def test_every_package_named_is_declared_by_pyproject_and_every_pin_allowed_by_it():
    declared = declared_requirements()
    pinned = pinned_requirements()
    assert pinned, "binder/requirements.txt names no package (torch at least, for the CPU build)"
    for req in pinned:
        name = canonicalize_name(req.name)
        assert name in declared, f"binder/requirements.txt names {req.name}, which pyproject.toml does not declare"
        for spec in req.specifier:
            if spec.operator == "==":
                assert declared[name].specifier.contains(spec.version), (
                    f"binder pins {req}, outside pyproject's {declared[name]}")


def test_the_repository_is_installed_with_the_course_extra():
    locals_ = [match for line in binder_requirements() if (match := LOCAL_PROJECT.match(line))]
    assert len(locals_) == 1, "binder/requirements.txt should install this repository once, as .[course]"
    # pip reads the path from the directory it runs in; repo2docker runs it in the repository root.
    assert (ROOT / locals_[0]["path"]).resolve() == ROOT.resolve()
    extras = {extra.strip() for extra in (locals_[0]["extras"] or "").split(",") if extra.strip()}
    assert "course" in extras, "without the [course] extra there is no JupyterLab, ipywidgets or plotly"
    assert extras <= set(pyproject()["project"]["optional-dependencies"]), f"unknown extras {extras}"


def test_binder_gets_the_torch_that_ci_tests():
    torch_pins = [str(req) for req in pinned_requirements() if canonicalize_name(req.name) == "torch"]
    makefile_torch = re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert makefile_torch, "the Makefile no longer sets TORCH ?= ...; update this test"
    assert torch_pins == [makefile_torch.group(1)]


def test_the_readme_badge_opens_jupyterlab_on_the_lessons():
    badge = BINDER_BADGE.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert badge, "README.md has no mybinder.org launch link with a urlpath"
    assert urllib.parse.unquote(badge["urlpath"]).strip("/") == BADGE_URLPATH


# --- an install that follows binder/ ------------------------------------------------------------


@dataclass
class Install:
    repo: Path          # a copy of the repository, as repo2docker copies it into the image
    venv: Path
    env: dict[str, str]

    def python(self, *args: str, cwd: Path) -> subprocess.CompletedProcess:
        return run([str(self.venv / "bin" / "python"), *args], cwd=cwd, env=self.env)


def run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (f"{' '.join(command)} (in {cwd}) exited {result.returncode}\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def binder_interpreter() -> str:
    """A Python of binder/runtime.txt's version to create the environment with."""
    version = runtime_python()
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        pytest.skip(f"Binder's Python {version} (binder/runtime.txt) is not installed here")
    return found


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Install:
    """A fresh virtual environment with `pip install -r binder/requirements.txt` run from the root of
    a copy of the repository (the copy keeps pip's build files out of this one)."""
    base = tmp_path_factory.mktemp("binder")
    repo = base / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "build", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"))
    # PyTorch's index is out of reach here; without it pip takes torch from where it is configured to.
    requirements = repo / "binder" / "requirements.txt"
    requirements.write_text("\n".join(line for line in binder_requirements() if not is_index_option(line)) + "\n")

    venv = base / "venv"
    run([binder_interpreter(), "-m", "venv", str(venv)], cwd=base)
    # The environment of a Binder session: its own Python first on PATH, and no Jupyter kernels,
    # settings or Triton mode of whoever runs these tests (the kernel tests set TRITON_INTERPRET).
    env = {key: value for key, value in os.environ.items()
           if key not in {"TRITON_INTERPRET", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "JUPYTER_PATH"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["JUPYTER_CONFIG_DIR"] = str(base / "jupyter-config")
    env["JUPYTER_DATA_DIR"] = str(base / "jupyter-data")
    installed = Install(repo, venv, env)
    installed.python("-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt", cwd=repo)
    return installed


def test_the_install_has_the_pinned_cpu_torch_and_triton(install):
    report = install.python("-c", "import importlib.metadata as m, json, torch; print(json.dumps("
                            "{'torch': torch.__version__, 'cuda': torch.version.cuda, 'triton': m.version('triton')}))",
                            cwd=install.repo / "lessons")
    found = json.loads(report.stdout)
    torch_pin = next(req for req in pinned_requirements() if canonicalize_name(req.name) == "torch")
    assert torch_pin.specifier.contains(found["torch"]), f"torch {found['torch']} installed, binder asks {torch_pin}"
    assert found["cuda"] is None, f"torch {found['torch']} is a CUDA build (CUDA {found['cuda']}), not the CPU one"
    assert found["triton"], "triton is missing: lesson 05's kernels need it"


def test_lesson_01_runs_top_to_bottom_in_the_installed_kernel(install):
    lessons = install.repo / "lessons"
    # The lesson runner's kernel, asked where it runs: the environment's own Python and kdlearn.
    where = install.python("-c", (
        "import nbformat, pathlib, kdlearn.course as course\n"
        "probe = 'import sys, json, kdlearn; print(json.dumps([sys.prefix, kdlearn.__file__]))'\n"
        "notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(probe)])\n"
        "course.execute(notebook, pathlib.Path('.'))\n"
        "print(''.join(out.text for out in notebook.cells[0].outputs if out.get('name') == 'stdout'))"), cwd=lessons)
    prefix, kdlearn_file = json.loads(where.stdout)
    assert Path(prefix).resolve() == install.venv.resolve(), f"the kernel ran in {prefix}, not in the Binder environment"
    assert Path(kdlearn_file).resolve().is_relative_to(install.venv.resolve()), (
        f"the kernel imported kdlearn from {kdlearn_file}, not the installed package")

    install.python("-m", "kdlearn.course", "run", "01_soft_targets.ipynb", cwd=lessons)


def test_jupyterlab_opens_on_the_lessons_with_the_widget_extensions(install, tmp_path):
    """Starts the environment's JupyterLab with the server root at the repository, as on Binder, and
    asks it for the page the badge opens."""
    token = secrets.token_hex(16)
    options = ["--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={install.repo}"]
    if os.geteuid() == 0:   # Binder never runs as root; test machines often do
        options.append("--allow-root")
    log_path = tmp_path / "jupyterlab.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(install.venv / "bin" / "python"), "-c", START_JUPYTERLAB, *options],
                                  cwd=install.repo, env=install.env, stdout=subprocess.PIPE, stderr=log, text=True)
    # Should the server hang before it listens, killing it ends the read below.
    watchdog = threading.Timer(SERVER_START_TIMEOUT_S, server.kill)
    watchdog.start()
    try:
        port = server.stdout.readline().strip()
        watchdog.cancel()
        assert port.isdigit(), "JupyterLab did not start:\n" + log_path.read_text()

        def get(path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}?token={token}", timeout=60) as response:
                return response.read().decode()

        page = get(BADGE_URLPATH)
        config = json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                                      page, re.S).group(1))
        assert config["treePath"] == "lessons"
        loaded = {extension["name"] for extension in config["federated_extensions"]}
        assert WIDGET_EXTENSIONS <= loaded, f"JupyterLab lacks {WIDGET_EXTENSIONS - loaded}: the lessons' widgets would not render"
        assert not WIDGET_EXTENSIONS & set(config["disabledExtensions"])

        listing = json.loads(get("api/contents/lessons"))
        assert "01_soft_targets.ipynb" in {item["name"] for item in listing["content"]}
    finally:
        watchdog.cancel()
        server.terminate()
        server.communicate(timeout=60)
