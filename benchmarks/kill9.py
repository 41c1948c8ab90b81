"""kill -9 under load: the share of 200s a client received whole that have no ledger row.

Runs the trial of tests/proxy/test_durability.py (`oaigate serve` in front of the embedded mock, 32
aiohttp clients, a mix of JSON and streaming chat, SIGKILL after --kill-after whole answers) against
the checkout --code (default: this one), --trials times, and prints each trial's loss share. A
checkout without `x-oaigate-request-id` is matched by the upstream's `x-request-id` instead.

    python benchmarks/kill9.py [--code /path/to/checkout] [--trials 7] [--kill-after 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.proxy.test_durability import run_trial  # noqa: E402 (found through the path set above)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=REPO, help="Checkout whose gateway is killed.")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--kill-after", type=int, default=300)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--ledger", default="", help='Extra [ledger] lines, e.g. \'synchronous = "full"\'.')
    args = parser.parse_args()
    shares = []
    with tempfile.TemporaryDirectory(prefix="oaigate-kill9-") as tmp:
        for n in range(args.trials):
            trial = run_trial(args.code.resolve(), Path(tmp) / str(n), ledger_extra=args.ledger,
                              kill_after=args.kill_after, connections=args.connections)
            shares.append(trial.loss_share)
            print(f"trial {n}: {len(trial.received)} whole 200s received, {len(trial.missing)} without a row "
                  f"({trial.loss_share:.1%}); integrity_check {trial.integrity}", flush=True)
    print(f"loss share: min {min(shares):.1%}, max {max(shares):.1%}, mean {sum(shares) / len(shares):.1%}")


if __name__ == "__main__":
    main()
