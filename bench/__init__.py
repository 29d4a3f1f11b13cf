"""The benchmarks and evaluations, a package so that they import each other by name
(``from bench import unsafe_code_eval``) and run the same way from anywhere in the repo root:
``python -m bench.NAME``. What the evaluations share is in ``bench.common``.
"""
