package lmi.lambda;

/** Writes one JSON log record per call, carrying the request id of the invoke it belongs to. */
public interface LambdaLogger {
    /** Logs {@code message} at level INFO (newlines stay inside the one record). */
    void log(String message);

    /** Logs {@code message} at {@code level} (TRACE, DEBUG, INFO, WARN, ERROR or FATAL). */
    void log(String message, String level);

    /** Logs UTF-8 bytes at level INFO. */
    default void log(byte[] message) {
        log(new String(message, java.nio.charset.StandardCharsets.UTF_8));
    }
}
