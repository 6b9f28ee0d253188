"""The demo's function: sleeps a little so concurrent invokes overlap, and reports what it saw."""
import os
import time


def handler(event, context):
    action = event.get("action", "work")
    if action == "fail":
        raise ValueError("the demo asked for a function error")
    if action == "hang":
        time.sleep(float(event.get("s", 5)))
    start = time.time()
    time.sleep(float(event.get("sleep_ms", 500)) / 1000.0)
    return {
        "requestId": context.aws_request_id,
        "pid": os.getpid(),
        "start": start,
        "end": time.time(),
        "maxConcurrency": os.environ.get("AWS_LAMBDA_MAX_CONCURRENCY"),
    }
