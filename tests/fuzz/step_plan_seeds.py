#!/usr/bin/env python3
"""Writes the seed corpus of step_plan_fuzzer (corpus/step_plan) from the plans below, in the
fuzzer's framing: each serialized StepPlan behind a 2-byte little-endian length. Run it again
after a change to proto/tessera/v1/step_plan.proto; it needs protoc.

  tests/fuzz/step_plan_seeds.py proto tests/fuzz/corpus/step_plan

The plans fit the fuzzer's model and cache (vocab 256; 8 blocks of 4 tokens; one LoRA adapter,
in slot 0).
"""
import struct
import subprocess
import sys


def encode(text_format, proto_dir):
    return subprocess.run(
        ["protoc", "-I", proto_dir, "--encode=tessera.v1.StepPlan", "tessera/v1/step_plan.proto"],
        input=text_format.encode(), capture_output=True, check=True).stdout


SEEDS = {
'greedy_prefill_decode': [
 'version: STEP_PLAN_VERSION_1 step: 1 new_sequences { id: 1 tokens: [1, 10, 20, 30, 40] sampling { temperature: 0 } } block_tables { id: 1 append: [0, 1] } chunks { id: 1 start: 0 count: 5 sample: true }',
 'version: STEP_PLAN_VERSION_1 step: 2 chunks { id: 1 start: 5 count: 1 sample: true draw: 1 }',
 'version: STEP_PLAN_VERSION_1 step: 3 removed: [1]'],
'sampled_chunked_two_sequences': [
 'version: STEP_PLAN_VERSION_1 step: 1 new_sequences { id: 7 tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9] sampling { temperature: 0.8 top_k: 5 top_p: 0.9 seed: 42 logprobs: true } } new_sequences { id: 9 tokens: [100, 200] sampling { temperature: 1.0 seed: 3 } } block_tables { id: 7 append: [2, 3] } block_tables { id: 9 append: [4] } chunks { id: 7 start: 0 count: 6 } chunks { id: 9 start: 0 count: 2 sample: true }',
 'version: STEP_PLAN_VERSION_1 step: 2 block_tables { id: 7 append: [5] } chunks { id: 7 start: 6 count: 3 sample: true } chunks { id: 9 start: 2 count: 1 sample: true draw: 1 }',
 'version: STEP_PLAN_VERSION_1 step: 3 removed: [9] chunks { id: 7 start: 9 count: 1 sample: true draw: 1 }'],
'preempt_and_recompute': [
 'version: STEP_PLAN_VERSION_1 step: 1 new_sequences { id: 3 tokens: [5, 6, 7, 8] sampling { temperature: 0 } } block_tables { id: 3 append: [0] } chunks { id: 3 start: 0 count: 4 sample: true }',
 'version: STEP_PLAN_VERSION_1 step: 2 block_tables { id: 3 reset: true append: [6, 7] } chunks { id: 3 start: 0 count: 5 sample: true draw: 1 }'],
'adapter_beside_base': [
 'version: STEP_PLAN_VERSION_1 step: 1 new_sequences { id: 1 tokens: [1, 17, 200, 35, 99] sampling { temperature: 0 } adapter: 0 } new_sequences { id: 2 tokens: [1, 17, 200, 35, 99] sampling { temperature: 0 } } block_tables { id: 1 append: [0, 1] } block_tables { id: 2 append: [2, 3] } chunks { id: 1 start: 0 count: 5 sample: true } chunks { id: 2 start: 0 count: 5 sample: true }',
 'version: STEP_PLAN_VERSION_1 step: 2 chunks { id: 1 start: 5 count: 1 sample: true draw: 1 } chunks { id: 2 start: 5 count: 1 sample: true draw: 1 }',
 'version: STEP_PLAN_VERSION_1 step: 3 removed: [1, 2]'],
'adapter_slot_out_of_range': [
 'version: STEP_PLAN_VERSION_1 step: 1 new_sequences { id: 4 tokens: [9, 8, 7] sampling { temperature: 0 } adapter: 7 } block_tables { id: 4 append: [0] } chunks { id: 4 start: 0 count: 3 sample: true }'],
'shutdown': ['version: STEP_PLAN_VERSION_1 step: 4 shutdown: true'],
}


def main():
    proto_dir, out_dir = sys.argv[1], sys.argv[2]
    for name, plans in SEEDS.items():
        framed = b""
        for plan in plans:
            message = encode(plan, proto_dir)
            framed += struct.pack("<H", len(message)) + message
        with open(f"{out_dir}/{name}.bin", "wb") as out:
            out.write(framed)


if __name__ == "__main__":
    main()
