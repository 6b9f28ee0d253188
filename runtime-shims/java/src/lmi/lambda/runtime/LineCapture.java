package lmi.lambda.runtime;

import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

/**
 * The stream behind {@code System.out} and {@code System.err}: every complete line becomes one JSON record
 * carrying the request id of the thread that wrote it.
 *
 * <p>Each thread has its own pending partial line, so lines written at the same time by concurrent invokes
 * never mix. A thread's partial line is written when its invoke ends (see {@link #drainCurrentThread}), or
 * when it grows past {@value #MAX_PENDING} bytes.
 */
final class LineCapture extends OutputStream {
    static final int MAX_PENDING = 256 * 1024;

    private final String level;
    private final boolean stderr;
    private final ThreadLocal<ByteArrayOutputStream> pending =
            ThreadLocal.withInitial(() -> new ByteArrayOutputStream(256));

    private static volatile LineCapture out;
    private static volatile LineCapture err;

    private LineCapture(String level, boolean stderr) {
        this.level = level;
        this.stderr = stderr;
    }

    /** Replaces System.out (records at INFO) and System.err (records at ERROR). */
    static void install() {
        out = new LineCapture("INFO", false);
        err = new LineCapture("ERROR", true);
        System.setOut(new PrintStream(out, true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
    }

    /** Writes the current thread's partial lines, if any (called when an invoke ends). */
    static void drainCurrentThread() {
        System.out.flush();
        System.err.flush();
        for (LineCapture c : new LineCapture[] {out, err}) {
            if (c != null) {
                c.emitPending();
            }
        }
    }

    @Override
    public void write(int b) {
        write(new byte[] {(byte) b}, 0, 1);
    }

    @Override
    public void write(byte[] b, int off, int len) {
        ByteArrayOutputStream buf = pending.get();
        int start = off;
        int end = off + len;
        for (int i = off; i < end; i++) {
            if (b[i] == '\n') {
                buf.write(b, start, i - start);
                emitPending();
                start = i + 1;
            }
        }
        buf.write(b, start, end - start);
        if (buf.size() > MAX_PENDING) {
            emitPending();
        }
    }

    private void emitPending() {
        ByteArrayOutputStream buf = pending.get();
        if (buf.size() == 0) {
            return;
        }
        String line = buf.toString(StandardCharsets.UTF_8);
        buf.reset();
        if (line.endsWith("\r")) {
            line = line.substring(0, line.length() - 1);
        }
        String record = JsonLog.record(level, line, null, JsonLog.requestId(), null);
        if (stderr) {
            JsonLog.stderr(record);
        } else {
            JsonLog.stdout(record);
        }
    }
}
