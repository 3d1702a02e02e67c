#!/usr/bin/env python3
"""Baseline for `examples/bench_exec.rs`: the same batch of start calls made with the vendor's
official Python SDK in a thread pool, against the deployd emulator. Run by hand, not by CI:

    pip install huaweicloudsdkcodeartsdeploy
    cargo run --release -- emulator --listen 127.0.0.1:18080 --latency-ms 50 --no-auth &
    python3 scripts/bench_python_sdk.py --endpoint http://127.0.0.1:18080 --tasks 1000 --threads 50

The SDK always signs with AK/SK; the emulator started with --no-auth accepts any signature (start
it with --access-key AK:SK instead to have every signature verified).
"""

import argparse
import concurrent.futures
import time

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcodeartsdeploy.v2 import (
    CodeArtsDeployClient,
    DynamicConfigInfo,
    EnvExecutionBody,
    StartDeployTaskRequest,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", default="http://127.0.0.1:18080")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=50)
    ap.add_argument("--ak", default="BENCHAK0000000000000")
    ap.add_argument("--sk", default="bench-secret-key")
    ap.add_argument("--project-id", default="0a1b2c3d4e5f60718293a4b5c6d7e8f9")
    args = ap.parse_args()

    creds = BasicCredentials(args.ak, args.sk, args.project_id)
    client = (
        CodeArtsDeployClient.new_builder()
        .with_credentials(creds)
        .with_endpoint(args.endpoint)
        .build()
    )

    def start(i):
        body = EnvExecutionBody(
            params=[DynamicConfigInfo(key="version", value=f"1.0.{i}", type="text")],
            trigger_source="0",
        )
        req = StartDeployTaskRequest(task_id=f"{i:032x}", body=body)
        return client.start_deploy_task(req).id

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.threads) as pool:
        ids = list(pool.map(start, range(args.tasks)))
    elapsed = time.perf_counter() - t0
    started = sum(1 for i in ids if i)
    print(f"tasks={args.tasks} threads={args.threads} started={started} elapsed={elapsed:.3f}s")


if __name__ == "__main__":
    main()
