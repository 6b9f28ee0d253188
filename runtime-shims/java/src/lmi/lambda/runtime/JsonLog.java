package lmi.lambda.runtime;

import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.Locale;
import java.util.Map;

/**
 * JSON log records ({@code {"timestamp","level","message","logger"?,"requestId"?}}, one per line) and the
 * request id each thread is working for.
 */
final class JsonLog {
    /** The {@code logger} field of the shim's own diagnostics. */
    static final String RUNTIME_LOGGER = "lmi-runtime";

    private static final DateTimeFormatter TIMESTAMP =
            DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);

    private static final Map<String, Integer> LEVELS = Map.of(
            "TRACE", 0, "DEBUG", 1, "INFO", 2, "WARN", 3, "ERROR", 4, "FATAL", 5);

    /**
     * The request id of the invoke the current thread runs. Inherited by threads a handler starts, so
     * their output is attributed to the invoke that started them (a pooled thread keeps the id of the
     * invoke that created it).
     */
    private static final InheritableThreadLocal<String> REQUEST_ID = new InheritableThreadLocal<>();

    private static volatile LogSink out;
    private static volatile LogSink err;
    private static volatile int minLevel = LEVELS.get("INFO");

    /** Opens the sinks (stdout and stderr, or two log-socket connections) and reads the log level. */
    static void init() {
        out = LogSink.open(false);
        err = LogSink.open(true);
        String level = System.getenv("AWS_LAMBDA_LOG_LEVEL");
        if (level != null) {
            minLevel = LEVELS.getOrDefault(level.trim().toUpperCase(Locale.ROOT), minLevel);
        }
    }

    static String requestId() {
        return REQUEST_ID.get();
    }

    static void setRequestId(String id) {
        if (id == null) {
            REQUEST_ID.remove();
        } else {
            REQUEST_ID.set(id);
        }
    }

    /** True when records of {@code level} pass AWS_LAMBDA_LOG_LEVEL (unknown levels always pass). */
    static boolean enabled(String level) {
        return LEVELS.getOrDefault(level, Integer.MAX_VALUE) >= minLevel;
    }

    /** One record as JSON text; {@code extra} (already JSON members, or null) is appended. */
    static String record(String level, String message, String logger, String requestId, String extra) {
        StringBuilder b = new StringBuilder(message.length() + 96);
        b.append("{\"timestamp\":\"").append(TIMESTAMP.format(Instant.now())).append("\",\"level\":");
        Json.quote(b, level);
        b.append(",\"message\":");
        Json.quote(b, message);
        if (logger != null) {
            b.append(",\"logger\":");
            Json.quote(b, logger);
        }
        if (requestId != null) {
            b.append(",\"requestId\":");
            Json.quote(b, requestId);
        }
        if (extra != null && !extra.isEmpty()) {
            b.append(',').append(extra);
        }
        return b.append('}').toString();
    }

    /** Writes a record to stdout (or its log-socket connection). */
    static void stdout(String record) {
        sink(false).write(record);
    }

    /** Writes a record to stderr (or its log-socket connection). */
    static void stderr(String record) {
        sink(true).write(record);
    }

    /** The shim's own diagnostics, on stderr, with the current thread's request id. */
    static void diag(String level, String message) {
        stderr(record(level, message, RUNTIME_LOGGER, requestId(), null));
    }

    private static LogSink sink(boolean stderr) {
        LogSink s = stderr ? err : out;
        if (s == null) {
            synchronized (JsonLog.class) {
                if (out == null) {
                    out = LogSink.open(false);
                }
                if (err == null) {
                    err = LogSink.open(true);
                }
                s = stderr ? err : out;
            }
        }
        return s;
    }

    private JsonLog() {}
}
