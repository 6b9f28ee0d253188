"""Reads a response-streaming invoke of an lmi-agent's Invoke API with boto3's invoke_with_response_stream.

    python3 invoke_stream.py ENDPOINT < call.json

stdin: {"function": ..., "payload": <any JSON>, "type": "RequestResponse" | "DryRun", "gate_dir": optional}.
With gate_dir, the reader is one side of a rendezvous with the function: each time the text received so far
holds one more newline (the function ended one more line), it creates gate_dir/go-<n>, which the function
waits for before it writes its next line. stdout: {"StatusCode", "ExecutedVersion", "ContentType", "RequestId",
"events": [{"PayloadChunk": text} or {"InvokeComplete": {...}}]}, or {"exception", "code", "message",
"status"} when boto3 raised. Credentials are dummies; the endpoint must be on loopback.
"""
import json
import os
import sys

import botocore.exceptions

from loopback_client import lambda_client


def main():
    endpoint = sys.argv[1]
    client = lambda_client(endpoint)
    call = json.load(sys.stdin)
    gate_dir = call.get("gate_dir")
    try:
        r = client.invoke_with_response_stream(
            FunctionName=call["function"],
            InvocationType=call.get("type", "RequestResponse"),
            Payload=json.dumps(call.get("payload", {})).encode(),
        )
    except botocore.exceptions.ClientError as e:
        json.dump({
            "exception": type(e).__name__,
            "code": e.response["Error"].get("Code"),
            "message": e.response["Error"].get("Message"),
            "status": e.response["ResponseMetadata"].get("HTTPStatusCode"),
        }, sys.stdout)
        return
    out = {
        "StatusCode": r["StatusCode"],
        "ExecutedVersion": r.get("ExecutedVersion"),
        "ContentType": r.get("ResponseStreamContentType"),
        "RequestId": r["ResponseMetadata"].get("RequestId"),
        "events": [],
    }
    text = ""
    released = 0
    for event in r.get("EventStream", []):
        if "PayloadChunk" in event:
            chunk = event["PayloadChunk"]["Payload"].decode()
            out["events"].append({"PayloadChunk": chunk})
            text += chunk
            while gate_dir and text.count("\n") > released:
                released += 1
                open(os.path.join(gate_dir, "go-%d" % released), "w").close()
        elif "InvokeComplete" in event:
            out["events"].append({"InvokeComplete": event["InvokeComplete"]})
        else:
            out["events"].append({"other": sorted(event)})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
