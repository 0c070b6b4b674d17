"""Robots and the ``runs_on`` step tasks offered to them."""
