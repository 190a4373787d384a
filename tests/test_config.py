"""Configuration: REER_MEMORY_* variables, setup_memory_limits, NN% of the effective limit, cgroup trees."""

from __future__ import annotations

import math
from pathlib import Path

import psutil
import pytest

from reer_otel_memory import (
    ConfigurationError,
    MemoryLevel,
    MemoryLimit,
    effective_memory_limit,
    get_config,
    load_config,
    set_memory_limit,
    setup_memory_limits,
)
from reer_otel_memory import config as config_module

MB = 1024 * 1024
GIB = 1024 * MB
LIMIT_8_GIB = MemoryLimit(8 * GIB, "test limit")
# What cgroup v1 writes for "no limit": LONG_MAX rounded down to a page.
V1_UNLIMITED = "9223372036854771712"


# --- environment variables -------------------------------------------------------------------


def test_defaults_follow_the_spec():
    config = load_config({}, limit=LIMIT_8_GIB)
    assert config.alert_bytes == 1000 * MB
    assert config.cleanup_bytes == 1500 * MB
    assert config.critical_bytes == 2000 * MB
    assert config.monitoring_interval_s == 30.0
    assert (config.alert_mb, config.cleanup_mb, config.critical_mb) == (1000.0, 1500.0, 2000.0)
    assert config.sources["alert"].startswith("default")


def test_environment_sets_every_value():
    env = {
        "REER_MEMORY_ALERT_MB": "800",
        "REER_MEMORY_CLEANUP_MB": " 1200.5 ",
        "REER_MEMORY_CRITICAL_MB": "1600",
        "REER_MEMORY_MONITORING_INTERVAL": "2.5",
    }
    config = load_config(env, limit=LIMIT_8_GIB)
    assert config.alert_bytes == 800 * MB
    assert config.cleanup_bytes == int(1200.5 * MB)
    assert config.critical_bytes == 1600 * MB
    assert config.monitoring_interval_s == 2.5
    assert "REER_MEMORY_ALERT_MB=800" in config.sources["alert"]


def test_empty_variables_mean_the_default():
    config = load_config({"REER_MEMORY_ALERT_MB": "", "REER_MEMORY_MONITORING_INTERVAL": "  "}, limit=LIMIT_8_GIB)
    assert config.alert_bytes == 1000 * MB
    assert config.monitoring_interval_s == 30.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("25%", 2 * GIB),
        ("12.5%", GIB),
        (" 50% ", 4 * GIB),
        ("100%", 8 * GIB),
    ],
)
def test_percentage_of_the_effective_limit(value, expected):
    config = load_config(
        {"REER_MEMORY_ALERT_MB": value, "REER_MEMORY_CLEANUP_MB": "100%", "REER_MEMORY_CRITICAL_MB": "100%"},
        limit=LIMIT_8_GIB,
    )
    assert config.alert_bytes == expected
    assert "test limit" in config.sources["alert"]


BAD_THRESHOLDS = [
    # (value, words the message must contain besides the name and the value)
    ("lots", "number of MB"),
    ("800MB", "number of MB"),
    ("0", "positive"),
    ("-5", "positive"),
    ("nan", "positive"),
    ("inf", "positive"),
    ("%", "percentage"),
    ("abc%", "percentage"),
    ("150%", "at most 100%"),
    ("0%", "above 0%"),
    ("-10%", "above 0%"),
    ("nan%", "percentage"),
    ("1e-9", "less than one byte"),
    ("0.00000000001%", "less than one byte"),
]


@pytest.mark.parametrize("variable", ["REER_MEMORY_ALERT_MB", "REER_MEMORY_CLEANUP_MB", "REER_MEMORY_CRITICAL_MB"])
@pytest.mark.parametrize(("value", "expected_words"), BAD_THRESHOLDS)
def test_bad_threshold_variable_is_refused_with_a_clear_message(variable, value, expected_words):
    with pytest.raises(ConfigurationError) as caught:
        load_config({variable: value}, limit=LIMIT_8_GIB)
    message = str(caught.value)
    assert variable in message
    assert repr(value) in message
    assert expected_words in message


