"""The test run's own set-up (tests/conftest.py): which selections run in one process."""

from __future__ import annotations

import pytest

from tests.conftest import selects_one_process_marks


@pytest.mark.parametrize(("markexpr", "one_process"), [
    ("not slow and not vllm and not topics", False),  # the default run: one worker per core
    ("slow", False),
    ("", False),
    ('vllm or topics', True),  # CI's vLLM step and the README's: the servers are started once
    ("vllm", True),
    ("topics", True),
    ("not slow", True),  # selects the vLLM tests too
])
def test_a_selection_with_vllm_or_topics_tests_runs_in_one_process(markexpr: str, one_process: bool) -> None:
    assert selects_one_process_marks(markexpr) is one_process


def test_auto_workers_follow_the_selection(pytestconfig: pytest.Config) -> None:
    from tests.conftest import pytest_xdist_auto_num_workers

    # this run's own selection is the default's or the slow one's: the hook leaves -n auto alone
    expected = 0 if selects_one_process_marks(pytestconfig.getoption("markexpr") or "") else None
    assert pytest_xdist_auto_num_workers(pytestconfig) == expected
