"""Invokes functions on an lmi-agent's Invoke API with boto3, as a user of the AWS SDK would.

    python3 invoke.py ENDPOINT < calls.json

stdin: a JSON list of calls, each {"function": ..., "payload": <any JSON or a raw string under "raw">,
"qualifier": ..., "type": "RequestResponse" | "Event" | "DryRun", "log_type": "Tail" | "None"}. stdout: a JSON
list with one result per call: the boto3 response (StatusCode, FunctionError, ExecutedVersion, Payload as text,
RequestId, and with "log_type": "Tail" the decoded X-Amz-Log-Result: Log as text, LogBytes its length), or, when
boto3 raised, {"exception": class name, "code", "message", "status", "reason", "modeled": whether it is one of
the Lambda client's modeled exceptions}. Credentials are dummies; the endpoint must be on loopback.
"""
import base64
import json
import sys

import botocore.exceptions

from loopback_client import lambda_client


def main():
    endpoint = sys.argv[1]
    client = lambda_client(endpoint)
    modeled = tuple(
        getattr(client.exceptions, name)
        for name in ("TooManyRequestsException", "ResourceNotFoundException", "InvalidRequestContentException",
                     "InvalidParameterValueException", "RequestTooLargeException")
    )
    results = []
    for call in json.load(sys.stdin):
        kwargs = {"FunctionName": call["function"], "InvocationType": call.get("type", "RequestResponse")}
        if "raw" in call:
            kwargs["Payload"] = call["raw"].encode()
        elif "payload" in call:
            kwargs["Payload"] = json.dumps(call["payload"]).encode()
        if call.get("qualifier") is not None:
            kwargs["Qualifier"] = call["qualifier"]
        if call.get("log_type") is not None:
            kwargs["LogType"] = call["log_type"]
        try:
            r = client.invoke(**kwargs)
            results.append({
                "StatusCode": r["StatusCode"],
                "FunctionError": r.get("FunctionError"),
                "ExecutedVersion": r.get("ExecutedVersion"),
                "Payload": r["Payload"].read().decode() if "Payload" in r else None,
                "RequestId": r["ResponseMetadata"].get("RequestId"),
            })
            if "LogResult" in r:
                log = base64.b64decode(r["LogResult"], validate=True)
                results[-1].update({"Log": log.decode("utf-8", "replace"), "LogBytes": len(log)})
        except botocore.exceptions.ClientError as e:
            results.append({
                "exception": type(e).__name__,
                "modeled": isinstance(e, modeled),
                "code": e.response["Error"].get("Code"),
                "message": e.response["Error"].get("Message"),
                "status": e.response["ResponseMetadata"].get("HTTPStatusCode"),
                "reason": e.response.get("Reason"),
            })
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
