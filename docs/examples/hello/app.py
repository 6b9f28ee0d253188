"""The example function of the README: greets the name in the event and logs one line."""
import logging

log = logging.getLogger("hello")
log.setLevel(logging.INFO)


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    log.info("greeting %s", name)
    return {"message": "hello, %s" % name, "requestId": context.aws_request_id}
