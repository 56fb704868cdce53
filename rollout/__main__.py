"""``python -m rollout`` and the ``rollout`` console script: the command line.

Its imports take about a second: a Ctrl-C meanwhile is said as any stop is ("stopped
by SIGINT", exit 130), not a traceback of whatever module was loading."""

import sys


def main() -> None:
    try:
        from rollout.cli import app
    except KeyboardInterrupt:
        sys.stderr.write("stopped by SIGINT\n")
        raise SystemExit(130) from None
    app()


if __name__ == "__main__":
    main()
