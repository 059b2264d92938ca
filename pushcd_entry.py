"""Console-script entry point, outside the ``supervisor`` package on purpose.

The PyPI package ``supervisor`` (supervisord) installs a module with our
import name. If it shadows ours, say so plainly instead of a confusing
ImportError deep inside.
"""

import sys


def main() -> int:
    try:
        import supervisor
    except ImportError as exc:  # pragma: no cover - broken install
        print(f"pushcd: cannot import the supervisor package ({exc}); reinstall: pip install pushcd", file=sys.stderr)
        return 2
    if getattr(supervisor, "DISTRIBUTION", None) != "pushcd":
        where = getattr(supervisor, "__file__", "?")
        print(
            f"pushcd: `import supervisor` found another package at {where} (probably supervisord). "
            "Install pushcd into its own virtualenv (python -m venv ~/.pushcd && ~/.pushcd/bin/pip install pushcd) "
            "or with pipx, and run it from there.",
            file=sys.stderr,
        )
        return 2
    from supervisor.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
