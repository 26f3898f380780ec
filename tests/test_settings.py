"""Settings: precedence of the four layers, sources, strict validation and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import ConfigError, Settings, load_settings, resolve_settings
from runtime.settings import env_name, iter_fields


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_any_source(clean_env: Path) -> None:
    resolved = resolve_settings(env={})
    assert resolved.settings == Settings()
    assert set(resolved.sources.values()) == {"default"}
    assert resolved.settings.redis.url is None
    assert resolved.settings.redis.key_prefix == "aw"


def test_precedence_default_file_env_cli(clean_env: Path) -> None:
    config = write(
        clean_env / "aw.toml",
        "[worker]\nconcurrency = 4\nmax_deliveries = 7\nlease_seconds = 20.0\n"
        "[supervisor]\nworkers = 3\n",
    )
    env = {
        "AGENTS_WORKER_WORKER_CONCURRENCY": "8",
        "AGENTS_WORKER_WORKER_MAX_DELIVERIES": "9",
    }
    resolved = resolve_settings(config, env=env, overrides={"worker.concurrency": "12"})
    worker = resolved.settings.worker
    # cli > env > file > default, key by key
    assert worker.concurrency == 12
    assert worker.max_deliveries == 9
    assert worker.lease_seconds == 20.0
    assert resolved.settings.supervisor.workers == 3
    assert worker.shutdown_grace_seconds == 30.0
    assert resolved.sources["worker.concurrency"] == "command line (worker.concurrency)"
    assert resolved.sources["worker.max_deliveries"] == "env AGENTS_WORKER_WORKER_MAX_DELIVERIES"
    assert resolved.sources["worker.lease_seconds"] == str(config)
    assert resolved.sources["worker.shutdown_grace_seconds"] == "default"


def test_default_file_and_env_selected_file(clean_env: Path) -> None:
    (clean_env / "config").mkdir()
    write(clean_env / "config" / "agents-worker.toml", "[worker]\nconcurrency = 5\n")
    assert load_settings(env={}).worker.concurrency == 5
    other = write(clean_env / "other.toml", "[worker]\nconcurrency = 6\n")
    assert load_settings(env={"AGENTS_WORKER_CONFIG": str(other)}).worker.concurrency == 6
    # an explicit file beats the variable
    third = write(clean_env / "third.toml", "[worker]\nconcurrency = 7\n")
    assert load_settings(third, env={"AGENTS_WORKER_CONFIG": str(other)}).worker.concurrency == 7


def test_redis_url_variables(clean_env: Path) -> None:
    plain = resolve_settings(env={"REDIS_URL": "redis://a:6379/0"})
    assert plain.settings.redis.url == "redis://a:6379/0"
    assert plain.sources["redis.url"] == "env REDIS_URL"
    both = resolve_settings(
        env={"REDIS_URL": "redis://a:6379/0", "AGENTS_WORKER_REDIS_URL": "redis://b:6379/1"}
    )
    assert both.settings.redis.url == "redis://b:6379/1"
    flag = load_settings(env={"REDIS_URL": "redis://a"}, overrides={"redis.url": "redis://c"})
    assert flag.redis.url == "redis://c"


def test_env_text_is_converted(clean_env: Path) -> None:
    settings = load_settings(
        env={
            "AGENTS_WORKER_REDIS_EMBEDDED_UNIX_SOCKET": "true",
            "AGENTS_WORKER_REDIS_EMBEDDED_MODULES": "search, json",
            "AGENTS_WORKER_REDIS_SOCKET_TIMEOUT": "2.5",
            "AGENTS_WORKER_REDIS_EMBEDDED_PASSWORD": "",
        }
    )
    assert settings.redis.embedded.unix_socket is True
    assert settings.redis.embedded.modules == ["search", "json"]
    assert settings.redis.socket_timeout == 2.5
    assert settings.redis.embedded.password is None
    as_json = load_settings(env={"AGENTS_WORKER_REDIS_EMBEDDED_MODULES": '["bloom"]'})
    assert as_json.redis.embedded.modules == ["bloom"]
    empty = load_settings(env={"AGENTS_WORKER_REDIS_EMBEDDED_MODULES": ""})
    assert empty.redis.embedded.modules == []


def test_unknown_key_in_file_names_key_file_and_suggestion(clean_env: Path) -> None:
    config = write(clean_env / "aw.toml", "[worker]\nconcurency = 4\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, env={})
    message = str(err.value)
    assert str(config) in message
    assert "'worker.concurency'" in message
    assert "did you mean 'worker.concurrency'" in message


def test_unknown_section_in_file(clean_env: Path) -> None:
    config = write(clean_env / "aw.toml", "[wrker]\nconcurrency = 4\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'wrker'"):
        load_settings(config, env={})


def test_section_given_as_value(clean_env: Path) -> None:
    config = write(clean_env / "aw.toml", "worker = 3\n")
    with pytest.raises(ConfigError, match=r"worker is a section"):
        load_settings(config, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[worker]\nconcurrency = "4"\n', "worker.concurrency = '4': expected `int`, got `str`"),
        ("[worker]\nconcurrency = 0\n", "worker.concurrency = 0: expected `int` >= 1"),
        (
            "[redis.embedded]\nport = 70000\n",
            "redis.embedded.port = 70000: expected `int` <= 65535",
        ),
        ('[redis.embedded]\nmodules = ["vector"]\n', "redis.embedded.modules"),
        ('[observability]\nlog_level = "LOUD"\n', "observability.log_level = 'LOUD'"),
        ("[redis.embedded]\nappendonly = 1\n", "expected `bool`, got `int`"),
    ],
)
def test_wrong_type_in_file(clean_env: Path, text: str, expected: str) -> None:
    config = write(clean_env / "aw.toml", text)
    with pytest.raises(ConfigError) as err:
        load_settings(config, env={})
    assert str(err.value).startswith(f"{config}: ")
    assert expected in str(err.value)


def test_wrong_type_in_env_names_variable(clean_env: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"AGENTS_WORKER_WORKER_CONCURRENCY": "many"})
    assert "env AGENTS_WORKER_WORKER_CONCURRENCY: worker.concurrency = 'many'" in str(err.value)


def test_unknown_env_variable_is_refused(clean_env: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"AGENTS_WORKER_WORKER_CONCURENCY": "3"})
    assert "AGENTS_WORKER_WORKER_CONCURENCY is not a setting" in str(err.value)
    assert "did you mean AGENTS_WORKER_WORKER_CONCURRENCY" in str(err.value)
    # variables that are not settings but belong to the project are accepted
    load_settings(env={"AGENTS_WORKER_TEST_REDIS_URL": "redis://x"})


def test_unknown_override_is_refused(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"command line: unknown setting 'worker.threads'"):
        load_settings(env={}, overrides={"worker.threads": "3"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost:6379", "must start with redis://, rediss:// or unix://"),
        ("redis://", "names no host"),
        ("redis://localhost:notaport", "is not a valid URL"),
        ("redis://localhost:6379/zero", "the database after the host must be a number"),
        ("unix://", "names no socket path"),
    ],
)
def test_bad_url_names_source(clean_env: Path, url: str, expected: str) -> None:
    config = write(clean_env / "aw.toml", f'[redis]\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config, env={})
    assert str(err.value).startswith(f"{config}: redis.url: ")
    assert expected in str(err.value)
    with pytest.raises(ConfigError, match=r"env REDIS_URL: redis\.url: "):
        load_settings(env={"REDIS_URL": url})


def test_good_urls_are_accepted(clean_env: Path) -> None:
    for url in ("redis://h:1/0", "rediss://:pw@h.example:6380/2", "unix:///tmp/r.sock?db=1"):
        assert load_settings(env={"REDIS_URL": url}).redis.url == url


def test_bad_key_prefix(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"redis\.key_prefix: key prefix '\{aw\}'"):
        load_settings(env={"AGENTS_WORKER_REDIS_KEY_PREFIX": "{aw}"})


def test_bad_toml_and_missing_file(clean_env: Path) -> None:
    broken = write(clean_env / "aw.toml", "[worker\nconcurrency = 4\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(clean_env / "nope.toml", env={})


def test_passwords_are_redacted_in_repr(clean_env: Path) -> None:
    settings = load_settings(
        env={
            "REDIS_URL": "redis://user:hunter2@cache:6379/0",
            "AGENTS_WORKER_REDIS_EMBEDDED_PASSWORD": "opensesame",
        }
    )
    assert settings.redis.url == "redis://user:hunter2@cache:6379/0"
    text = repr(settings) + str(settings.redis) + repr(settings.redis.embedded)
    assert "hunter2" not in text
    assert "opensesame" not in text
    assert "redis://user:***@cache:6379/0" in text
    assert "password='***'" in text


def test_secret_is_not_echoed_in_errors(clean_env: Path) -> None:
    config = write(clean_env / "aw.toml", "[redis.embedded]\npassword = 12345\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, env={})
    assert "12345" not in str(err.value)
    assert "redis.embedded.password = ***" in str(err.value)


def test_environment_names_are_unique() -> None:
    names = [spec.env for spec in iter_fields()]
    assert len(names) == len(set(names))
    assert env_name("redis.embedded.port") == "AGENTS_WORKER_REDIS_EMBEDDED_PORT"


def test_settings_are_frozen(clean_env: Path) -> None:
    settings = load_settings(env={})
    with pytest.raises(AttributeError):
        settings.worker.concurrency = 3  # type: ignore[misc]


def test_block_must_be_shorter_than_socket_timeout(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"worker\.block_ms \(6000\) must be shorter"):
        load_settings(env={"AGENTS_WORKER_WORKER_BLOCK_MS": "6000"})


def test_socket_timeout_must_outlast_a_wait_for_a_run(clean_env: Path) -> None:
    """A wait for an agent run blocks up to 1 s per read: a shorter socket timeout would make
    every idle wait fail (and run_and_wait raise after its submit went through)."""
    with pytest.raises(ConfigError, match=r"redis\.socket_timeout \(1 s\) must be more than"):
        load_settings(
            env={"AGENTS_WORKER_REDIS_SOCKET_TIMEOUT": "1", "AGENTS_WORKER_WORKER_BLOCK_MS": "500"}
        )
    fine = {"AGENTS_WORKER_REDIS_SOCKET_TIMEOUT": "1.5", "AGENTS_WORKER_WORKER_BLOCK_MS": "500"}
    assert load_settings(env=fine).redis.socket_timeout == 1.5
