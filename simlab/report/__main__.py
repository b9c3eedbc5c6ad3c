"""``python -m simlab.report``: write a run's HTML fidelity report."""

from __future__ import annotations

import argparse
import sys

from simlab.errors import exit_status

__all__ = ["main"]

DESCRIPTION = """\
Write the self-contained HTML fidelity report of a run.

The run's tables are loaded from RUN_DIR/store.sqlite. With --human, every fidelity
analysis (PROTOCOL §5) compares the simulated users with the human data; without it the
report describes the run alone. The report is one HTML file with inline charts and no
scripts: open it offline or attach it to an email.
"""

EPILOG = """\
examples:
  python -m simlab.report --run runs/quickstart-84c77b490d
  python -m simlab.report --run runs/prismx-1 --human data/human --out prismx.html --n-boot 500
  python -m simlab.report --run runs/prismx-1 --human data/human --by age,gender --weights margins.csv

exit status: 0 written, 2 bad input (the message names the file, row and field) or an analysis that
cannot be registered (the message names it and the cause).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simlab.report", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory (holds store.sqlite)")
    parser.add_argument("--human", metavar="PATH",
                        help="human data in the record schema (directory of tables or a judgements file)")
    parser.add_argument("--out", metavar="FILE", help="where to write the report (default: RUN_DIR/report.html)")
    parser.add_argument("--n-boot", type=int, default=200, metavar="N",
                        help="bootstrap replicates per 95%% CI (default: 200)")
    from simlab.fidelity.__main__ import add_group_options

    add_group_options(parser)
    args = parser.parse_args(argv)
    from simlab.report import write_run_report

    def body() -> int:
        from simlab.fidelity.registry import ANALYSES

        ANALYSES.names()  # a bad registration or entry point: exit 2 before the run is read
        print(write_run_report(args.run, human=args.human, out=args.out, n_boot=args.n_boot, by=args.by,
                               margins=args.weights))
        return 0

    return exit_status(body)


if __name__ == "__main__":
    sys.exit(main())
