package lmi.lambda;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;

/**
 * A handler that reads the raw event and writes the raw response body. Used concurrently from several
 * threads: it must be thread-safe.
 */
public interface RequestStreamHandler {
    /** Handles one invoke; whatever is written to {@code output} is the response body. */
    void handleRequest(InputStream input, OutputStream output, Context context) throws IOException;
}
