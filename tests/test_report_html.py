"""`meshstress report RUN --html`: one standalone page with the verdict, the checks and
the plots inline; plots come from the run folder without following a planted symlink;
the timeline shows each udp flow's latency over time next to its delivery."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshstress import report, safefs
from meshstress.cli import cli
from meshstress.report import html

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16

RESULTS = {
    "schema_version": report.SCHEMA_VERSION,
    "run": {"scenario": "demo", "source": "demo.toml", "where": "host", "kernel": "6.18",
            "meshstress_version": "0.1.0", "plots": ["timeline.png"]},
    "mesh": {"nodes": 3, "links": 2, "segments": 0, "routing": "static"},
    "flows": {"cbr": {"kind": "udp", "from": "n0", "to": "n2", "sent": 100, "received": 90,
                      "delivery_ratio": 0.9,
                      "series": {"bin_s": 0.5, "t": [0.0, 0.5, 1.0],
                                 "delivery_ratio": [1.0, 0.8, 0.9],
                                 "latency_ms": [0.1, 7.5, 0.2]}}},
    "checks": [
        {"assert": "flows.cbr.delivery_ratio >= 95%", "actual": 0.9, "passed": False},
        {"assert": "flows.cbr.delivery_ratio >= 50% <b>", "actual": 0.9, "passed": True},
    ],
    "passed": False,
}  # fmt: skip


def test_page_holds_verdict_each_check_escaped_and_the_plot_inline() -> None:
    page = html.render(RESULTS, {"timeline.png": PNG})
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<span class="FAILED">FAILED</span>' in page
    assert page.count('<td class="fail">FAIL</td>') == 1
    assert page.count('<td class="pass">PASS</td>') == 1
    assert "&gt;= 50% &lt;b&gt;" in page and "50% <b>" not in page  # input is escaped
    assert f"data:image/png;base64,{base64.b64encode(PNG).decode()}" in page
    assert "src=\"http" not in page and "<link" not in page  # standalone: nothing fetched
    assert f"schema {report.SCHEMA_VERSION}" in page and "meshstress_version 0.1.0" in page


def test_report_html_writes_the_page_from_the_run_folder(tmp_path: Path) -> None:
    results = json.loads(json.dumps(RESULTS))
    report.write_all(results, tmp_path)
    plots = results["run"]["plots"]
    pytest.importorskip("matplotlib", reason="needs matplotlib (python3-matplotlib) for plots")
    assert plots == ["timeline.png"]
    r = CliRunner().invoke(cli, ["report", str(tmp_path), "--html"])
    assert r.exit_code == 1, r.output  # the run failed a check: report exits 1
    page = (tmp_path / "report.html").read_text()
    png = (tmp_path / "timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert base64.b64encode(png).decode() in page


def test_a_plot_planted_as_a_symlink_is_not_read_into_the_page(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x89PNG top secret")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(RESULTS))
    os.symlink(secret, run / "timeline.png")
    page = html.write(run).read_text()
    assert base64.b64encode(b"\x89PNG top secret").decode() not in page
    with pytest.raises(OSError):
        safefs.read_bytes(run, "timeline.png")
    with pytest.raises(ValueError):
        safefs.read_bytes(run, "../secret")


def test_timeline_puts_latency_over_time_on_its_own_labelled_axis(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="needs matplotlib (python3-matplotlib) for plots")
    import matplotlib.pyplot as plt

    made = []
    real = plt.subplots

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        fig, axes = real(*args, **kwargs)
        made.append(fig)
        return fig, axes

    plt.subplots = spy
    try:
        written = report.plot(RESULTS, tmp_path)
    finally:
        plt.subplots = real
    assert [Path(p).name for p in written] == ["timeline.png"]
    labels = {ax.get_ylabel(): ax for ax in made[0].axes}
    assert "delivered (fraction)" in labels and "latency (ms)" in labels
    (line,) = labels["latency (ms)"].get_lines()
    assert list(line.get_ydata()) == [0.1, 7.5, 0.2]
