"""API keys never reach disk: a server that echoes the configured key (in its replies, its error
bodies, a malformed reply) leaves no trace of it in the run's store, any export format or the
report, whatever the key's shape; a key too short to scrub is refused before anything is written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest

from simlab.errors import ConfigError
from simlab.llm.config import OpenAIEndpoint, api_key
from simlab.redaction import REDACTED, Redactor
from simlab.store.readers import export
from simlab.testing import Fault, StubServer
from tests.conftest import stub_config

ENV = "SIMLAB_TEST_ECHOED_KEY"


def _echo(key: str):
    def script(body: dict) -> str | None:
        if body.get("response_format"):
            return None  # structured replies: generated from the schema
        return f"Sure. By the way, you sent me {key} as your key; keep it safe."
    return script


def _faults(key: str) -> list[Fault]:
    error_200 = json.dumps({"error": {"message": f"invalid key {key}", "type": "auth"}})
    completion = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": f'{{"broken": {key}'}}]})
    return [
        Fault(status=500, body=json.dumps({"error": {"message": f"upstream refused Bearer {key}"}})),
        Fault(kind="raw", body=error_200),  # an HTTP 200 carrying an error object
        Fault(kind="raw", body=f"<html>proxy error for {key}</html>", content_type="text/html"),  # not JSON
        Fault(kind="raw", body=completion),  # a reply whose content is broken JSON quoting the key
        # a refusal no retry mends, to one arm's call (the generic assistant's): a call recorded as
        # failed with the server's error body, while the server answers every other call
        Fault(status=400, match="You are a helpful, honest and harmless AI assistant",
              body=json.dumps({"error": {"message": f"bad request for Bearer {key}"}})),
    ]


def _run_echoing(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, report: bool,
                 rounds: int = 1) -> Path:
    """A run whose endpoint's key is ``key`` against a stub that echoes it every way it can."""
    from simlab.config import parse_config
    from simlab.run import run_experiment

    monkeypatch.setenv(ENV, key)
    with StubServer(api_key=key, script=_echo(key)) as server:
        # two sessions (two domains): the first calls meet the faults, the other session runs on
        for _ in range(rounds):  # some calls fail for good (2 attempts each), the rest are retried
            server.add_fault(*_faults(key))
        data = stub_config(server, tmp_path, limit=1, protocol={"domains": ["unguided", "emotional_wellbeing"]}).public_dict()
        data["endpoints"]["local"]["api_key_env"] = ENV
        summary = asyncio.run(run_experiment(parse_config(data), progress=False, report=report))
        assert server.status_counts.get(500, 0) >= 1 and server.status_counts.get(200, 0) > 10
    return summary.run_dir


def _assert_nowhere(key: str, run_dir: Path, tmp_path: Path) -> None:
    """No file of the run, and no file of any export format, holds ``key``; the replies and the
    server's error bodies were stored with the marker in its place."""
    import sqlite3

    needle = key.encode()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert [p.name for p in files if needle in p.read_bytes()] == []
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        texts = [r[0] for r in db.execute("SELECT text FROM turns")]
        errors = [r[0] for r in db.execute("SELECT error FROM llm_calls WHERE error IS NOT NULL")]
    assert any(REDACTED in t for t in texts), texts[:3]
    assert any(REDACTED in e for e in errors), errors  # the server's error bodies quoted it
    for fmt in ("csv", "jsonl", "parquet"):
        out = export(run_dir, tmp_path / f"export-{fmt}", fmt)  # type: ignore[arg-type]
        exported = [p for p in out.rglob("*") if p.is_file()]
        assert exported
        for path in exported:
            assert needle not in path.read_bytes(), path
            if path.suffix == ".parquet":  # compressed: read the values back
                frame = pd.read_parquet(path)
                assert not frame.astype(str).apply(lambda c: c.str.contains(key, regex=False)).any().any(), path
        if fmt == "csv":
            assert REDACTED in (out / "turns.csv").read_text()


def test_an_echoed_key_not_shaped_like_one_reaches_no_store_or_export(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key = "hunter2-not-sk-shaped-123456"
    _assert_nowhere(key, _run_echoing(key, tmp_path, monkeypatch, report=False), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["hunter2-not-sk-shaped-123456", "sk-live-0123456789abcdefXYZ"],
                         ids=["unshaped", "sk-shaped"])
def test_an_echoed_key_reaches_no_store_export_or_report(key: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _run_echoing(key, tmp_path, monkeypatch, report=True, rounds=3)
    assert (run_dir / "report.html").exists()
    _assert_nowhere(key, run_dir, tmp_path)  # report.html is one of the run's files


def test_the_store_scrubs_every_configured_key_from_records_whatever_writes_them(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from simlab.records import LLMCallRecord, SessionFailure
    from simlab.store import RunStore

    key = 'odd"key\\with-quotes-42'  # JSON escapes it inside the stored record
    monkeypatch.setenv(ENV, key)
    store = RunStore.create(tmp_path / "run", {"config": {"endpoints": {"e": {"api_key_env": ENV}}}})
    assert store.redact.secrets == {key}
    store.write_failure(SessionFailure(conversation_id="c1", participant_id="p1", domain="values",
                                       error_type="LLMError", reason=f"server said {key}!"))
    store.write_calls([LLMCallRecord(role="summary", model="m", endpoint="e", error=f"no: {key}", status="error")])
    store.set_meta("note", {"said": [f"{key} twice {key}"]})
    store.close()
    raw = (tmp_path / "run" / "store.sqlite").read_bytes()
    assert key.encode() not in raw and json.dumps(key).encode()[1:-1] not in raw
    with RunStore.open(tmp_path / "run") as again:
        assert again.meta()["note"] == {"said": [f"{REDACTED} twice {REDACTED}"]}
        reason = again.connection.execute("SELECT reason FROM failures").fetchone()[0]
        assert reason == f"server said {REDACTED}!"


def test_a_record_without_a_key_is_written_as_it_is() -> None:
    from simlab.records import LLMCallRecord

    scrub = Redactor(frozenset({"hunter2-not-sk-shaped"}))
    call = LLMCallRecord(role="summary", model="m", endpoint="e", error="nothing secret")
    assert scrub.scrub_model(call) is call
    assert scrub.scrub({"a": ("x hunter2-not-sk-shaped", 3)}) == {"a": (f"x {REDACTED}", 3)}
    assert not Redactor() and Redactor().scrub({"k": "v"}) == {"k": "v"}


def test_a_key_too_short_to_scrub_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "abc123")
    with pytest.raises(ConfigError) as info:
        api_key(OpenAIEndpoint(base_url="http://127.0.0.1:9/v1", api_key_env=ENV))
    text = str(info.value)
    assert ENV in text and "6 characters" in text and "at least 8" in text and "longer key" in text
    assert "abc123" not in text


def test_a_run_with_a_short_key_exits_2_before_writing_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from simlab.run import main

    monkeypatch.setenv(ENV, "short")
    text = (Path(__file__).resolve().parents[1] / "configs" / "local.toml").read_text()
    endpoint = ('kind = "local"          # no base_url: simlab starts the embedded server for the run\n'
                "max_in_flight = 1       # llama.cpp's server runs one request at a time\nn_ctx = 4096\n")
    assert endpoint in text
    text = text.replace(endpoint, f'kind = "vllm"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "{ENV}"\n')
    cfg = tmp_path / "short.toml"
    cfg.write_text(f'out_dir = "{tmp_path / "runs"}"\n' + text)
    assert main(["--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "endpoints.local.api_key_env" in err and ENV in err and "5 characters" in err
    assert not (tmp_path / "runs").exists()
