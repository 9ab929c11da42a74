"""CPU per message of the metrics the milter workers record (multiprocess files).

    python -m bench.metrics_cost [--messages 20000]

Times ``PromRecorder.message`` for a decided two-recipient message with six
stage timings, as a worker calls it, in prometheus_client's multiprocess mode
(values in mmap'd files), against the no-op recorder used when metrics are off.
``bench.breakdown --variant metrics_bind=...`` measures the same through Postfix,
where the machine's noise is larger than this cost.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

from stronghold import metrics
from stronghold.findings import Findings
from stronghold.message import parse
from stronghold.outcome import Outcome
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.verdict import Envelope


def _outcome() -> Outcome:
    from stronghold.antivirus import ScanResult
    from stronghold.classifier import Score
    from stronghold.lists import ListIndex
    env = Envelope("a@sender.example", ("m1@example.com", "m2@example.com"), "192.0.2.1", "h", "Q1")
    msg = parse(b"From: a@sender.example\r\nSubject: hi\r\n\r\nhello\r\n")
    found = Findings(scan=ScanResult(None), score=Score(0.2, ()), model_threshold=0.9, lists=ListIndex([]))
    stages = {stage: 0.001 for stage in metrics.STAGES}
    return Outcome(decide(env, msg, found, Policy()), None, 0.002, stages)


def _per_call(recorder: metrics.Recorder, outcome: Outcome, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        recorder.message(outcome)
    return (time.process_time() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="stronghold-metrics-cost-")
    try:
        from stronghold import config
        cfg = config.load(None, {"data_dir": home, "metrics_bind": "127.0.0.1:9464"}, environ={})
        recorder = metrics.enable(cfg)
        outcome = _outcome()
        _per_call(recorder, outcome, 1000)  # warm up: files created, children cached
        off = min(_per_call(metrics.NULL, outcome, args.messages) for _ in range(3))
        on = min(_per_call(recorder, outcome, args.messages) for _ in range(3))
        print(f"metrics off: {off * 1e6:.2f} us/msg; on (multiprocess files): {on * 1e6:.2f} us/msg; "
              f"cost {(on - off) * 1e6:.2f} us/msg CPU")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
