package lmi.lambda;

/**
 * What a handler knows about the invoke it is running and the function it belongs to.
 *
 * <p>One instance per invoke; it may be used from any thread while the invoke runs.
 */
public interface Context {
    /** The request id of this invoke ({@code Lambda-Runtime-Aws-Request-Id}). */
    String getAwsRequestId();

    /** Milliseconds left until this invoke's deadline; 0 once it has passed. */
    long getRemainingTimeInMillis();

    /** The deadline of this invoke, in milliseconds since the Unix epoch. */
    long getDeadlineMs();

    /** {@code AWS_LAMBDA_FUNCTION_NAME}. */
    String getFunctionName();

    /** {@code AWS_LAMBDA_FUNCTION_VERSION}. */
    String getFunctionVersion();

    /** The ARN the caller invoked ({@code Lambda-Runtime-Invoked-Function-Arn}). */
    String getInvokedFunctionArn();

    /** {@code AWS_LAMBDA_FUNCTION_MEMORY_SIZE}, in MB (0 when unset). */
    int getMemoryLimitInMB();

    /** {@code AWS_LAMBDA_LOG_GROUP_NAME}. */
    String getLogGroupName();

    /** {@code AWS_LAMBDA_LOG_STREAM_NAME}. */
    String getLogStreamName();

    /** The X-Ray trace header of this invoke, or null. */
    String getXrayTraceId();

    /** The client context of this invoke as the JSON text the caller sent, or null. */
    String getClientContextJson();

    /** The Cognito identity of this invoke as JSON text, or null. */
    String getIdentityJson();

    /** A logger whose records carry this invoke's request id. */
    LambdaLogger getLogger();
}
