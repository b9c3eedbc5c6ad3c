"""Personas: the sample set, the JSONL and PRISM loaders, renderings and the cached summary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from simlab.errors import InputError, LLMError
from simlab.personas import (
    PREF_ATTRIBUTES,
    Persona,
    SummaryArtefact,
    input_hash,
    load_holdout,
    load_personas,
    load_prism,
    render_persona,
    summarize,
    summary_cache_path,
)
from simlab.prompts import template_hash

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "personas" / "sample.jsonl"


@pytest.fixture(scope="module")
def sample() -> list[Persona]:
    return load_personas(SAMPLE)


def _record(persona_id: str = "p1", **changes: Any) -> dict[str, Any]:
    """A valid persona record in simlab's JSONL shape."""
    record: dict[str, Any] = {
        "persona_id": persona_id,
        "age": "35-44 years old",
        "gender": "Female",
        "education": "Vocational",
        "employment_status": "Working part-time",
        "marital_status": "Married",
        "english_proficiency": "Fluent",
        "religion": {"self_described": "Lutheran", "categorised": "Christian", "simplified": "Christian"},
        "ethnicity": "Sami",
        "location": {"birth_country": "Norway", "reside_country": "Sweden"},
        "lm_familiarity": "Somewhat familiar",
        "lm_frequency_use": "Every month",
        "stated_prefs": {a: 50 for a in PREF_ATTRIBUTES},
        "self_description": "I value quiet honesty and long walks.",
        "system_string": "Answer briefly and never flatter me.",
        "conversations": [
            {
                "conversation_id": f"{persona_id}-c1",
                "conversation_type": "unguided",
                "opening_prompt": "How do I prune apple trees?",
                "turns": [
                    {
                        "turn": 0,
                        "user_message": "How do I prune apple trees?",
                        "chosen": {"content": "Cut in late winter, remove crossing branches.", "score": 80},
                        "rejected": [{"content": "Consult an arborist.", "score": 20}],
                    }
                ],
                "open_feedback": "The short practical one was best.",
            }
        ],
    }
    record.update(changes)
    return record


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- sample set


def test_sample_set_is_large_diverse_and_unique(sample: list[Persona]) -> None:
    assert len(sample) >= 12
    assert len({p.persona_id for p in sample}) == len(sample)
    assert len({p.location.reside_country for p in sample if p.location}) >= 8
    assert len({p.location.reside_region for p in sample if p.location}) >= 4  # continents
    ages = {p.age for p in sample}
    assert {"18-24 years old", "65+ years old"} <= ages and len(ages) >= 5
    assert len({p.gender for p in sample}) >= 3
    assert len({p.religion.label for p in sample if p.religion}) >= 5
    assert len({p.employment_status for p in sample}) >= 4
    assert len({p.lm_familiarity for p in sample}) >= 2
    for p in sample:
        assert 1 <= len(p.conversations) <= 3
        assert p.self_description.strip() and p.system_string.strip()
        for c in p.conversations:
            assert c.open_feedback and c.turns and c.turns[0].user_message == c.opening_prompt
            for t in c.turns:
                assert t.chosen is not None and t.rejected
                # PRISM's chosen response is the one the participant scored highest.
                assert all(t.chosen.score >= r.score for r in t.rejected)  # type: ignore[operator]


def test_demographics_rendering_has_fields_but_no_free_text(sample: list[Persona]) -> None:
    for p in sample:
        prompt = render_persona(p, "demographics")
        assert prompt.name == "persona/demographics.j2"
        assert prompt.hash == template_hash("persona/demographics.j2")
        text = prompt.text
        assert p.age in text and p.gender in text and p.education in text  # type: ignore[operator]
        assert p.location.reside_country in text and p.religion.label in text  # type: ignore[union-attr,operator]
        assert f"helpful responses relevant to their requests: {p.stated_prefs.helpfulness}" in text
        assert p.self_description not in text and p.system_string not in text
        # Nothing from the prior conversations leaks into the structured rendering either.
        assert p.conversations[0].opening_prompt not in text


