"""Benchmark cases, one module per family; every module here is imported by the harness, and importing
it registers its cases (see ``sparseops.bench``)."""
