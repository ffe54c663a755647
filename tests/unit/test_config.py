"""Configuration: defaults < TOML < environment < explicit overrides, with clear refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vsmd.config import DEFAULT_BROKER_URL, Config, load_config
from vsmd.errors import ConfigError


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vsmd.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.broker_url == DEFAULT_BROKER_URL
    assert config.namespace == "vsm"
    assert config.state_dir == Path("/var/lib/vsmd")
    assert config.spawn_strategy == "forkserver"
    assert (config.max_total, config.max_depth, config.max_children) == (500, 8, 200)
    assert (config.spawn_timeout, config.stop_timeout) == (30.0, 5.0)
    assert config.default_agent == "noop"
    assert config.agent_modules == ()


def test_supervision_defaults() -> None:
    config = Config()
    assert (config.default_restart, config.default_on_parent_exit) == ("transient", "terminate")
    assert (config.default_on_child_failure, config.default_quota_action) == ("ignore", "warn")
    assert (config.max_restarts, config.max_seconds) == (5, 60.0)
    assert (config.backoff_initial, config.backoff_max, config.stable_uptime) == (0.1, 30.0, 10.0)
    assert (config.sample_interval, config.quota_violations) == (1.0, 3)
    assert (config.spawn_rate, config.spawn_burst) == (1000.0, 1000)
    assert (config.parent_spawn_rate, config.parent_spawn_burst) == (50.0, 100)
    assert (config.min_available_mb, config.memory_budget_mb, config.event_buffer) == (256, 0, 1000)


def test_supervision_options_from_toml(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[vsmd]
default_restart = "permanent"
default_on_parent_exit = "abandon"
default_on_child_failure = "restart"
default_quota_action = "terminate"
max_restarts = 2
max_seconds = 5
backoff_max = 1.5
spawn_rate = 10
memory_budget_mb = 4096
min_available_mb = 0
""",
    )
    config = load_config(path, env={})
    assert config == dataclasses.replace(
        Config(),
        default_restart="permanent",
        default_on_parent_exit="abandon",
        default_on_child_failure="restart",
        default_quota_action="terminate",
        max_restarts=2,
        max_seconds=5.0,
        backoff_max=1.5,
        spawn_rate=10.0,
        memory_budget_mb=4096,
        min_available_mb=0,
    )
    assert type(config.max_seconds) is float


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[vsmd]
namespace = "prod"
state_dir = "/srv/vsmd"
max_total = 10
spawn_timeout = 2
stop_timeout = 0.5
spawn_strategy = "exec"
agent_modules = ["my.agents", "other.agents"]
log_level = "debug"
""",
    )
    config = load_config(path, env={})
    assert config == dataclasses.replace(
        Config(),
        namespace="prod",
        state_dir=Path("/srv/vsmd"),
        max_total=10,
        spawn_timeout=2.0,
        stop_timeout=0.5,
        spawn_strategy="exec",
        agent_modules=("my.agents", "other.agents"),
        log_level="debug",
    )
    assert type(config.spawn_timeout) is float
    assert isinstance(config.state_dir, Path)


def test_toml_whole_number_float_counts_as_int(tmp_path: Path) -> None:
    config = load_config(write_toml(tmp_path, "[vsmd]\nmax_depth = 3.0\n"), env={})
    assert config.max_depth == 3
    assert type(config.max_depth) is int


def test_vsm_config_env_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[vsmd]\nnamespace = "fromfile"\n')
    assert load_config(None, env={"VSM_CONFIG": str(path)}).namespace == "fromfile"


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[vsmd]
namespace = "fromtoml"
broker_url = "amqp://toml/"
state_dir = "/toml"
max_total = 7
""",
    )
    env = {
        "VSM_NAMESPACE": "fromenv",
        "VSM_BROKER_URL": "amqp://env/",
        "VSM_STATE_DIR": "/env/state",
    }
    config = load_config(path, env=env)
    assert config.namespace == "fromenv"
    assert config.broker_url == "amqp://env/"
    assert config.state_dir == Path("/env/state")
    assert config.max_total == 7  # not set by the environment: the file's value stands


