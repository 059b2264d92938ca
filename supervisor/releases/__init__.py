"""Releases: their directories, their Python environments, and the strategy that makes them."""
