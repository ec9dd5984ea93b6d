"""Benchmarks: each prints a table of figures and ratios against a floor measured in the
same run. ``python -m bench all [--quick]`` runs every one."""
