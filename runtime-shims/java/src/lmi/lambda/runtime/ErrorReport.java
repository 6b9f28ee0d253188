package lmi.lambda.runtime;

import java.util.ArrayList;
import java.util.List;

/**
 * The body of {@code /error} and {@code /init/error}:
 * {@code {"errorMessage","errorType","stackTrace":[...],"cause"?,"requestId"?}}.
 *
 * <p>The error type of an exception is its class name ({@code java.lang.IllegalArgumentException}); a
 * {@link Fault} gives its {@code Runtime.*} type. Stack frames of the shim and of reflection are cut off, so
 * the trace ends at the handler. Causes are nested (at most {@value #MAX_CAUSES} deep).
 */
final class ErrorReport {
    static final int MAX_CAUSES = 5;
    private static final int MAX_FRAMES = 256;
    private static final int MAX_MESSAGE = 64 * 1024;

    final String type;
    final String message;
    final List<String> stackTrace;
    private final ErrorReport cause;

    private ErrorReport(String type, String message, List<String> stackTrace, ErrorReport cause) {
        this.type = type;
        this.message = message;
        this.stackTrace = stackTrace;
        this.cause = cause;
    }

    static ErrorReport of(Throwable t) {
        return of(t, 0);
    }

    private static ErrorReport of(Throwable t, int depth) {
        if (t instanceof Fault f) {
            return new ErrorReport(f.type(), f.getMessage(), List.of(), null);
        }
        String message = t.getMessage() == null ? "" : t.getMessage();
        if (message.length() > MAX_MESSAGE) {
            message = message.substring(0, MAX_MESSAGE);
        }
        Throwable c = t.getCause();
        ErrorReport cause = c != null && c != t && depth < MAX_CAUSES ? of(c, depth + 1) : null;
        return new ErrorReport(t.getClass().getName(), message, frames(t.getStackTrace()), cause);
    }

    /** The frames of user code: everything above the first frame of the shim or of reflection. */
    static List<String> frames(StackTraceElement[] trace) {
        List<String> out = new ArrayList<>();
        for (StackTraceElement e : trace) {
            if (isRuntimeFrame(e.getClassName())) {
                break;
            }
            if (out.size() == MAX_FRAMES) {
                out.add("...");
                break;
            }
            out.add(e.toString());
        }
        if (out.isEmpty()) {
            for (int i = 0; i < Math.min(trace.length, MAX_FRAMES); i++) {
                out.add(trace[i].toString());
            }
        }
        return out;
    }

    private static boolean isRuntimeFrame(String cls) {
        return cls.startsWith("lmi.lambda.runtime.") || cls.startsWith("jdk.internal.reflect.")
                || cls.startsWith("java.lang.reflect.") || cls.startsWith("java.lang.invoke.")
                || cls.equals("java.lang.Class");
    }

    /** The members of this report, without braces, for a log record. */
    String members() {
        String json = toJson(null);
        return json.substring(1, json.length() - 1);
    }

    /** The JSON body, with {@code requestId} when given. */
    String toJson(String requestId) {
        Json j = Json.object().field("errorMessage", message).field("errorType", type).field("stackTrace", stackTrace);
        if (cause != null) {
            j.raw("cause", cause.toJson(null));
        }
        return j.field("requestId", requestId).toString();
    }
}
