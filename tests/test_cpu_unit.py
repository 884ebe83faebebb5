"""CPU attribution's pure parts: /proc parsing and the breakdown's sums."""

from __future__ import annotations

import pytest

from meshstress.observe.cpu import (
    CATEGORIES,
    HostTicks,
    breakdown,
    parse_host_stat,
    parse_pid_stat,
    role_category,
    summary_line,
)

STAT = """cpu  100 5 50 800 20 3 7 0 0 0
cpu0 50 2 25 400 10 1 4 0 0 0
intr 12345
"""


def test_parse_host_stat() -> None:
    t = parse_host_stat(STAT)
    assert t == HostTicks(total=985, busy=985 - 800 - 20, interrupts=10)
    with pytest.raises(ValueError):
        parse_host_stat("intr 1\n")


def test_parse_pid_stat_counts_fields_after_the_last_parenthesis() -> None:
    # comm "a) (b c" has spaces and parentheses
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", "170", "30", "4", "6",
              "20", "0", "1", "0", "5000", "100000"]  # fmt: skip
    text = "1234 (a) (b c) " + " ".join(fields) + "\n"
    p = parse_pid_stat(text)
    assert (p.own, p.children, p.start) == (200, 10, 5000)


def test_roles_map_to_categories() -> None:
    assert role_category("babeld") == role_category("batmand") == "routing"
    assert role_category("traffic") == "traffic"
    assert role_category("process") == role_category("user") == "process"


def test_breakdown_sums_to_the_busy_share_and_other_takes_the_rest() -> None:
    before = HostTicks(total=0, busy=0, interrupts=0)
    after = HostTicks(total=2000, busy=1500, interrupts=200)  # 2 cores, 10 s at 100 Hz
    by = {"routing": 300, "traffic": 100, "process": 500, "recorder": 50, "meshstress": 50}
    out = breakdown(before, after, by, cores=2, clk_tck=100)
    assert out["window_s"] == 10.0 and out["busy_share"] == 0.75
    assert out["by"]["process"] == {"cpu_s": 5.0, "share": 0.25}
    assert out["by"]["softirq"]["cpu_s"] == 2.0
    assert out["by"]["other"]["cpu_s"] == 3.0  # 1500 - 1000 - 200 ticks
    assert list(out["by"]) == list(CATEGORIES)
    assert sum(v["share"] for v in out["by"].values()) == pytest.approx(out["busy_share"])
    line = summary_line(out)
    assert line.startswith("CPU 75% busy of 2 cores: routing 15%, traffic 5%, process 25%")


def test_breakdown_never_gives_other_below_zero() -> None:
    out = breakdown(HostTicks(0, 0, 0), HostTicks(1000, 100, 0), {"process": 150}, 1, 100)
    assert out["by"]["other"]["cpu_s"] == 0.0
    assert out["by"]["process"]["cpu_s"] == 1.5
