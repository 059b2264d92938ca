"""pushcd: a continuous-deployment supervisor for single-server web apps.

A signed GitHub push webhook -> a libgit2 fast-forward of the deployed work
tree -> a health-gated restart of the app under our own process manager.
Run it with ``python -m supervisor run --config config.toml``.
"""

DISTRIBUTION = "pushcd"  # pushcd_entry checks this marker: `supervisor` may be supervisord's package
__version__ = "0.1.0"
