package lmi.lambda.runtime;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;

/**
 * The Runtime API (2018-06-01) over one shared {@link HttpClient} (HTTP/1.1, keep-alive; each thread's
 * request uses its own pooled connection). Requests that cannot reach the API are retried a few times with a
 * back-off, then fail with {@link IOException}.
 */
final class RuntimeApiClient {
    static final String ERROR_CONTENT_TYPE = "application/vnd.aws.lambda.error+json";
    private static final int ATTEMPTS = 4;

    private final HttpClient http;
    private final String base;

    RuntimeApiClient(String address) {
        this.http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        this.base = "http://" + address + "/2018-06-01/runtime";
    }

    /** {@code GET /invocation/next}: blocks until the agent hands over an invoke. */
    HttpResponse<byte[]> next() throws IOException, InterruptedException {
        return send(HttpRequest.newBuilder(URI.create(base + "/invocation/next")).GET().build());
    }

    /** {@code POST /invocation/{id}/response}; returns the status. */
    int respond(String requestId, byte[] body, String contentType) throws IOException, InterruptedException {
        HttpRequest r = HttpRequest.newBuilder(URI.create(base + "/invocation/" + pathSegment(requestId) + "/response"))
                .header("Content-Type", contentType)
                .POST(HttpRequest.BodyPublishers.ofByteArray(body))
                .build();
        return send(r).statusCode();
    }

    /** {@code POST /invocation/{id}/error}; returns the status. */
    int error(String requestId, ErrorReport report) throws IOException, InterruptedException {
        return postError("/invocation/" + pathSegment(requestId) + "/error", report, requestId);
    }

    /** {@code POST /init/error}; returns the status. */
    int initError(ErrorReport report) throws IOException, InterruptedException {
        return postError("/init/error", report, null);
    }

    private int postError(String path, ErrorReport report, String requestId)
            throws IOException, InterruptedException {
        HttpRequest r = HttpRequest.newBuilder(URI.create(base + path))
                .header("Content-Type", ERROR_CONTENT_TYPE)
                .header("Lambda-Runtime-Function-Error-Type", headerValue(report.type))
                .POST(HttpRequest.BodyPublishers.ofString(report.toJson(requestId), StandardCharsets.UTF_8))
                .build();
        return send(r).statusCode();
    }

    private HttpResponse<byte[]> send(HttpRequest request) throws IOException, InterruptedException {
        IOException last = null;
        for (int attempt = 0; attempt < ATTEMPTS; attempt++) {
            if (attempt > 0) {
                Thread.sleep(50L << attempt); // back-off before trying the connection again
            }
            try {
                return http.send(request, HttpResponse.BodyHandlers.ofByteArray());
            } catch (IOException e) {
                last = e;
            }
        }
        throw new IOException(request.method() + " " + request.uri().getPath() + " failed: " + last, last);
    }

    /** Percent-encodes everything but RFC 3986 unreserved characters. */
    static String pathSegment(String s) {
        StringBuilder b = new StringBuilder();
        for (byte c : s.getBytes(StandardCharsets.UTF_8)) {
            int u = c & 0xff;
            if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || u == '-' || u == '.'
                    || u == '_' || u == '~') {
                b.append((char) u);
            } else {
                b.append('%').append(Character.toUpperCase(Character.forDigit(u >> 4, 16)))
                        .append(Character.toUpperCase(Character.forDigit(u & 15, 16)));
            }
        }
        return b.toString();
    }

    /** A header value HttpClient accepts: printable ASCII only. */
    static String headerValue(String s) {
        StringBuilder b = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            b.append(c >= 0x20 && c < 0x7f ? c : '?');
        }
        return b.toString();
    }
}