def test_empty_env_values_are_ignored(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[vsmd]\nnamespace = "fromtoml"\n')
    assert load_config(path, env={"VSM_NAMESPACE": ""}).namespace == "fromtoml"


def test_env_spawn_strategy() -> None:
    assert load_config(None, env={"VSM_SPAWN_STRATEGY": "exec"}).spawn_strategy == "exec"


def test_overrides_beat_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[vsmd]\nnamespace = "fromtoml"\nmax_total = 7\n')
    env = {"VSM_NAMESPACE": "fromenv", "VSM_BROKER_URL": "amqp://env/"}
    config = load_config(
        path, env=env, overrides={"namespace": "fromflag", "max_total": 3, "broker_url": None}
    )
    assert config.namespace == "fromflag"
    assert config.max_total == 3
    assert config.broker_url == "amqp://env/"  # a None override means "not given"


def test_overrides_are_coerced() -> None:
    config = load_config(None, env={}, overrides={"state_dir": "/x", "spawn_timeout": 3})
    assert config.state_dir == Path("/x")
    assert config.spawn_timeout == 3.0


def test_unknown_option_in_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[vsmd]\nmax_total = 5\nmax_totl = 6\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "'max_totl'" in info.value.message
    assert str(path) in info.value.message
    assert info.value.code == "CONFIG_INVALID"


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('max_total = "x"', ["max_total", "'x'", "int"]),
        ("max_total = true", ["max_total", "True", "int"]),
        ("max_total = 1.5", ["max_total", "1.5", "int"]),
        ("max_total = 0", ["max_total", "at least 1"]),
        ("max_depth = -3", ["max_depth", "at least 1"]),
        ("heartbeat = [30]", ["heartbeat", "int"]),
        ("spawn_timeout = -1", ["spawn_timeout", "-1", "above 0"]),
        ("stop_timeout = 0", ["stop_timeout", "above 0"]),
        ('spawn_timeout = "soon"', ["spawn_timeout", "'soon'", "float"]),
        ("spawn_timeout = false", ["spawn_timeout", "float"]),
        ('namespace = "Bad Name"', ["namespace", "'Bad Name'", "a-z"]),
        ('namespace = ""', ["namespace", "a-z"]),
        (f'namespace = "{"n" * 33}"', ["namespace", "1-32"]),
        ("namespace = 5", ["namespace", "str"]),
        ('spawn_strategy = "nope"', ["spawn_strategy", "'nope'", "forkserver", "exec"]),
        ('log_level = "LOUD"', ["log_level", "'LOUD'"]),
        ("agent_modules = [1, 2]", ["agent_modules"]),
        ("broker_url = 5672", ["broker_url", "5672"]),
        ('default_restart = "always"', ["default_restart", "'always'", "permanent"]),
        ('default_on_parent_exit = "ignore"', ["default_on_parent_exit", "abandon"]),
        ('default_on_child_failure = "abandon"', ["default_on_child_failure", "ignore"]),
        ('default_quota_action = "kill"', ["default_quota_action", "'kill'", "warn"]),
        ("max_restarts = 0", ["max_restarts", "at least 1"]),
        ("quota_violations = 0", ["quota_violations", "at least 1"]),
        ("spawn_burst = 0", ["spawn_burst", "at least 1"]),
        ("parent_spawn_burst = -1", ["parent_spawn_burst", "at least 1"]),
        ("event_buffer = 0", ["event_buffer", "at least 1"]),
        ("max_seconds = 0", ["max_seconds", "above 0"]),
        ("backoff_initial = -0.1", ["backoff_initial", "above 0"]),
        ("sample_interval = 0", ["sample_interval", "above 0"]),
        ("parent_spawn_rate = 0", ["parent_spawn_rate", "above 0"]),
        ("probe_rate = 0", ["probe_rate", "above 0"]),
        ("min_available_mb = -1", ["min_available_mb", "0 or more"]),
        ("memory_budget_mb = -5", ["memory_budget_mb", "0 or more"]),
        ("max_restarts = 2.5", ["max_restarts", "2.5", "int"]),
    ],
)
def test_bad_values_in_toml(tmp_path: Path, line: str, fragments: list[str]) -> None:
    path = write_toml(tmp_path, f"[vsmd]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("VSM_NAMESPACE", "Bad Name"),
        ("VSM_SPAWN_STRATEGY", "nope"),
    ],
)
def test_bad_values_in_env(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={var: value})
    assert repr(value) in info.value.message


def test_bad_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"max_depth": "deep"})
    assert "max_depth" in info.value.message


@pytest.mark.parametrize("name", ["spawn_timeout", "stop_timeout", "backoff_max", "spawn_rate"])
def test_nan_timeout_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_toml(tmp_path, f"[vsmd]\n{name} = nan\n"), env={})
    assert name in info.value.message
    assert "above 0" in info.value.message


@pytest.mark.parametrize("value", ["nan", "-1.0"])
def test_bad_stable_uptime_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_toml(tmp_path, f"[vsmd]\nstable_uptime = {value}\n"), env={})
    assert "stable_uptime" in info.value.message


@pytest.mark.parametrize("value", ["5", "true", '["/x"]'])
def test_non_string_state_dir_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_toml(tmp_path, f"[vsmd]\nstate_dir = {value}\n"), env={})
    assert "state_dir" in info.value.message
    assert "Path" in info.value.message


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[vsmd\nnamespace = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "not valid TOML" in info.value.message
    assert str(path) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "cannot read config file" in info.value.message
    assert str(path) in info.value.message


def test_vsmd_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_toml(tmp_path, "vsmd = 5\n"), env={})
    assert "[vsmd] must be a table" in info.value.message


def test_config_constructor_validates() -> None:
    with pytest.raises(ConfigError):
        Config(max_children=0)
    with pytest.raises(ConfigError):
        Config(reconnect_max_backoff=0.0)


REPO = Path(__file__).resolve().parents[2]


def test_sample_config_holds_the_defaults() -> None:
    loaded = load_config(REPO / "config" / "vsmd.toml", env={})
    # state_dir is where a packager points it; everything else must match the code's defaults.
    assert dataclasses.replace(loaded, state_dir=Config().state_dir) == Config()


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("true", True), ("0", False)])
def test_gc_freeze_from_env_style_strings(raw: str, expected: bool) -> None:
    assert load_config(overrides={"gc_freeze": raw}, env={}).gc_freeze is expected


def test_gc_freeze_rejects_a_number(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[vsmd]\ngc_freeze = 2\n")
    with pytest.raises(ConfigError, match="gc_freeze"):
        load_config(path, env={})


def test_event_loop_is_one_of_two() -> None:
    assert Config().event_loop == "uvloop"
    assert Config(event_loop="asyncio").event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop"):
        Config(event_loop="trio")
