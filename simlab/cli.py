"""The ``simlab`` command: one entry point for every tool, and one error → exit status mapping.

    simlab run [options]            a batch run (``python -m simlab.run``; also ``simlab [options]``)
    simlab serve [--check]          the embedded server (``python -m simlab.serve``)
    simlab autograde --run RUN      the LLM-judge autograder + ICC (``python -m simlab.autograde``)
    simlab sim-judgement …          Sim-Judgement mode (``python -m simlab.sim_judgement``)
    simlab fidelity import|analyze  human data and fidelity analyses (``python -m simlab.fidelity``)
    simlab compare [--human DATA] RUN …  simulators side by side on one fidelity index (``python -m simlab.compare``)
    simlab report --run RUN         a run's HTML report (``python -m simlab.report``)
    simlab store export|merge       a run's tables (``python -m simlab.store``)
    simlab init DIR                 a starter project: config, personas, prompt templates
    simlab view RUN …               read every session in the browser (``python -m simlab.view``)

Exit status everywhere: 0 done, 1 a failure recorded with its reason (or a backend stopped
answering), 2 bad input (the message names the file, row and field), 130 interrupted.
"""

from __future__ import annotations

import sys
from importlib import import_module

__all__ = ["COMMANDS", "main"]

# subcommand → (module whose ``main(argv)`` runs it, arguments put in front, one-line help)
COMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "run": ("simlab.run", (), "run the experiment (the default command)"),
    "serve": ("simlab.serve", (), "start the embedded llama.cpp server; --check probes every arm"),
    "autograde": ("simlab.autograde", (), "grade a run's replies and user messages with the LLM judge"),
    "sim-judgement": ("simlab.sim_judgement", (), "simulated users assess human transcripts"),
    "fidelity": ("simlab.fidelity.__main__", (), "import human data; compare simulated with human"),
    "compare": ("simlab.compare", (), "which simulator is most human: a leaderboard of simulated sources"),
    "report": ("simlab.report.__main__", (), "write a run's HTML fidelity report"),
    "store": ("simlab.store", (), "export a run's tables or merge shard runs"),
    "init": ("simlab.project", (), "write a starter project (config, personas, prompts) to a directory"),
    "view": ("simlab.view.__main__", (), "read every session, human beside simulated, in the browser"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: simlab [COMMAND] [options]   (no COMMAND: run)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "simlab COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name = "run"
    if argv and not argv[0].startswith("-"):
        name = argv.pop(0)
        if name not in COMMANDS:
            print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
            return 2
    module, prefix, _ = COMMANDS[name]
    return int(import_module(module).main([*prefix, *argv]) or 0)


if __name__ == "__main__":
    sys.exit(main())
