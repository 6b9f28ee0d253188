"""The boto3 Lambda client the Invoke API tests use: the agent's endpoint on loopback only, dummy credentials, and
one attempt (a throttle must reach the caller, not be retried away by the SDK)."""
import sys
import urllib.parse

import boto3
import botocore.config


def lambda_client(endpoint):
    host = urllib.parse.urlparse(endpoint).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("refusing a non-loopback endpoint: %s" % endpoint)
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=120),
    )
