"""Only the compiled extension lives here; everything else is in pyproject.toml.

The fast engine's event loop (``simhete/engine/_loop.pyx``) is compiled when simhete is installed.
It is optional: without a C compiler the install still succeeds and the engine runs the same loop
in pure Python (identical results, several times slower; docs/engine.md). ``-ffp-contract=off``: no
fused multiply-adds, so times stay bit-identical to the SimPy reference (GCC contracts ``a + b * c``
by default on targets with FMA instructions, e.g. aarch64).
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]
setup(ext_modules=[Extension("simhete.engine._loop", ["simhete/engine/_loop.pyx"],
                             extra_compile_args=flags, optional=True)])
