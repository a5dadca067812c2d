"""setuptools' build_py for the wheel: leaves the development-only modules out.

The dev cluster, the image builder and the node agent are whole packages (excluded in
pyproject.toml); the dev-only CLI commands are single modules in coxswain.cli, which
setuptools cannot exclude by name, so this filters them. The same list keeps them out of the
images (.dockerignore; tests/unit/test_wheel_contents.py checks the two agree). An editable
install (`make venv`) still imports them from the source tree: `coxswain dev ...` and
`make demo` work in a checkout, and `coxswain` without them lists only what is installed.
"""

from __future__ import annotations

from setuptools.command.build_py import build_py

DEV_ONLY_PACKAGES = ("coxswain.devcluster", "coxswain.devimages", "coxswain.nodeagent")
DEV_ONLY_MODULES = (
    "coxswain.cli.dev",
    "coxswain.cli.dev_agent",
    "coxswain.cli.dev_images",
    "coxswain.cli.demo",
    "coxswain.cli.logs",
)


class BuildPyWithoutDev(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
        return [m for m in modules if f"{m[0]}.{m[1]}" not in DEV_ONLY_MODULES]
