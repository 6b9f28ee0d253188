package lmi.lambda.runtime;

/** A failure the runtime itself reports, with a {@code Runtime.*} error type and no stack trace. */
final class Fault extends Exception {
    private static final long serialVersionUID = 1L;

    private final String type;

    Fault(String type, String message) {
        super(message, null, false, false);
        this.type = type;
    }

    /** The error type, e.g. {@code Runtime.ClassNotFound}. */
    String type() {
        return type;
    }
}