@pytest.mark.parametrize(
    ("value", "expected_words"), [("soon", "positive number of seconds"), ("0", "positive"), ("-1", "positive"), ("nan", "positive"), ("inf", "positive")]
)
def test_bad_interval_variable_is_refused_with_a_clear_message(value, expected_words):
    with pytest.raises(ConfigurationError) as caught:
        load_config({"REER_MEMORY_MONITORING_INTERVAL": value}, limit=LIMIT_8_GIB)
    message = str(caught.value)
    assert "REER_MEMORY_MONITORING_INTERVAL" in message
    assert repr(value) in message
    assert expected_words in message


@pytest.mark.parametrize(
    ("env", "low", "high"),
    [
        ({"REER_MEMORY_ALERT_MB": "1600"}, "REER_MEMORY_ALERT_MB", "REER_MEMORY_CLEANUP_MB"),
        ({"REER_MEMORY_CLEANUP_MB": "2500"}, "REER_MEMORY_CLEANUP_MB", "REER_MEMORY_CRITICAL_MB"),
        ({"REER_MEMORY_ALERT_MB": "90%", "REER_MEMORY_CLEANUP_MB": "50%", "REER_MEMORY_CRITICAL_MB": "95%"}, "REER_MEMORY_ALERT_MB", "REER_MEMORY_CLEANUP_MB"),
    ],
)
def test_unordered_thresholds_are_refused_naming_both(env, low, high):
    with pytest.raises(ConfigurationError) as caught:
        load_config(env, limit=LIMIT_8_GIB)
    message = str(caught.value)
    assert low in message and high in message
    assert "alert <= cleanup <= critical" in message
    # The value as given appears, so a percentage is recognisable.
    assert env.get(low, "") in message


def test_equal_thresholds_are_allowed():
    config = load_config({"REER_MEMORY_ALERT_MB": "1000", "REER_MEMORY_CLEANUP_MB": "1000", "REER_MEMORY_CRITICAL_MB": "1000"}, limit=LIMIT_8_GIB)
    assert config.alert_bytes == config.cleanup_bytes == config.critical_bytes


def test_level_for_uses_thresholds_inclusively():
    config = load_config({"REER_MEMORY_ALERT_MB": "10", "REER_MEMORY_CLEANUP_MB": "20", "REER_MEMORY_CRITICAL_MB": "30"}, limit=LIMIT_8_GIB)
    assert config.level_for(10 * MB - 1) is MemoryLevel.OK
    assert config.level_for(10 * MB) is MemoryLevel.ALERT
    assert config.level_for(20 * MB) is MemoryLevel.CLEANUP
    assert config.level_for(30 * MB) is MemoryLevel.CRITICAL
    assert config.threshold_bytes(MemoryLevel.CLEANUP) == 20 * MB
    assert config.threshold_bytes(MemoryLevel.OK) == 0


def test_levels_order_by_severity():
    ordered = [MemoryLevel.OK, MemoryLevel.ALERT, MemoryLevel.CLEANUP, MemoryLevel.CRITICAL]
    assert sorted(reversed(ordered)) == ordered
    assert [level.rank for level in ordered] == [0, 1, 2, 3]
    assert [str(level) for level in ordered] == ["ok", "alert", "cleanup", "critical"]
    assert MemoryLevel.ALERT >= MemoryLevel.ALERT > MemoryLevel.OK
    assert MemoryLevel("cleanup") is MemoryLevel.CLEANUP


# --- cgroup trees ----------------------------------------------------------------------------


