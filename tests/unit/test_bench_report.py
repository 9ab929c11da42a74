"""The benchmark report judges each goal from the run's own figures."""

from __future__ import annotations

from bench.throughput import ALONE, OURS, RSPAMD, RunResult, goals


def _run(label: str, conc: int, rate: float, p99_ms: float, cpu: float | None = None, rss: float | None = None,
         lost: int = 0) -> RunResult:
    sent = 100
    return RunResult(label, conc, sent, sent / rate, accepted=sent - lost, latencies=[p99_ms / 1000] * 10,
                     cpu_ms_per_msg=cpu, milter_rss_mb=rss, delivered_in_log=sent - lost)


def _verdicts(results: list[RunResult]) -> dict[str, str]:
    rows = [ln.strip("|").split("|") for ln in goals(results) if ln.startswith("| ") and "goal" not in ln]
    return {goal.strip(): met.strip() for goal, _figure, met in rows}


def test_goals_met_and_missed_are_told_apart() -> None:
    results = [_run(ALONE, 32, 1000, 60), _run(OURS, 32, 750, 90, 2.0, 110), _run(RSPAMD, 32, 700, 80),
               _run(ALONE, 8, 600, 30), _run(OURS, 8, 500, 90, 2.5, 120), _run(RSPAMD, 8, 550, 40)]
    got = _verdicts(results)
    assert got["c=32: at least 0.7x Postfix alone"] == "yes"
    assert got["c=32: more msg/s than rspamd"] == "yes"
    assert got["c=8 (unix socket): more msg/s than rspamd"] == "**no**"
    assert got["c=8: p99 at most Postfix alone + 50 ms"] == "**no**"  # 90 > 30 + 50
    assert got["milter + clamd CPU at most 3 ms/msg (c>1)"] == "yes"
    assert got["milter peak RSS under 200 MB"] == "yes"
    assert got["zero messages lost"] == "yes"


def test_a_lost_message_fails_the_run() -> None:
    results = [_run(ALONE, 8, 600, 30), _run(OURS, 8, 500, 40, 2.5, 120, lost=1)]
    assert _verdicts(results)["zero messages lost"] == "**no**"
