"""Build the Cython extensions of fastmoe.

Everything else (metadata, dependencies) lives in pyproject.toml. Directives
are set once here; ``FASTMOE_CYTHON_DEBUG=1`` turns bounds checking back on.
OpenMP is used when the compiler accepts ``-fopenmp``; otherwise the kernels
run serially with the same results.
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiler_has_openmp(compiler) -> bool:
    """Try to compile and link a tiny OpenMP program with ``compiler``."""
    if sys.platform == "win32":
        return False
    src = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "omp_check.c"
        path.write_text(src)
        try:
            objs = compiler.compile([str(path)], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, str(Path(tmp) / "omp_check"),
                                     extra_postargs=["-fopenmp"])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        openmp = os.environ.get("FASTMOE_NO_OPENMP") != "1" and _compiler_has_openmp(
            self.compiler
        )
        for ext in self.extensions:
            ext.extra_compile_args += ["-O3"] + (["-fopenmp"] if openmp else [])
            ext.extra_link_args += ["-fopenmp"] if openmp else []
        super().build_extensions()


debug = os.environ.get("FASTMOE_CYTHON_DEBUG") == "1"
directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": debug,
    "initializedcheck": debug,
    "cdivision": True,
}

# both have an AVX2 path compiled per function (a target attribute) and chosen
# at run time, so the build flags stay portable
extensions = [
    Extension(
        "fastmoe._kernels._estep",
        ["fastmoe/_kernels/_estep.pyx"],
        depends=["fastmoe/_kernels/_estep.h", "fastmoe/_kernels/_simd.h"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "fastmoe._kernels._reduce",
        ["fastmoe/_kernels/_reduce.pyx"],
        depends=["fastmoe/_kernels/_reduce.h", "fastmoe/_kernels/_simd.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives),
    cmdclass={"build_ext": BuildExt},
)
