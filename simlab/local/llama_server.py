"""The embedded server's process: ``llama_cpp.server`` in one of two modes.

    python -m simlab.local.llama_server --config_file server.json --mode fast|safe

``fast`` is llama.cpp as built. ``safe`` turns off llama.cpp's *extra buffer types*
(weight repacking into CPU-specific layouts, e.g. the AMX kernels of Sapphire Rapids and
later Xeons), which llama-cpp-python does not expose: on some CPUs and kernels that path
dies with SIGILL/SIGSEGV at the first multi-token prompt, while the plain CPU kernels work
and are as fast for a small model. ``LocalServer`` starts ``fast``, probes it with real
requests and restarts in ``safe`` if the process dies by a signal.

``--requantize SOURCE OUT iq4_nl|q8_0`` writes the model requantized once for faster CPU kernels
(in its own process, so a crash there cannot take the caller down).

``SIMLAB_LLAMA_CRASH_IN_MODE=fast`` (test knob; a comma-separated list of modes) makes the
process kill itself with SIGILL at its first chat completion in those modes, as the AMX path
does, so the fallback is exercised on every CPU.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

__all__ = ["CRASH_ENV", "QUANT_TYPES", "main"]

MODES = ("fast", "safe")
CRASH_ENV = "SIMLAB_LLAMA_CRASH_IN_MODE"


def _disable_extra_buffer_types() -> None:
    import llama_cpp.llama_cpp as C

    default = C.llama_model_default_params
    if not any(name == "use_extra_bufts" for name, *_ in C.llama_model_params._fields_):
        return  # an older llama.cpp without the option has no repacked path to avoid

    def params():  # llama_cpp.Llama calls this for every model it loads
        p = default()
        p.use_extra_bufts = False
        return p

    C.llama_model_default_params = params


def _lean_prompt_cache() -> None:
    """Make the RAM prompt cache's capacity true.

    llama-cpp-python's cached state carries a copy of the logits buffer (n_batch × n_vocab
    floats: 100 MB for SmolLM2) that its capacity does not count, so a "256 MiB" cache grew
    many times past it. The copy is never read back: a restored state re-decodes at least one token
    before sampling (``_requires_eval``). Keep its last row only (load_state broadcasts it), and
    count every array of a state against the capacity.
    """
    import llama_cpp.llama as L
    import llama_cpp.llama_cache as LC

    init = L.LlamaState.__init__

    def lean_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if getattr(self, "scores", None) is not None and len(self.scores) > 1:
            self.scores = self.scores[-1:].copy()

    def cache_size(self) -> int:
        return sum(s.llama_state_size + s.scores.nbytes + s.input_ids.nbytes for s in self.cache_state.values())

    L.LlamaState.__init__ = lean_init  # type: ignore[method-assign]
    LC.LlamaRAMCache.cache_size = property(cache_size)  # type: ignore[assignment]


def _crash_at_first_completion() -> None:
    from llama_cpp import Llama

    def crash(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGILL)

    Llama.create_chat_completion = crash  # type: ignore[method-assign]


# name → (llama_ftype, every tensor in that type, ggml_type of the output and token embedding)
QUANT_TYPES: dict[str, tuple[int, bool, int | None]] = {
    "q8_0": (7, False, None),  # LLAMA_FTYPE_MOSTLY_Q8_0
    # LLAMA_FTYPE_MOSTLY_IQ4_NL, all tensors (GGML_TYPE_IQ4_NL = 20): llama.cpp has no AMX kernel
    # for IQ4_NL, so its fast mode repacks the weights for AVX2/AVX-512/NEON instead of taking
    # the AMX path that crashes on some Xeons; the mixed default would put a few tensors in Q5_K,
    # which has an AMX kernel.
    "iq4_nl": (25, True, 20),
}


def requantize(source: str, out: str, quant: str) -> None:
    """Write ``source`` requantized to ``quant`` at ``out`` (atomically: a crash leaves no file)."""
    import ctypes

    import llama_cpp

    ftype, pure, edge_type = QUANT_TYPES[quant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = pure
    if edge_type is not None:
        params.output_tensor_type = edge_type
        params.token_embedding_type = edge_type
    params.allow_requantize = True
    params.nthread = 1
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        rc = llama_cpp.llama_model_quantize(source.encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise SystemExit(f"llama_model_quantize returned {rc}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simlab.local.llama_server")
    parser.add_argument("--config_file", help="llama_cpp.server JSON config")
    parser.add_argument("--mode", choices=MODES, default="fast")
    parser.add_argument("--requantize", nargs=3, metavar=("SOURCE", "OUT", "TYPE"),
                        help=f"write SOURCE requantized to TYPE ({', '.join(QUANT_TYPES)}) at OUT, then exit")
    args = parser.parse_args(argv)
    if args.requantize:
        requantize(*args.requantize)
        return
    if not args.config_file:
        parser.error("--config_file is required")
    _lean_prompt_cache()
    if args.mode == "safe":
        _disable_extra_buffer_types()
    if args.mode in os.environ.get(CRASH_ENV, "").split(","):
        _crash_at_first_completion()
    from llama_cpp.server.__main__ import main as serve

    sys.argv = ["llama_cpp.server", "--config_file", args.config_file]
    serve()


if __name__ == "__main__":
    main()
