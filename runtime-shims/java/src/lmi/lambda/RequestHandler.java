package lmi.lambda;

/**
 * A handler whose input is the event and whose result is the response body.
 *
 * <p>{@code I} may be {@code String} (the event as UTF-8 text, normally JSON), {@code byte[]} (the raw
 * body) or {@code Object} (treated as {@code String}). {@code O} may be {@code String} or {@code byte[]}
 * (sent unchanged: return JSON text), a {@code Number} or {@code Boolean} (sent as its JSON literal),
 * or null (sent as {@code null}). One instance serves every invoke of the environment at once, from
 * several threads: it must be thread-safe.
 */
public interface RequestHandler<I, O> {
    /** Handles one invoke. Throwing reports a function error with the exception's class name. */
    O handleRequest(I input, Context context) throws Exception;
}
