"""Builds the kvsketch Python package with the project's CMake (offline):

    python3 -m venv --system-site-packages .venv   # Debian: python3-numpy etc.
    .venv/bin/pip install --no-build-isolation ./python
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def version():
    with open(os.path.join(ROOT, "engine/include/kvsketch/version.h")) as f:
        text = f.read()
    parts = [re.search(rf"#define KVSKETCH_VERSION_{p} (\d+)", text).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """The extension is the CMake target _kvsketch (KVSKETCH_PYTHON=ON),
    built for the interpreter running this build."""

    def build_extension(self, ext):
        build = os.path.abspath(self.build_temp)
        os.makedirs(build, exist_ok=True)
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.check_call(
            ["cmake", "-S", ROOT, "-B", build, *gen,
             "-DCMAKE_BUILD_TYPE=Release", "-DKVSKETCH_PYTHON=ON",
             "-DKVSKETCH_BUILD_TESTS=OFF", "-DKVSKETCH_BUILD_BENCH=OFF",
             f"-DPython_EXECUTABLE={sys.executable}"])
        subprocess.check_call(
            ["cmake", "--build", build, "--target", "_kvsketch", "--parallel",
             str(os.cpu_count() or 1)])
        built = glob.glob(os.path.join(build, "python", "kvsketch",
                                       "_kvsketch*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one built module, found {built}")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(built[0], dest)


setup(
    name="kvsketch",
    version=version(),
    description="A transformer's attention KV cache in a fixed memory budget",
    packages=["kvsketch"],
    package_data={"kvsketch": ["__init__.pyi", "py.typed"]},
    ext_modules=[CMakeExtension("kvsketch._kvsketch")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["numpy"],
    python_requires=">=3.8",
    zip_safe=False,
)