def build_tree(root: Path, proc_cgroup_text: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup mount under ``root`` with ``files`` (relative path -> content) and a /proc/self/cgroup."""
    mount = root / "cgroup"
    mount.mkdir()
    for relative, content in files.items():
        path = mount / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    proc_cgroup = root / "proc_self_cgroup"
    proc_cgroup.write_text(proc_cgroup_text)
    return mount, proc_cgroup


def limit_in(tmp_path: Path, proc_cgroup_text: str, files: dict[str, str], physical_bytes: int = 64 * GIB) -> MemoryLimit:
    mount, proc_cgroup = build_tree(tmp_path, proc_cgroup_text, files)
    return effective_memory_limit(cgroup_root=mount, proc_cgroup=proc_cgroup, physical_bytes=physical_bytes)


def test_v2_memory_max_at_the_leaf(tmp_path):
    limit = limit_in(tmp_path, "0::/service/worker\n", {"service/worker/memory.max": str(GIB), "service/memory.max": "max"})
    assert limit.bytes == GIB
    assert limit.source.startswith("cgroup v2") and "service/worker/memory.max" in limit.source


def test_v2_memory_max_at_a_parent_binds_the_child(tmp_path):
    limit = limit_in(tmp_path, "0::/service/worker\n", {"service/worker/memory.max": "max", "service/memory.max": str(512 * MB)})
    assert limit.bytes == 512 * MB
    assert limit.source.endswith("service/memory.max")


def test_v2_smallest_along_the_path_wins(tmp_path):
    limit = limit_in(
        tmp_path,
        "0::/a/b/c\n",
        {"a/b/c/memory.max": str(3 * GIB), "a/b/memory.max": str(2 * GIB), "a/memory.max": str(5 * GIB)},
    )
    assert limit.bytes == 2 * GIB


def test_v2_max_everywhere_means_physical_ram(tmp_path):
    limit = limit_in(tmp_path, "0::/a/b\n", {"a/b/memory.max": "max", "a/memory.max": "max"}, physical_bytes=16 * GIB)
    assert limit == MemoryLimit(16 * GIB, "physical RAM")


def test_v1_limit_up_the_hierarchy(tmp_path):
    limit = limit_in(
        tmp_path,
        "12:pids:/x\n4:memory:/docker/abc\n0::/\n",
        {"memory/docker/abc/memory.limit_in_bytes": V1_UNLIMITED, "memory/docker/memory.limit_in_bytes": str(2 * GIB)},
    )
    assert limit.bytes == 2 * GIB
    assert limit.source.startswith("cgroup v1") and limit.source.endswith("memory/docker/memory.limit_in_bytes")


def test_v1_leaf_limit_and_combined_controllers(tmp_path):
    limit = limit_in(tmp_path, "3:cpu,memory:/job\n", {"memory/job/memory.limit_in_bytes": str(768 * MB), "memory/memory.limit_in_bytes": V1_UNLIMITED})
    assert limit.bytes == 768 * MB


def test_v1_unlimited_means_physical_ram(tmp_path):
    files = {"memory/job/memory.limit_in_bytes": V1_UNLIMITED, "memory/memory.limit_in_bytes": V1_UNLIMITED}
    limit = limit_in(tmp_path, "4:memory:/job\n", files, physical_bytes=12 * GIB)
    assert limit == MemoryLimit(12 * GIB, "physical RAM")


def test_v1_namespaced_container_whose_leaf_is_not_mounted(tmp_path):
    # Inside a container the mount shows the container's own cgroup as the root, while
    # /proc/self/cgroup still names the host path: the root's limit applies.
    limit = limit_in(tmp_path, "4:memory:/kubepods/pod1/c1\n", {"memory/memory.limit_in_bytes": str(3 * GIB)})
    assert limit.bytes == 3 * GIB


def test_smallest_of_v1_v2_and_ram_wins(tmp_path):
    text = "4:memory:/app\n0::/app\n"
    v1_smaller = {"app/memory.max": str(4 * GIB), "memory/app/memory.limit_in_bytes": str(3 * GIB)}
    v2_smaller = {"app/memory.max": str(GIB), "memory/app/memory.limit_in_bytes": str(3 * GIB)}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    v1_wins = limit_in(tmp_path / "a", text, v1_smaller)
    assert v1_wins.bytes == 3 * GIB and v1_wins.source.startswith("cgroup v1")
    v2_wins = limit_in(tmp_path / "b", text, v2_smaller)
    assert v2_wins.bytes == GIB and v2_wins.source.startswith("cgroup v2")
    assert limit_in(tmp_path / "c", text, v1_smaller, physical_bytes=2 * GIB) == MemoryLimit(2 * GIB, "physical RAM")


def test_unreadable_or_garbage_files_mean_no_limit(tmp_path):
    limit = limit_in(tmp_path, "0::/a\n", {"a/memory.max": "lots", "memory.max": ""}, physical_bytes=8 * GIB)
    assert limit.source == "physical RAM"
    missing = effective_memory_limit(cgroup_root=tmp_path / "nowhere", proc_cgroup=tmp_path / "no_cgroup_file", physical_bytes=5 * GIB)
    assert missing == MemoryLimit(5 * GIB, "physical RAM")


def test_physical_ram_by_default(tmp_path):
    limit = effective_memory_limit(cgroup_root=tmp_path, proc_cgroup=tmp_path / "absent")
    assert limit.bytes == psutil.virtual_memory().total


def test_hybrid_layout_reads_cgroup_v2_under_unified(tmp_path):
    files = {"unified/cgroup.controllers": "memory pids", "unified/svc/memory.max": str(3 * GIB), "memory.max": str(GIB)}
    limit = limit_in(tmp_path, "4:memory:/\n0::/svc\n", files, physical_bytes=16 * GIB)
    assert limit.bytes == 3 * GIB and limit.source.startswith("cgroup v2 ") and "unified" in limit.source


def test_percentage_of_a_cgroup_limit_through_load_config(tmp_path):
    mount, proc_cgroup = build_tree(tmp_path, "0::/svc\n", {"svc/memory.max": str(4 * GIB)})
    config = load_config(
        {"REER_MEMORY_ALERT_MB": "50%", "REER_MEMORY_CLEANUP_MB": "75%", "REER_MEMORY_CRITICAL_MB": "90%"},
        cgroup_root=mount,
        proc_cgroup=proc_cgroup,
    )
    assert config.limit.bytes == 4 * GIB
    assert config.alert_bytes == 2 * GIB
    assert config.cleanup_bytes == 3 * GIB
    assert config.critical_bytes == int(4 * GIB * 0.9)


def test_this_machine_has_a_sane_limit():
    limit = effective_memory_limit()
    assert 0 < limit.bytes <= psutil.virtual_memory().total


# --- setup_memory_limits / set_memory_limit --------------------------------------------------


def test_setup_memory_limits_sets_the_process_wide_config():
    config = setup_memory_limits(alert_mb=800.0, critical_mb=1600.0, cleanup_mb=1200.0)
    assert get_config() is config
    assert (config.alert_bytes, config.cleanup_bytes, config.critical_bytes) == (800 * MB, 1200 * MB, 1600 * MB)
    assert "alert_mb" in config.sources["alert"]


def test_omitted_arguments_keep_their_value():
    setup_memory_limits(alert_mb=100, cleanup_mb=200, critical_mb=300, monitoring_interval=5)
    config = setup_memory_limits(cleanup_mb=250)
    assert (config.alert_bytes, config.cleanup_bytes, config.critical_bytes) == (100 * MB, 250 * MB, 300 * MB)
    assert config.monitoring_interval_s == 5.0


def test_set_memory_limit_sets_the_critical_threshold():
    setup_memory_limits(alert_mb=100, cleanup_mb=200, critical_mb=300)
    config = set_memory_limit(1500.0)
    assert config.critical_bytes == 1500 * MB
    assert (config.alert_bytes, config.cleanup_bytes) == (100 * MB, 200 * MB)
    assert get_config().critical_bytes == 1500 * MB


def test_percentages_in_code_use_the_effective_limit():
    limit_bytes = get_config().limit.bytes
    config = setup_memory_limits(alert_mb="50%", cleanup_mb="60%", critical_mb="70%")
    assert config.alert_bytes == limit_bytes // 2
    assert config.critical_bytes == int(limit_bytes * 0.7)


def test_numbers_of_any_real_type_are_accepted():
    import fractions

    config = setup_memory_limits(alert_mb=fractions.Fraction(1, 2), cleanup_mb=1, critical_mb=2.0)
    assert config.alert_bytes == MB // 2


@pytest.mark.parametrize(
    ("kwargs", "argument", "value", "expected_words"),
    [
        ({"alert_mb": "lots"}, "alert_mb", "'lots'", "number of MB"),
        ({"alert_mb": 0}, "alert_mb", "0", "positive"),
        ({"cleanup_mb": -1.0}, "cleanup_mb", "-1.0", "positive"),
        ({"critical_mb": float("nan")}, "critical_mb", "nan", "positive"),
        ({"critical_mb": math.inf}, "critical_mb", "inf", "positive"),
        ({"alert_mb": True}, "alert_mb", "True", "number of MB"),
        ({"alert_mb": "150%"}, "alert_mb", "'150%'", "at most 100%"),
        ({"alert_mb": "%"}, "alert_mb", "'%'", "percentage"),
        ({"alert_mb": [800]}, "alert_mb", "[800]", "not list"),
        ({"alert_mb": 3000}, "alert_mb", "3000", "alert <= cleanup <= critical"),
        ({"critical_mb": 100}, "critical_mb", "100", "alert <= cleanup <= critical"),
        ({"monitoring_interval": 0}, "monitoring_interval", "0", "positive number of seconds"),
        ({"monitoring_interval": "soon"}, "monitoring_interval", "'soon'", "positive number of seconds"),
        ({"monitoring_interval": False}, "monitoring_interval", "False", "positive number of seconds"),
    ],
)
def test_bad_argument_is_refused_and_the_previous_config_stays(kwargs, argument, value, expected_words):
    before = setup_memory_limits(alert_mb=1000, cleanup_mb=1500, critical_mb=2000, monitoring_interval=30)
    with pytest.raises(ConfigurationError) as caught:
        setup_memory_limits(**kwargs)
    message = str(caught.value)
    assert f"{argument}={value}" in message
    assert expected_words in message
    assert get_config() is before


def test_set_memory_limit_below_cleanup_is_refused():
    before = setup_memory_limits(alert_mb=100, cleanup_mb=200, critical_mb=300)
    with pytest.raises(ConfigurationError, match=r"critical_mb=150"):
        set_memory_limit(150)
    with pytest.raises(ConfigurationError, match=r"critical_mb='nope'"):
        set_memory_limit("nope")
    assert get_config() is before


def test_configuration_error_is_a_value_error():
    with pytest.raises(ValueError):
        set_memory_limit(-1)


def test_setup_without_arguments_rereads_the_environment(monkeypatch):
    setup_memory_limits(alert_mb=100, cleanup_mb=200, critical_mb=300)
    monkeypatch.setenv("REER_MEMORY_ALERT_MB", "700")
    monkeypatch.setenv("REER_MEMORY_CLEANUP_MB", "800")
    monkeypatch.setenv("REER_MEMORY_CRITICAL_MB", "900")
    monkeypatch.setenv("REER_MEMORY_MONITORING_INTERVAL", "7")
    config = setup_memory_limits()
    assert (config.alert_bytes, config.cleanup_bytes, config.critical_bytes) == (700 * MB, 800 * MB, 900 * MB)
    assert config.monitoring_interval_s == 7.0
    assert get_config() is config


def test_setup_without_arguments_refuses_a_bad_environment(monkeypatch):
    before = setup_memory_limits(alert_mb=100, cleanup_mb=200, critical_mb=300)
    monkeypatch.setenv("REER_MEMORY_CRITICAL_MB", "-3")
    with pytest.raises(ConfigurationError, match="REER_MEMORY_CRITICAL_MB='-3'"):
        setup_memory_limits()
    assert get_config() is before


def test_listeners_hear_every_change():
    heard = []
    config_module.add_config_listener(heard.append)
    try:
        config = setup_memory_limits(alert_mb=111, cleanup_mb=222, critical_mb=333)
        with pytest.raises(ConfigurationError):
            setup_memory_limits(alert_mb=-1)
    finally:
        config_module.remove_config_listener(heard.append)
    setup_memory_limits(alert_mb=112)
    assert heard == [config]


# --- ranges, number syntax, booleans, every problem at once ----------------------------------


@pytest.mark.parametrize("variable", ["REER_MEMORY_ALERT_MB", "REER_MEMORY_CLEANUP_MB", "REER_MEMORY_CRITICAL_MB"])
@pytest.mark.parametrize("value", ["1e308", "1e400", "1073741825", "inf", "-inf", "nan"])
def test_a_threshold_above_one_pib_or_not_finite_is_refused_naming_the_range(variable, value):
    with pytest.raises(ConfigurationError) as caught:
        load_config({variable: value}, limit=LIMIT_8_GIB)
    assert f"{variable}={value!r}: expected a positive number of MB (1 MB = 1048576 bytes) up to 1073741824 (1 PiB)" in str(caught.value)


def test_a_threshold_of_exactly_one_pib_is_accepted():
    config = load_config({"REER_MEMORY_ALERT_MB": "1", "REER_MEMORY_CLEANUP_MB": "2", "REER_MEMORY_CRITICAL_MB": "1073741824"}, limit=LIMIT_8_GIB)
    assert config.critical_bytes == 1 << 50


@pytest.mark.parametrize("value", ["1e10", "86400.1", "0.099", "1e-9", "0"])
def test_an_interval_outside_a_tenth_of_a_second_to_a_day_is_refused(value):
    with pytest.raises(ConfigurationError) as caught:
        load_config({"REER_MEMORY_MONITORING_INTERVAL": value}, limit=LIMIT_8_GIB)
    assert f"REER_MEMORY_MONITORING_INTERVAL={value!r}: expected a positive number of seconds from 0.1 to 86400 (1 day)" in str(caught.value)


@pytest.mark.parametrize("value", ["0.1", "86400", "1e3", " 2.5 ", "+7"])
def test_intervals_at_and_inside_the_range_are_accepted(value):
    assert load_config({"REER_MEMORY_MONITORING_INTERVAL": value}, limit=LIMIT_8_GIB).monitoring_interval_s == float(value)


@pytest.mark.parametrize("value", ["\uff11\uff10", "1_000", "\u0661\u0660", "0x10", "10 MB", "1,5", "١٠%", "5_0%"])
def test_only_ascii_decimal_numbers_are_numbers(value):
    with pytest.raises(ConfigurationError) as caught:
        load_config({"REER_MEMORY_ALERT_MB": value}, limit=LIMIT_8_GIB)
    assert f"REER_MEMORY_ALERT_MB={value!r}" in str(caught.value)
    with pytest.raises(ConfigurationError, match="REER_MEMORY_MONITORING_INTERVAL"):
        load_config({"REER_MEMORY_MONITORING_INTERVAL": value}, limit=LIMIT_8_GIB)


def test_numbers_given_in_code_have_the_same_ranges():
    before = setup_memory_limits(alert_mb=1000, cleanup_mb=1500, critical_mb=2000, monitoring_interval=30)
    for kwargs, text in [
        ({"critical_mb": 1e308}, "critical_mb=1e+308: expected a positive number of MB"),
        ({"critical_mb": 10**400}, "up to 1073741824 (1 PiB)"),
        ({"monitoring_interval": 1e10}, "monitoring_interval=10000000000.0: expected a positive number of seconds from 0.1 to 86400"),
        ({"monitoring_interval": 1e-9}, "monitoring_interval=1e-09"),
        ({"monitoring_interval": "１０"}, "monitoring_interval='１０'"),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            setup_memory_limits(**kwargs)
        assert text in str(caught.value)
    assert get_config() is before


def test_every_conflict_is_reported_at_once():
    with pytest.raises(ConfigurationError) as caught:
        load_config({"REER_MEMORY_ALERT_MB": "2000", "REER_MEMORY_CRITICAL_MB": "1000"}, limit=LIMIT_8_GIB)
    message = str(caught.value)
    assert "REER_MEMORY_ALERT_MB='2000' (2000 MB) is above REER_MEMORY_CLEANUP_MB=1500 MB (unchanged)" in message
    assert "REER_MEMORY_CLEANUP_MB=1500 MB (unchanged) is above REER_MEMORY_CRITICAL_MB='1000' (1000 MB)" in message


def test_every_bad_variable_is_reported_at_once():
    env = {"REER_MEMORY_ALERT_MB": "lots", "REER_MEMORY_CRITICAL_MB": "inf", "REER_MEMORY_MONITORING_INTERVAL": "1e10"}
    with pytest.raises(ConfigurationError) as caught:
        load_config(env, limit=LIMIT_8_GIB)
    for variable, value in env.items():
        assert f"{variable}={value!r}" in str(caught.value)
    config, problem = config_module.load_config_with_fallbacks(env)
    assert (config.alert_mb, config.critical_mb, config.monitoring_interval_s) == (1000.0, 2000.0, 30.0)
    assert problem is not None and problem.endswith(
        "using the default for REER_MEMORY_ALERT_MB and REER_MEMORY_CRITICAL_MB and REER_MEMORY_MONITORING_INTERVAL instead"
    )


def test_code_arguments_report_every_problem_at_once():
    with pytest.raises(ConfigurationError) as caught:
        setup_memory_limits(alert_mb="lots", critical_mb=-1, monitoring_interval=0)
    message = str(caught.value)
    assert "alert_mb='lots'" in message and "critical_mb=-1" in message and "monitoring_interval=0" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("ON", True), (" yes ", True), ("true", True), ("0", False), ("Off", False), ("no", False), ("FALSE", False), ("", True)],
)
def test_boolean_variables_accept_the_documented_words(value, expected):
    assert config_module.parse_bool("REER_MEMORY_RESET_PEAK", value, default=True) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "y", "ｏｎ"])
def test_boolean_variables_refuse_other_words_naming_the_accepted_ones(value):
    with pytest.raises(ConfigurationError) as caught:
        config_module.parse_bool("REER_MEMORY_RESET_PEAK", value, default=True)
    assert str(caught.value) == (
        f"REER_MEMORY_RESET_PEAK={value!r}: expected one of 1, true, yes, on (on) or 0, false, no, off (off)"
    )


def test_an_unknown_reset_peak_word_logs_one_line_and_keeps_the_default(caplog):
    from reer_otel_memory.profiling.probe import _reset_wanted

    with caplog.at_level("ERROR"):
        assert _reset_wanted({"REER_MEMORY_RESET_PEAK": "maybe"}) is True
    assert [r.getMessage() for r in caplog.records] == [
        "reer_otel_memory: REER_MEMORY_RESET_PEAK='maybe': expected one of 1, true, yes, on (on) or 0, false, no, off (off); "
        "using the default (on) instead"
    ]
    assert _reset_wanted({"REER_MEMORY_RESET_PEAK": "off"}) is False


OVERFLOWING_SERVICE = """
import json, logging, signal
logging.basicConfig(level=logging.ERROR)
import reer_otel_memory as rom
from reer_otel_memory import MemoryMonitor, memory_context, setup_memory_limits, start_memory_monitoring
from reer_otel_memory.ml.resources import MemoryResourceManager

config = rom.get_config()
monitor = start_memory_monitoring()
other_mb = MemoryMonitor().alert_threshold_mb
try:
    with memory_context("x"):
        raise KeyError("mine")
except KeyError as exc:
    user_error = repr(exc)
try:
    MemoryResourceManager().register_resource("r", object(), memory_limit_mb=1e308)
except rom.ConfigurationError as exc:
    resource_error = str(exc)
setup_memory_limits(alert_mb=10)
print(json.dumps({"alert_mb": config.alert_mb, "interval": config.monitoring_interval_s, "running": monitor.is_running,
                  "other": other_mb, "user_error": user_error, "resource_error": resource_error}), flush=True)
"""


def test_a_service_with_overflowing_values_starts_with_defaults_and_one_log_line(tmp_path):
    import subprocess
    import sys

    from _children import clean_environment

    script = tmp_path / "service.py"
    script.write_text(OVERFLOWING_SERVICE)
    env = clean_environment({"REER_MEMORY_ALERT_MB": "1e308", "REER_MEMORY_MONITORING_INTERVAL": "1e10"})
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["alert_mb"] == 1000.0 and report["interval"] == 30.0
    assert report["running"] is True and report["other"] == 1000.0
    assert report["user_error"] == "KeyError('mine')"
    assert "memory_limit_mb=1e+308): expected a positive number of MB up to 1073741824 (1 PiB)" in report["resource_error"]
    errors = [line for line in done.stderr.splitlines() if "REER_MEMORY" in line]
    assert len(errors) == 1, done.stderr
    assert "REER_MEMORY_ALERT_MB='1e308'" in errors[0] and "REER_MEMORY_MONITORING_INTERVAL='1e10'" in errors[0]


# --- numeric arguments ---------------------------------------------------------------------------


def test_a_refused_number_names_the_argument_its_value_and_what_was_expected():
    with pytest.raises(ConfigurationError, match=r"^Thing\(size=0\): expected at least 1$"):
        config_module.checked_number(0, 1, whole=True, where="Thing", name="size", expected="expected at least 1")
    with pytest.raises(ConfigurationError, match=r"^size=-1\.5: expected a number >= 0$"):
        config_module.checked_number(-1.5, 0, name="size", expected="expected a number >= 0")


@pytest.mark.parametrize("value", [True, False, 2.0, "2", None, [2], 1 + 0j])
def test_a_whole_number_is_an_int_never_a_bool_float_or_string(value):
    with pytest.raises(ConfigurationError):
        config_module.checked_number(value, 0, whole=True, name="n", expected="expected a whole number")


def test_a_whole_number_is_returned_as_it_came_however_large():
    huge = 10**400
    assert config_module.checked_number(huge, 1, whole=True, name="n", expected="") is huge
    assert config_module.checked_number(65535, 0, 65535, whole=True, name="port", expected="") == 65535
    with pytest.raises(ConfigurationError):
        config_module.checked_number(65536, 0, 65535, whole=True, name="port", expected="")


@pytest.mark.parametrize("value", [True, "1", math.nan, None])
def test_a_number_is_never_a_bool_string_or_nan(value):
    with pytest.raises(ConfigurationError):
        config_module.checked_number(value, 0, name="x", expected="expected a number")


def test_infinity_is_in_range_only_where_the_upper_bound_is_infinite_and_inclusive():
    assert config_module.checked_number(math.inf, 0, name="x", expected="") == math.inf
    with pytest.raises(ConfigurationError):
        config_module.checked_number(math.inf, 0, math.inf, high_inclusive=False, name="x", expected="")
    with pytest.raises(ConfigurationError):
        config_module.checked_number(math.inf, 0, 1e6, name="x", expected="")
    assert config_module.checked_number(0.5, 0, 1, low_inclusive=False, name="x", expected="") == 0.5
    with pytest.raises(ConfigurationError):
        config_module.checked_number(0, 0, 1, low_inclusive=False, name="x", expected="")
