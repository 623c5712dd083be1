"""How long prepare-volume takes on loop devices, as root.

    python -m tests.benchmarks.prepare_volume [--rounds N]

Prints median (and min/max) wall-clock times of three runs per round, each on a
fresh 2 GiB sparse loop volume: a blank volume partitioned, formatted and mounted;
the same volume found again on a "new server" (unmounted, fresh fstab: checked and
mounted); and a run on the volume already mounted (nothing to do).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.block_devices import LoopVolumes, block_device_skip_reason, link_by_id, run
from tests.support.volume_scripts import Server, new_volume_id

CASES = {
    "blank": "blank 2 GiB volume: partitioned, formatted, mounted",
    "existing": "existing volume on a new server: checked and mounted",
    "mounted": "existing volume already mounted: nothing to do",
}


def timed_prepare(server: Server, volume_id: str, expect_formatted: str) -> float:
    started = time.perf_counter()
    result = server.prepare(volume_id, owner="root")
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or not result.stdout.rstrip().endswith(
        f"formatted={expect_formatted}"
    ):
        raise SystemExit(f"prepare-volume failed:\n{result.stdout}{result.stderr}")
    return elapsed


def one_round(directory: Path, round_number: int) -> dict[str, float]:
    volumes = LoopVolumes(directory)
    first = Server(directory / f"first-{round_number}")
    second = Server(directory / f"second-{round_number}")
    try:
        volume = volumes.make(size_mib=2048, name=f"round-{round_number}")
        volume_id = new_volume_id()
        link_by_id(first.by_id_dir, volume_id, volume.device)
        link_by_id(second.by_id_dir, volume_id, volume.device)
        timings = {"blank": timed_prepare(first, volume_id, "yes")}
        run("umount", str(first.mount_point))
        timings["existing"] = timed_prepare(second, volume_id, "no")
        timings["mounted"] = timed_prepare(second, volume_id, "no")
        return timings
    finally:
        volumes.close()
        first.remove_lock_files()
        second.remove_lock_files()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds to run (default 5)")
    arguments = parser.parse_args(argv)
    reason = block_device_skip_reason()
    if reason:
        print(f"cannot run the benchmark here: {reason}", file=sys.stderr)
        return 2
    samples: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="prepare-volume-benchmark-") as directory:
        for round_number in range(arguments.rounds):
            for case, seconds in one_round(Path(directory), round_number).items():
                samples[case].append(seconds)
    print(f"prepare-volume, {arguments.rounds} rounds on 2 GiB loop volumes")
    for case, description in CASES.items():
        values = samples[case]
        print(
            f"  {description}: median {statistics.median(values):.2f} s"
            f" (min {min(values):.2f}, max {max(values):.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