def test_profile_rendering_adds_free_text(sample: list[Persona]) -> None:
    for p in sample:
        text = render_persona(p, "profile").text
        assert p.self_description in text and p.system_string in text
        assert p.age in text and p.location.birth_country in text  # type: ignore[operator,union-attr]
        assert f"summarises multiple viewpoints or different worldviews: {p.stated_prefs.diversity}" in text


def test_summary_rendering_needs_the_summary(sample: list[Persona]) -> None:
    p = sample[0]
    text = render_persona(p, "summary", summary="  Prefers practical, concrete advice.  ").text
    assert "Prefers practical, concrete advice." in text
    assert p.self_description not in text
    for missing in (None, "   "):
        with pytest.raises(ValueError, match="needs summary"):
            render_persona(p, "summary", summary=missing)
    with pytest.raises(ValueError, match="unknown rendering"):
        render_persona(p, "biography")  # type: ignore[arg-type]


def test_untrusted_text_is_not_executed(tmp_path: Path) -> None:
    hostile = "{{ 7 * 7 }} {% for x in range(3) %}loop{% endfor %} {{ persona.__class__ }}"
    persona = Persona.model_validate(_record(self_description=hostile))
    text = render_persona(persona, "profile").text
    assert hostile in text and "49" not in text and "looploop" not in text


def test_plain_strings_are_accepted_for_nested_fields() -> None:
    persona = Persona.model_validate(_record(religion="Muslim", ethnicity="Sami", location="Sweden", age=41))
    assert persona.religion is not None and persona.religion.label == "Muslim"
    assert persona.location is not None and persona.location.reside_country == "Sweden"
    assert persona.age == "41"
    assert "Sami" in render_persona(persona, "demographics").text


# ---------------------------------------------------------------------------- simlab JSONL loader


def test_load_personas_round_trip_and_holdout(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [_record("a"), "", _record("b")])
    personas = load_personas(path)
    assert [p.persona_id for p in personas] == ["a", "b"]
    assert personas[0].conversations[0].domain == "unguided"
    held = load_personas(path, holdout={"a-c1"})
    assert held[0].conversations == [] and len(held[1].conversations) == 1


def test_load_holdout_reads_one_id_per_line(tmp_path: Path) -> None:
    path = tmp_path / "holdout.txt"
    path.write_text("# evaluation targets\nc1\n\n  c3  # second\n")
    assert load_holdout(path) == {"c1", "c3"}
    path.write_text("c1\nc2 c3\n")
    with pytest.raises(InputError) as info:
        load_holdout(path)
    assert (info.value.file, info.value.row, info.value.field) == (str(path), 2, "conversation_id")


def _bad(field_path: str, value: Any) -> dict[str, Any]:
    record = _record("bad")
    target: Any = record
    *parents, last = field_path.split(".")
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return record


_DELETE = object()

MALFORMED = [
    # (id, line 3 content, expected field; None where no field can be named)
    ("missing_field", _bad("self_description", _DELETE), "self_description"),
    ("wrong_type", _bad("stated_prefs.safety", "very"), "stated_prefs.safety"),
    ("pref_above_100", _bad("stated_prefs.values", 150), "stated_prefs.values"),
    ("pref_below_0", _bad("stated_prefs.creativity", -1), "stated_prefs.creativity"),
    ("missing_pref", _bad("stated_prefs.fluency", _DELETE), "stated_prefs.fluency"),
    ("unknown_field", _record("bad", favourite_colour="green"), "favourite_colour"),
    ("nested_wrong_type", _bad("location", 42), "location"),
    ("bad_conversation_type", _bad("conversations.0.conversation_type", "chitchat"), "conversations.0.conversation_type"),
    ("score_out_of_range", _bad("conversations.0.turns.0.chosen.score", 0), "conversations.0.turns.0.chosen.score"),
    ("unsafe_persona_id", _record("../../etc/passwd"), "persona_id"),
    ("duplicate_persona_id", _record("a"), "persona_id"),
    ("malformed_json", '{"persona_id": "x", ', None),
    ("not_an_object", "[1, 2, 3]", None),
]


