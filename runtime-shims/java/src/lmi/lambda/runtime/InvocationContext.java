package lmi.lambda.runtime;

import java.net.http.HttpHeaders;
import lmi.lambda.Context;
import lmi.lambda.LambdaLogger;

/** The {@link Context} of one invoke: the headers of its {@code /next} answer plus the function's environment. */
final class InvocationContext implements Context {
    /** Facts about the function, read once from the environment. */
    record Function(String name, String version, int memoryMb, String logGroup, String logStream) {
        static Function fromEnvironment() {
            int memory = 0;
            try {
                memory = Integer.parseInt(env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0").trim());
            } catch (NumberFormatException e) {
                // leave 0: unknown
            }
            return new Function(env("AWS_LAMBDA_FUNCTION_NAME", null), env("AWS_LAMBDA_FUNCTION_VERSION", null),
                    memory, env("AWS_LAMBDA_LOG_GROUP_NAME", null), env("AWS_LAMBDA_LOG_STREAM_NAME", null));
        }

        private static String env(String name, String fallback) {
            String v = System.getenv(name);
            return v == null ? fallback : v;
        }
    }

    private final Function function;
    private final String requestId;
    private final long deadlineMs;
    private final String functionArn;
    private final String traceId;
    private final String clientContext;
    private final String identity;
    private final LambdaLogger logger;

    InvocationContext(Function function, String requestId, HttpHeaders headers) {
        this.function = function;
        this.requestId = requestId;
        long deadline = 0;
        try {
            deadline = Long.parseLong(headers.firstValue("Lambda-Runtime-Deadline-Ms").orElse("0").trim());
        } catch (NumberFormatException e) {
            // no usable deadline: remaining time reads 0
        }
        this.deadlineMs = deadline;
        this.functionArn = headers.firstValue("Lambda-Runtime-Invoked-Function-Arn").orElse(null);
        this.traceId = headers.firstValue("Lambda-Runtime-Trace-Id").orElse(null);
        this.clientContext = headers.firstValue("Lambda-Runtime-Client-Context").orElse(null);
        this.identity = headers.firstValue("Lambda-Runtime-Cognito-Identity").orElse(null);
        this.logger = new Logger(requestId);
    }

    @Override public String getAwsRequestId() { return requestId; }
    @Override public long getDeadlineMs() { return deadlineMs; }
    @Override public String getFunctionName() { return function.name(); }
    @Override public String getFunctionVersion() { return function.version(); }
    @Override public String getInvokedFunctionArn() { return functionArn; }
    @Override public int getMemoryLimitInMB() { return function.memoryMb(); }
    @Override public String getLogGroupName() { return function.logGroup(); }
    @Override public String getLogStreamName() { return function.logStream(); }
    @Override public String getXrayTraceId() { return traceId; }
    @Override public String getClientContextJson() { return clientContext; }
    @Override public String getIdentityJson() { return identity; }
    @Override public LambdaLogger getLogger() { return logger; }

    @Override
    public long getRemainingTimeInMillis() {
        return Math.max(deadlineMs - System.currentTimeMillis(), 0);
    }

    @Override
    public String toString() {
        return "Context(requestId=" + requestId + ", function=" + function.name() + ")";
    }

    /** Records on stdout at the given level, with this invoke's request id whatever thread logs. */
    private static final class Logger implements LambdaLogger {
        private final String requestId;

        Logger(String requestId) {
            this.requestId = requestId;
        }

        @Override
        public void log(String message) {
            log(message, "INFO");
        }

        @Override
        public void log(String message, String level) {
            String lvl = level == null ? "INFO" : level.trim().toUpperCase(java.util.Locale.ROOT);
            if (JsonLog.enabled(lvl)) {
                JsonLog.stdout(JsonLog.record(lvl, String.valueOf(message), null, requestId, null));
            }
        }
    }
}
