"""Settings: the environment shape, clear refusals, and the README table kept in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feed.errors import ConfigError
from feed.settings import load_settings, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_matches_the_declarations() -> None:
    text = README.read_text()
    block = re.search(
        r"<!-- settings-table:start -->\n(.*?)<!-- settings-table:end -->", text, re.S
    )
    assert block, "README lost its settings table markers"
    rows = [line for line in block.group(1).splitlines() if line.startswith("| `FEED_")]
    expected = [
        f"| `{env}` | `{default}` | {meaning} |" for env, default, meaning in settings_table()
    ]
    assert rows == expected, "regenerate the table with `feed config --table`"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEED_API__BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("FEED_API__LIMIT", "150")
    monkeypatch.setenv("FEED_KAFKA__CONFIG", '{"linger.ms": 5}')
    monkeypatch.setenv("FEED_KAFKA__TRANSACTIONS", "false")
    settings = load_settings()
    assert settings.api.base_url == "http://127.0.0.1:1"
    assert settings.api.limit == 150
    assert settings.kafka.config == {"linger.ms": 5}
    assert settings.kafka.transactions is False


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEED_API__LIMIT", "150")
    monkeypatch.setenv("FEED_API__BASE_URL", "http://127.0.0.1:1")
    settings = load_settings(api={"limit": 20})
    assert settings.api.limit == 20
    assert settings.api.base_url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FEED_API__LIMIT", "500", "FEED_API__LIMIT = '500'"),
        ("FEED_API__LIMIT", "0", "greater than or equal to 1"),
        ("FEED_KAFKA__KEY", "colour", "FEED_KAFKA__KEY = 'colour'"),
        ("FEED_KAFKA__CONFIG", '{"acks": "1"}', "cannot be overridden"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert says in str(caught.value)


def test_secret_is_masked_in_errors_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEED_API__API_KEY", "s3cr3t-key")
    settings = load_settings()
    assert "s3cr3t-key" not in repr(settings)
    assert "s3cr3t-key" not in str(settings.model_dump())
