"""Build hook for the one thing pyproject.toml cannot declare: the optional compiled fast path.

kvm._speedups (kvm/_speedups.c) is built when a C compiler is available; when the build fails the
install still succeeds and kvm uses its pure-Python twin, kvm/_pure.py.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("kvm._speedups", ["kvm/_speedups.c"], optional=True)])
