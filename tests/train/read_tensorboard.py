#!/usr/bin/env python3
"""Reads a directory of TensorBoard event files with the tensorboard package itself.

Usage: read_tensorboard.py LOGDIR EXPECTED

EXPECTED holds the scalars TensorBoard must show, one point a line, in the order written:
    TAG STEP VALUE
(TAG without whitespace; VALUE as float32, also "nan", "inf", "-inf"). Exits 0 when every
record of every events.out.tfevents.* file passes TensorBoard's CRC checks, each file starts
with the file_version event, and TensorBoard's EventAccumulator shows exactly these scalars;
otherwise prints what differs and exits 1.
"""

import glob
import math
import os
import struct
import sys
import time

try:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
except ImportError as error:
    sys.exit(
        f"read_tensorboard.py: the tensorboard Python package is missing for {sys.executable} "
        f"({error}); deploy/setup.sh installs it into ~/.local/share/tessera/venv"
    )


def as_float32(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def read_expected(path):
    expected = {}  # tag -> [(step, value)]
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            tag, step, value = line.split()
            expected.setdefault(tag, []).append((int(step), as_float32(float(value))))
    return expected


def check_records(path):
    """Every record through TensorBoard's own reader, which checks both CRCs."""
    problems = []
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    events = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            break
        except errors.DataLossError as error:  # a CRC mismatch or a truncated record
            return [f"{path}: record {len(events)}: {error}"]
        events.append(event_pb2.Event.FromString(reader.record()))
    if not events or events[0].WhichOneof("what") != "file_version":
        problems.append(f"{path}: the first event is not a file_version")
    elif events[0].file_version != "brain.Event:2":
        problems.append(f"{path}: file_version {events[0].file_version!r}")
    now = time.time()
    for i, event in enumerate(events):
        if not now - 86400 < event.wall_time <= now + 60:
            problems.append(f"{path}: event {i}: wall_time {event.wall_time} is not about now")
    return problems


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    logdir, expected_path = sys.argv[1], sys.argv[2]
    expected = read_expected(expected_path)
    if not os.path.isdir(logdir):
        sys.exit(f"read_tensorboard.py: {logdir} is not a directory")

    files = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
    problems = [] if files else [f"no events.out.tfevents.* file in {logdir}"]
    for path in files:
        problems += check_records(path)

    # size_guidance 0 keeps every point (the default samples 10,000 per tag).
    accumulator = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    tags = sorted(accumulator.Tags()["scalars"])
    if tags != sorted(expected):
        problems.append(f"scalar tags {tags}, expected {sorted(expected)}")
    for tag in sorted(set(tags) & set(expected)):
        shown = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        want = expected[tag]
        if len(shown) != len(want) or not all(
            s_step == w_step and same(s_value, w_value)
            for (s_step, s_value), (w_step, w_value) in zip(shown, want)
        ):
            problems.append(f"{tag}: TensorBoard shows {shown}, expected {want}")

    for problem in problems:
        print(f"read_tensorboard.py: {problem}", file=sys.stderr)
    if problems:
        return 1
    points = sum(len(v) for v in expected.values())
    print(f"read_tensorboard.py: {len(files)} file(s), {len(tags)} tag(s), {points} point(s) match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