@pytest.mark.parametrize(("case", "line", "field"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_load_personas_names_file_line_and_field(tmp_path: Path, case: str, line: Any, field: str | None) -> None:
    path = _write_jsonl(tmp_path / "personas.jsonl", [_record("a"), _record("b"), line, _record("c")])
    with pytest.raises(InputError) as info:
        load_personas(path)
    err = info.value
    assert err.file == str(path) and err.row == 3 and err.field == field, str(err)
    assert str(path) in str(err) and ":3:" in str(err)


def test_load_personas_rejects_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_personas(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="no personas"):
        load_personas(_write_jsonl(tmp_path / "empty.jsonl", [""]))


# ---------------------------------------------------------------------------- PRISM loader


def _survey(user_id: str, **changes: Any) -> dict[str, Any]:
    """A row in the shape of PRISM's survey.jsonl (including columns simlab ignores)."""
    row: dict[str, Any] = {
        "user_id": user_id,
        "survey_only": False,
        "num_completed_conversations": 2,
        "consent": "Yes",
        "lm_familiarity": "Very familiar",
        "lm_indirect_use": "Yes",
        "lm_direct_use": "Yes",
        "lm_frequency_use": "Every day",
        "self_description": f"I am {user_id} and I value fairness.",
        "system_string": "Be direct and cite evidence.",
        "age": "25-34 years old",
        "gender": "Male",
        "employment_status": "Working full-time",
        "education": "University Bachelors Degree",
        "marital_status": "Never been married",
        "english_proficiency": "Native speaker",
        "religion": {"self_described": "none really", "categorised": "Non-religious", "simplified": "No Affiliation"},
        "ethnicity": {"self_described": "white british", "categorised": "White", "simplified": "White"},
        "location": {
            "birth_country": "United Kingdom",
            "birth_countryISO": "GBR",
            "birth_region": "Europe",
            "birth_subregion": "Northern Europe",
            "reside_country": "Chile",
            "reside_countryISO": "CHL",
            "reside_region": "Americas",
            "reside_subregion": "Latin America and the Caribbean",
            "same_birth_reside_country": "No",
            "special_region": "UK",
            "not_a_key_simlab_knows": 1,
        },
        "lm_usecases": {"research": 1, "games": 0},
        "stated_prefs": {**{a: 10 * i for i, a in enumerate(PREF_ATTRIBUTES)}, "other": None},
        "order_stated_prefs": {a: i for i, a in enumerate(PREF_ATTRIBUTES)},
        "timing_duration_s": 812.0,
        "generated_datetime": "2023-11-22 13:19:27",
    }
    row.update(changes)
    return row


def _utt(turn: int, role: str, content: str, **extra: Any) -> dict[str, Any]:
    base = {"turn": turn, "role": role, "content": content, "model_provider": None, "model_name": None,
            "score": None, "if_chosen": None, "within_turn_id": None}
    if role == "model":
        base["model_provider"] = "openai"
    base.update(extra)
    return base


def _conversation(conversation_id: str, user_id: str, ctype: str = "values guided", **changes: Any) -> dict[str, Any]:
    """A row in the shape of PRISM's conversations.jsonl: a flat history with scored responses."""
    row: dict[str, Any] = {
        "conversation_id": conversation_id,
        "user_id": user_id,
        "generated_datetime": "2023-11-22 13:40:00",
        "timing_duration_s": 300.0,
        "conversation_type": ctype,
        "opening_prompt": f"Opening of {conversation_id}",
        "conversation_turns": 2,
        "conversation_history": [
            _utt(0, "user", f"Opening of {conversation_id}"),
            # Listed out of within_turn_id order on purpose: the loader sorts them.
            _utt(0, "model", "Response B", model_name="gpt-4", score=30, if_chosen=False, within_turn_id=1),
            _utt(0, "model", "Response A", model_name="claude-2", score=85, if_chosen=True, within_turn_id=0),
            _utt(0, "model", "Response D", model_name="command", score=50, if_chosen=False, within_turn_id=3),
            _utt(0, "model", "Response C", model_name="palm-2", score=10, if_chosen=False, within_turn_id=2),
            _utt(1, "user", "Tell me more"),
            _utt(1, "model", "More A", model_name="claude-2", score=70, if_chosen=True, within_turn_id=0),
            _utt(1, "model", "More B", model_name="claude-2", score=40, if_chosen=False, within_turn_id=1),
        ],
        "performance_attributes": {"values": 80},
        "choice_attributes": {"values": 1},
        "open_feedback": f"Feedback on {conversation_id}",
        "included_in_balanced_subset": True,
    }
    row.update(changes)
    return row


def _prism_files(tmp_path: Path, survey: list[Any], conversations: list[Any]) -> tuple[Path, Path]:
    return _write_jsonl(tmp_path / "survey.jsonl", survey), _write_jsonl(tmp_path / "conversations.jsonl", conversations)


def test_load_prism_builds_personas_and_excludes_holdout(tmp_path: Path) -> None:
    survey, convs = _prism_files(
        tmp_path,
        [_survey("user0"), _survey("user1", religion="Hindu", age=52), _survey("user2")],
        [
            _conversation("c0", "user0", "unguided"),
            _conversation("c1", "user0", "controversy guided"),
            _conversation("c2", "user1", "values guided"),
            _conversation("c3", "user1", "unguided", open_feedback=None),
        ],
    )
    personas = load_prism(survey, convs, holdout={"c1", "c3"})
    by_id = {p.persona_id: p for p in personas}
    assert list(by_id) == ["user0", "user1", "user2"]

    user0 = by_id["user0"]
    assert user0.location is not None and user0.location.birth_countryISO == "GBR"
    assert user0.location.reside_country == "Chile" and user0.location.special_region == "UK"
    assert user0.religion is not None and user0.religion.categorised == "Non-religious"
    assert user0.stated_prefs.model_dump() == {a: 10 * i for i, a in enumerate(PREF_ATTRIBUTES)}
    assert [c.conversation_id for c in user0.conversations] == ["c0"]  # c1 held out

    conversation = user0.conversations[0]
    assert conversation.domain == "unguided" and conversation.open_feedback == "Feedback on c0"
    first, second = conversation.turns
    assert first.user_message == "Opening of c0"
    assert first.chosen is not None and first.chosen.content == "Response A" and first.chosen.score == 85
    assert first.chosen.model_name == "claude-2"
    assert [r.content for r in first.rejected] == ["Response B", "Response C", "Response D"]
    assert second.chosen is not None and second.chosen.content == "More A"
    assert [(r.content, r.score) for r in second.rejected] == [("More B", 40)]

    user1 = by_id["user1"]
    assert user1.age == "52" and user1.religion is not None and user1.religion.label == "Hindu"
    assert [c.conversation_id for c in user1.conversations] == ["c2"]
    assert user1.conversations[0].domain == "values"
    assert by_id["user2"].conversations == []  # survey-only participant

    # Without a hold-out everything is kept, and the hold-out changes what the summary is built from.
    full = {p.persona_id: p for p in load_prism(survey, convs)}
    assert [c.conversation_id for c in full["user0"].conversations] == ["c0", "c1"]
    assert input_hash(full["user0"]) != input_hash(user0)

    # PRISM's nested location reaches the renderings.
    text = render_persona(user0, "profile").text
    assert "Chile" in text and "I am user0" in text


PRISM_MALFORMED = [
    # (id, which file is bad, bad row, field)
    ("survey_missing_user_id", "survey", {k: v for k, v in _survey("u9").items() if k != "user_id"}, "user_id"),
    ("survey_pref_out_of_range", "survey", _survey("u9", stated_prefs={**{a: 50 for a in PREF_ATTRIBUTES}, "safety": 101}), "stated_prefs.safety"),
    ("survey_missing_pref", "survey", _survey("u9", stated_prefs={a: 50 for a in PREF_ATTRIBUTES[:-1]}), "stated_prefs.helpfulness"),
    ("survey_wrong_type", "survey", _survey("u9", self_description=["not", "text"]), "self_description"),
    ("survey_duplicate_user", "survey", _survey("user0"), "user_id"),
    ("conv_unknown_user", "conversations", _conversation("c9", "ghost"), "user_id"),
    ("conv_bad_role", "conversations",
     _conversation("c9", "user0", conversation_history=[_utt(0, "user", "hi"), _utt(0, "assistant", "hello")]),
     "conversation_history.1.role"),
    ("conv_bad_score", "conversations",
     _conversation("c9", "user0", conversation_history=[_utt(0, "user", "hi"), _utt(0, "model", "x", score=101, if_chosen=True)]),
     "conversation_history.1.score"),
    ("conv_two_chosen", "conversations",
     _conversation("c9", "user0", conversation_history=[
         _utt(0, "user", "hi"), _utt(0, "model", "x", score=9, if_chosen=True), _utt(0, "model", "y", score=9, if_chosen=True)]),
     "conversation_history"),
    ("conv_bad_type", "conversations", _conversation("c9", "user0", "free chat"), "conversation_type"),
    ("conv_duplicate_id", "conversations", _conversation("c0", "user0"), "conversation_id"),
]


@pytest.mark.parametrize(("case", "which", "row", "field"), PRISM_MALFORMED, ids=[m[0] for m in PRISM_MALFORMED])
def test_load_prism_names_file_line_and_field(tmp_path: Path, case: str, which: str, row: Any, field: str) -> None:
    survey_rows: list[Any] = [_survey("user0"), _survey("user1")]
    conv_rows: list[Any] = [_conversation("c0", "user0"), _conversation("c1", "user1")]
    (survey_rows if which == "survey" else conv_rows).append(row)  # the bad row is line 3
    survey, convs = _prism_files(tmp_path, survey_rows, conv_rows)
    with pytest.raises(InputError) as info:
        load_prism(survey, convs)
    err = info.value
    expected_file = survey if which == "survey" else convs
    assert (err.file, err.row, err.field) == (str(expected_file), 3, field), str(err)


def test_load_prism_malformed_json_names_the_line(tmp_path: Path) -> None:
    survey, convs = _prism_files(tmp_path, [_survey("user0")], [_conversation("c0", "user0"), "{oops"])
    with pytest.raises(InputError) as info:
        load_prism(survey, convs)
    assert (info.value.file, info.value.row) == (str(convs), 2) and "malformed JSON" in str(info.value)


# ---------------------------------------------------------------------------- summary artefact


class RecordingGenerate:
    """An async ``generate`` that answers from a list and records the messages it was sent."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.calls: list[list[dict[str, str]]] = []

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        self.calls.append(messages)
        return self.replies[min(len(self.calls), len(self.replies)) - 1]


async def test_summarize_calls_once_then_reuses_the_cache(sample: list[Persona], tmp_path: Path) -> None:
    persona = sample[0]
    generate = RecordingGenerate("  She prefers concrete, locally realistic advice.  ", "A second summary.")
    first = await summarize(persona, generate, model="openai/gpt-4o-mini", cache_dir=tmp_path)

    assert len(generate.calls) == 1
    assert first.text == "She prefers concrete, locally realistic advice."
    assert first.persona_id == persona.persona_id and first.model == "openai/gpt-4o-mini"
    assert first.prompt_hash == template_hash("persona/summary_request.j2")
    assert first.input_hash == input_hash(persona) and re.fullmatch(r"[0-9a-f]{64}", first.input_hash)
    assert first.created_at.tzinfo is not None

    # The request carries what PROTOCOL §3 asks the summary to be built from.
    (message,) = generate.calls[0]
    assert message["role"] == "user"
    conversation = persona.conversations[0]
    for needle in (persona.self_description, persona.system_string, conversation.open_feedback,
                   conversation.turns[0].chosen.content, conversation.turns[0].rejected[0].content,  # type: ignore[union-attr]
                   "CHOSEN", "Rejected", "hidden preferences", "neutral"):
        assert needle in message["content"], needle

    expected = tmp_path / (
        f"{persona.persona_id}-openai_gpt-4o-mini-{first.prompt_hash}-{first.input_hash[:12]}.json"
    )
    assert summary_cache_path(persona, model="openai/gpt-4o-mini", cache_dir=tmp_path) == expected
    assert [p.name for p in tmp_path.iterdir()] == [expected.name]  # no temporary files left behind
    assert SummaryArtefact.model_validate_json(expected.read_text()) == first

    again = await summarize(persona, generate, model="openai/gpt-4o-mini", cache_dir=tmp_path)
    assert len(generate.calls) == 1  # served from the cache
    assert again == first

    # A different model or a changed persona is a different artefact.
    await summarize(persona, generate, model="other-model", cache_dir=tmp_path)
    changed = persona.without({conversation.conversation_id})
    other = await summarize(changed, generate, model="openai/gpt-4o-mini", cache_dir=tmp_path)
    assert len(generate.calls) == 3
    assert other.input_hash != first.input_hash
    assert len(list(tmp_path.glob("*.json"))) == 3


async def test_summarize_rejects_an_empty_reply(sample: list[Persona], tmp_path: Path) -> None:
    generate = RecordingGenerate("   \n ")
    with pytest.raises(LLMError, match="empty summary"):
        await summarize(sample[1], generate, model="m", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing cached


async def test_summarize_replaces_an_unreadable_cache_file(sample: list[Persona], tmp_path: Path) -> None:
    persona = sample[2]
    path = summary_cache_path(persona, model="m", cache_dir=tmp_path)
    path.write_text("{ truncated")
    generate = RecordingGenerate("Fresh summary.")
    artefact = await summarize(persona, generate, model="m", cache_dir=tmp_path)
    assert artefact.text == "Fresh summary." and len(generate.calls) == 1
    assert SummaryArtefact.model_validate_json(path.read_text()).text == "Fresh summary."


def test_input_hash_is_canonical(sample: list[Persona]) -> None:
    persona = sample[0]
    reordered = Persona.model_validate(json.loads(json.dumps(persona.model_dump(mode="json"), sort_keys=True)))
    assert input_hash(reordered) == input_hash(persona)
    assert input_hash(persona.model_copy(update={"age": "35-44 years old"})) != input_hash(persona)


def test_a_partial_is_in_the_hash_of_every_template_that_includes_it(tmp_path, monkeypatch):
    import hashlib
    import shutil

    from simlab.prompts import prompts_dir

    root = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), root)
    monkeypatch.setenv("SIMLAB_PROMPTS_DIR", str(root))
    users = ("persona/demographics.j2", "persona/profile.j2", "persona/summary_request.j2")
    before = {name: template_hash(name) for name in users}
    plain = "simulator/opening.j2"  # includes nothing: its hash is its bytes' hash, as before partials
    assert template_hash(plain) == hashlib.sha256((root / plain).read_bytes()).hexdigest()[:12]
    partial = root / "persona" / "_survey_answers.j2"
    partial.write_text(partial.read_text() + "- Favourite colour: {{ 'not given' }}\n")
    after = {name: template_hash(name) for name in users}
    assert all(before[n] != after[n] for n in users)
    assert template_hash(plain) == hashlib.sha256((root / plain).read_bytes()).hexdigest()[:12]


def test_persona_text_that_no_prompt_should_carry_is_refused_with_its_row(tmp_path):
    from simlab.personas import MAX_RECORD_BYTES, MAX_TEXT_CHARS, load_personas

    sample = Path("personas/sample.jsonl").read_text().splitlines()
    first = json.loads(sample[0])

    def write(name: str, obj: dict | str) -> Path:
        path = tmp_path / name
        path.write_text(sample[1] + "\n" + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        return path

    long_words = {**first, "self_description": "x" * (MAX_TEXT_CHARS + 1)}
    with pytest.raises(InputError, match="self_description") as info:
        load_personas(write("long.jsonl", long_words))
    assert info.value.row == 2
    huge = {**first, "conversations": [], "extra_padding_never_read": "y" * MAX_RECORD_BYTES}
    with pytest.raises(InputError, match="MiB; the limit is 2 MiB") as info:
        load_personas(write("huge.jsonl", huge))
    assert info.value.row == 2
    surrogate = json.dumps({**first, "system_string": "be kind"}).replace("be kind", "be \\ud800kind")
    with pytest.raises(InputError, match=r"lone surrogate \(\\ud800\)") as info:
        load_personas(write("surrogate.jsonl", surrogate))
    assert info.value.row == 2
