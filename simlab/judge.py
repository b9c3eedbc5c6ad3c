"""``python -m simlab.judge``: the former name of ``python -m simlab.autograde`` (and, with
``sim-judgement`` first, of ``python -m simlab.sim_judgement``), kept so scripts written for it run.
It says the current name on stderr and forwards its arguments unchanged."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sim-judgement":
        from simlab.sim_judgement import main as sim_judgement_main

        print("note: `python -m simlab.judge sim-judgement` is now `python -m simlab.sim_judgement`", file=sys.stderr)
        return sim_judgement_main(argv[1:])
    from simlab.autograde import main as autograde_main

    print("note: `python -m simlab.judge` is now `python -m simlab.autograde` (`simlab autograde`)", file=sys.stderr)
    return autograde_main(argv)


if __name__ == "__main__":
    sys.exit(main())
