"""``milter_cpu_affinity``: what the setting accepts and which CPU each worker slot gets."""

from __future__ import annotations

import logging
import os

import pytest

from stronghold import config as config_mod
from stronghold.cpupin import cpu_for, cpu_quota, pin_worker


@pytest.mark.parametrize(("raw", "value"), [("auto", "auto"), ("OFF", "off"), (" 3, 1 ", "3,1"), ("0", "0")])
def test_accepted_values(raw: str, value: str) -> None:
    assert config_mod.load(None, {"milter_cpu_affinity": raw}, environ={}).milter_cpu_affinity == value


@pytest.mark.parametrize("raw", ["", "1,1", "-1", "0,,1", "cpu0", "0-3", "12345"])
def test_refused_values(raw: str) -> None:
    with pytest.raises(config_mod.ConfigError, match="milter_cpu_affinity"):
        config_mod.load(None, {"milter_cpu_affinity": raw}, environ={})


def test_the_default_is_auto() -> None:
    assert config_mod.load(None, {}, environ={}).milter_cpu_affinity == "auto"


def test_slots_take_the_cpus_in_turn() -> None:
    allowed = {2, 5, 7}  # a cpuset need not start at 0 nor be contiguous
    assert [cpu_for("auto", slot, allowed, workers=3) for slot in (1, 2, 3)] == [2, 5, 7]
    assert [cpu_for("7,2", slot, allowed, workers=3) for slot in (1, 2, 3)] == [7, 2, 7]  # a list: as given
    assert [cpu_for("9,5,1", slot, allowed) for slot in (1, 2)] == [5, 5]  # CPUs not allowed: passed over


def test_auto_pins_only_where_each_worker_has_a_cpu_of_its_own() -> None:
    assert cpu_for("auto", 1, {0, 1}, workers=3) is None  # w1 and w3 could never even out
    assert cpu_for("auto", 1, {0, 1, 2, 3}, workers=2, quota=2.0) is None  # a container's quota
    assert cpu_for("auto", 2, {0, 1, 2, 3}, workers=2, quota=4.0) == 1  # a quota as big as the CPUs
    assert cpu_for("auto", 1, {3}) is None  # one CPU: nothing to gain


def test_nothing_to_choose_leaves_the_worker_to_the_kernel() -> None:
    assert cpu_for("off", 1, {0, 1}) is None
    assert cpu_for("4,6", 1, {0, 1}) is None


@pytest.mark.parametrize(("cgroup", "files", "quota"), [
    ("0::/node/a\n", {"node/a/cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    ("4:memory:/x\n3:cpu,cpuacct:/box\n0::/\n",
     {"cpu,cpuacct/box/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/box/cpu.cfs_period_us": "100000\n"}, 1.5),
    ("3:cpu,cpuacct:/box\n", {"cpu,cpuacct/box/cpu.cfs_quota_us": "-1\n",
                               "cpu,cpuacct/box/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
    ("0::/gone\n", {}, None),  # nothing to read
    ("0::/odd\n", {"odd/cpu.max": "lots 0\n"}, None),
])
def test_the_cpu_quota_of_the_cgroup(tmp_path, cgroup: str, files: dict[str, str], quota: float | None) -> None:
    (tmp_path / "cgroup").write_text(cgroup)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    assert cpu_quota(str(tmp_path / "cgroup"), str(tmp_path / "fs")) == quota


def test_a_list_naming_none_of_the_cpus_warns_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    before = os.sched_getaffinity(0)
    with caplog.at_level(logging.WARNING, logger="stronghold.cpupin"):
        assert pin_worker("4095", 1) is None
    assert os.sched_getaffinity(0) == before
    assert "names none of the CPUs" in caplog.text
