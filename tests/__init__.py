"""The test suite (a regular package, so that ``tests.*`` is this folder even where a dependency installs a
top-level ``tests`` package, as lmms-eval's latex2sympy2 does)."""
