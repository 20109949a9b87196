"""The two ways the app ships without this checkout, the Dockerfile and `deploy-space`, carry every project file that
app.py imports (read statically: no Docker engine here, and the Space's import test is tests/test_hub.py)."""
import ast
import fnmatch
import importlib.metadata
import re
import sys
from pathlib import Path

from classifier.hub import space_files

ROOT = Path(__file__).parents[1]


def project_module(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.exists():
            return candidate
    return None


def imported_project_files(entry: Path) -> set[Path]:
    """`entry` and every project file it imports, directly or through others, at any depth of the code (imports
    inside functions count: they run when that function does)."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = path.relative_to(ROOT).with_suffix("").parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*package[:len(package) - node.level + 1], node.module or ""] if node.level
                                else [node.module]).strip(".")
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            todo += [found for name in names if (found := project_module(name))]
    return {p.relative_to(ROOT) for p in seen}


def docker_copies() -> list[str]:
    """The sources of the Dockerfile's COPY lines (paths relative to the build context)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if re.match(r"\s*COPY\s", line):
            sources += [s.rstrip("/") for s in line.split()[1:-1] if not s.startswith("--")]
    return sources


def docker_ignored(path: Path) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    return any(fnmatch.fnmatch(str(path), p) or fnmatch.fnmatch(str(path), p + "/*") for p in patterns)


SERVED = imported_project_files(ROOT / "app.py")


def test_the_import_walk_sees_the_apps_modules():
    # guards the walk itself: these are imported by app.py at one and two removes
    assert {Path("app.py"), Path("classifier/server.py"), Path("classifier/ui.py")} <= SERVED
    assert Path("classifier/train.py") not in SERVED, "the app now imports the training code: check the Space's size"


def test_the_dockerfile_copies_everything_app_py_imports():
    copies = docker_copies()
    missing = [str(p) for p in SERVED
               if not any(p == Path(c) or Path(c) in p.parents for c in copies) or docker_ignored(p)]
    assert not missing, f"the image would lack {missing}: add them to the Dockerfile's COPY lines"
    assert "models" in copies, "the image would start without the bundled models"
    installs = re.findall(r"pip install .*-r (\S+)", (ROOT / "Dockerfile").read_text())
    assert installs == ["requirements-space.txt"] and "requirements-space.txt" in copies


def test_deploy_space_uploads_everything_app_py_imports():
    missing = SERVED - set(space_files())
    assert not missing, f"a deployed Space would lack {sorted(map(str, missing))}: widen hub.SPACE_FILES"


def installed_with(distributions: set[str]) -> set[str]:
    """`distributions` and everything they require (without extras), by the installed packages' metadata."""
    seen, todo = set(), list(distributions)
    while todo:
        name = todo.pop().lower().replace("-", "_")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[<>=!~\[ ;(]", r)[0] for r in requires if "extra ==" not in r]
    return seen


def test_the_served_code_imports_only_what_requirements_space_installs():
    listed = {re.split(r"[<>=\[ ;#]", line.strip())[0]
              for line in (ROOT / "requirements-space.txt").read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-"))}
    installed = installed_with(listed)
    used = set()
    for path in SERVED:
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.Import):
                used |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                used.add(node.module.split(".")[0])
    providers = importlib.metadata.packages_distributions()
    missing = {module for module in used if module not in sys.stdlib_module_names and not project_module(module)
               and not {d.lower().replace("-", "_") for d in providers.get(module, [module])} & installed}
    # hardware.py imports psutil inside run_command, which records a training launch and which the app never calls
    # (tests/test_hub.py serves the app with the training-only packages hidden)
    assert missing == {"psutil"}, f"the Space would not install {sorted(missing)}: list them in requirements-space.txt"
