from __future__ import annotations

from pathlib import Path

import pytest

from archiver.config import ConfigError, Settings, redacted_url


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.session_timeout == 300 and settings.disconnect_grace == 5
    assert settings.fsync == "everysec" and settings.max_message_bytes == 65536
    # ./data, resolved once (watchfiles and the logs see absolute paths).
    assert settings.data_dir == Path("data").resolve() and settings.data_dir.is_absolute()


def test_environment_with_fractions_lists_and_overrides() -> None:
    env = {
        "ARCHIVER_DISCONNECT_GRACE": "0.2",
        "ARCHIVER_FSYNC": "always",
        "ARCHIVER_DATA_DIR": "/srv/data",
        "ARCHIVER_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "ARCHIVER_ACCESS_LOG": "off",
        "ARCHIVER_PORT": "9000",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(env, port=9100, host=None)
    assert settings.disconnect_grace == 0.2 and settings.fsync == "always"
    assert settings.data_dir == Path("/srv/data")
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.access_log is False
    assert settings.port == 9100, "a CLI flag beats the environment"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ARCHIVER_FSYNC": "sometimes"}, "ARCHIVER_FSYNC must be one of always, everysec, no"),
        ({"ARCHIVER_PORT": "eighty"}, "ARCHIVER_PORT='eighty' is not a valid int"),
        ({"ARCHIVER_SESSION_TIMEOUT": "0"}, "ARCHIVER_SESSION_TIMEOUT must be greater than 0"),
        ({"ARCHIVER_JWT_ALGORITHM": "RS256"}, "needs ARCHIVER_JWT_PUBLIC_KEY"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_secrets_are_not_in_repr() -> None:
    assert "hunter2" not in repr(Settings(jwt_secret="hunter2"))


def test_the_broker_is_memory_or_a_redis_url_and_a_refusal_hides_the_password() -> None:
    assert Settings.from_env({}).broker == "memory"
    url = "rediss://user:s3cret@redis.internal:6380/2"
    assert Settings.from_env({"ARCHIVER_BROKER": url}).broker == url
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"ARCHIVER_BROKER": "http://user:s3cret@redis.internal/"})
    assert "ARCHIVER_BROKER" in str(refused.value) and "s3cret" not in str(refused.value)
    assert redacted_url(url) == "rediss://user:***@redis.internal:6380/2"
    assert redacted_url("redis://:pw@h/0") == "redis://:***@h/0"
    assert redacted_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
