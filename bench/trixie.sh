#!/usr/bin/env bash
# Run a command on Python 3.13 (Debian trixie's), in this checkout, with the package installed with its
# compiled run loop: the tree, venv and mounts of .ci/python313, shared so that a benchmark can be run on
# both Pythons the package is tested on. As root.
#
#   bench/trixie.sh python bench/run.py ...          (on 3.11: python bench/run.py ...)
#   KVM_PURE_PYTHON=1 is passed in only if given on the command line: bench/trixie.sh env KVM_PURE_PYTHON=1 python ...
exec bash "$(dirname "$0")/../.ci/python313" --run "$@"
