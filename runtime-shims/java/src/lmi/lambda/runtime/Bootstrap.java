package lmi.lambda.runtime;

import java.io.File;
import java.io.IOException;
import java.net.http.HttpResponse;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The Java runtime of lmi-agent (Lambda Runtime API 2018-06-01, LMI concurrency model): the handler is
 * loaded once, then a fixed pool of {@code AWS_LAMBDA_MAX_CONCURRENCY} threads each loops
 * {@code GET /next} → handler → {@code POST /response|/error}.
 *
 * <p>Exit status: 1 after an init error, or when a thread's {@code /next} is answered with anything but 200
 * (500: the environment is going away), or when the Runtime API stops answering, or a {@code POST} answers
 * 5xx.
 */
public final class Bootstrap {
    private Bootstrap() {}

    public static void main(String[] args) {
        JsonLog.init();
        LineCapture.install();
        String api = System.getenv("AWS_LAMBDA_RUNTIME_API");
        if (api == null || api.isEmpty()) {
            JsonLog.diag("ERROR", "AWS_LAMBDA_RUNTIME_API is not set");
            System.exit(1);
        }
        RuntimeApiClient client = new RuntimeApiClient(api);
        int threads = concurrency(System.getenv("AWS_LAMBDA_MAX_CONCURRENCY"));
        String root = System.getenv("LAMBDA_TASK_ROOT");
        File taskRoot = new File(root == null || root.isEmpty() ? System.getProperty("user.dir") : root);

        Invoker invoker;
        try {
            ClassLoader loader = TaskClassLoader.create(taskRoot);
            Thread.currentThread().setContextClassLoader(loader);
            invoker = HandlerResolver.resolve(System.getenv("_HANDLER"), loader);
        } catch (Throwable t) {
            reportInitError(client, t);
            System.exit(1);
            return;
        }

        InvokeLoop loop = new InvokeLoop(client, invoker, InvocationContext.Function.fromEnvironment(),
                Thread.currentThread().getContextClassLoader());
        AtomicInteger n = new AtomicInteger();
        ExecutorService pool = Executors.newFixedThreadPool(threads, r -> {
            Thread t = new Thread(r, "lmi-invoke-" + n.incrementAndGet());
            t.setContextClassLoader(Thread.currentThread().getContextClassLoader());
            return t;
        });
        for (int i = 0; i < threads; i++) {
            pool.execute(loop);
        }
        JsonLog.diag("INFO", "started " + threads + " invoke thread(s)");
        // The loops only return on a fatal condition; the first one ends the process.
        int code = loop.awaitExit();
        System.exit(code);
    }

    static int concurrency(String value) {
        try {
            return Math.max(Integer.parseInt(value == null ? "1" : value.trim()), 1);
        } catch (NumberFormatException e) {
            return 1;
        }
    }

    private static void reportInitError(RuntimeApiClient client, Throwable t) {
        ErrorReport report = ErrorReport.of(t);
        JsonLog.stdout(JsonLog.record("ERROR", "Init error: " + report.message, null, null, report.members()));
        try {
            int status = client.initError(report);
            if (status != 202 && status != 403) { // 403: already reported
                JsonLog.diag("WARN", "POST /runtime/init/error answered " + status);
            }
        } catch (IOException | InterruptedException e) {
            JsonLog.diag("ERROR", "cannot report the init error: " + e.getMessage());
        }
    }

    /** One thread's {@code /next} loop; every pool thread runs the same (stateless) loop. */
    static final class InvokeLoop implements Runnable {
        private final RuntimeApiClient client;
        private final Invoker invoker;
        private final InvocationContext.Function function;
        private final ClassLoader loader;
        private final Object exitLock = new Object();
        private Integer exitCode;

        InvokeLoop(RuntimeApiClient client, Invoker invoker, InvocationContext.Function function, ClassLoader loader) {
            this.client = client;
            this.invoker = invoker;
            this.function = function;
            this.loader = loader;
        }

        @Override
        public void run() {
            int code = 1;
            try {
                while (true) {
                    HttpResponse<byte[]> next = client.next();
                    if (next.statusCode() != 200) {
                        JsonLog.diag(next.statusCode() == 500 ? "INFO" : "ERROR",
                                "GET /runtime/invocation/next answered " + next.statusCode() + "; exiting");
                        break;
                    }
                    handle(next);
                }
            } catch (IOException e) {
                JsonLog.diag("ERROR", "runtime API unavailable: " + e.getMessage());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                code = 0;
            } catch (Throwable t) {
                JsonLog.diag("ERROR", "invoke thread failed: " + t);
            }
            synchronized (exitLock) {
                if (exitCode == null) {
                    exitCode = code;
                    exitLock.notifyAll();
                }
            }
        }

        int awaitExit() {
            synchronized (exitLock) {
                while (exitCode == null) {
                    try {
                        exitLock.wait();
                    } catch (InterruptedException e) {
                        return 1;
                    }
                }
                return exitCode;
            }
        }

        private void handle(HttpResponse<byte[]> next) throws IOException, InterruptedException {
            String requestId = next.headers().firstValue("Lambda-Runtime-Aws-Request-Id").orElse("");
            if (requestId.isEmpty()) {
                JsonLog.diag("ERROR", "invoke without Lambda-Runtime-Aws-Request-Id header; dropped");
                return;
            }
            JsonLog.setRequestId(requestId);
            Thread.currentThread().setContextClassLoader(loader);
            try {
                byte[] body = null;
                ErrorReport error = null;
                try {
                    body = invoker.invoke(next.body(), new InvocationContext(function, requestId, next.headers()));
                } catch (Throwable t) {
                    error = ErrorReport.of(t);
                }
                LineCapture.drainCurrentThread();
                int status;
                String path = error == null ? "/response" : "/error";
                if (error != null) {
                    JsonLog.stdout(JsonLog.record("ERROR", error.message, null, requestId, error.members()));
                }
                try {
                    status = error == null
                            ? client.respond(requestId, body, "application/json")
                            : client.error(requestId, error);
                } catch (IOException e) {
                    // The answer could not be delivered (the connection broke while it was posted): the invoke
                    // is the Runtime API's to end; this thread goes on polling. If the Runtime API itself is
                    // gone, the next /next says so.
                    JsonLog.diag("WARN", "answer not delivered: " + e.getMessage());
                    return;
                }
                if (status >= 500) {
                    throw new IOException("POST " + path + " answered " + status);
                }
                if (status != 202) { // 400 answered twice / unknown, 410 timed out, 413 too large: the invoke is gone
                    JsonLog.diag("WARN", "POST " + path + " for " + requestId + " answered " + status);
                }
            } finally {
                LineCapture.drainCurrentThread();
                JsonLog.setRequestId(null);
            }
        }
    }
}
