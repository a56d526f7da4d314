"""Dagster assets, one module per phase, with the checks that guard them."""
