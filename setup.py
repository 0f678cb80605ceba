"""Ships the repo-top `conf/` inside the wheel as `rnnbench/conf`.

`conf/` stays where users edit it, at the top of the repo; an installed package has no repo
top, so every non-editable build copies the tree into the built package. All other metadata
lives in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        # An editable install reads conf/ in place (rnnbench.config.CONF_DIR falls back to it).
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "rnnbench" / "conf"
        # A reused build/ must not keep a config file that was since deleted from conf/.
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConf})
