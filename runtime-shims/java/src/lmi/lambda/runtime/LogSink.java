package lmi.lambda.runtime;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;

/**
 * One destination of log records: the process's stdout or stderr, or a connection to the agent's log
 * socket ({@code _LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET}). Every record is written whole, under a lock,
 * as one line, so records of concurrent invokes never interleave.
 */
final class LogSink {
    private final OutputStream out;

    private LogSink(OutputStream out) {
        this.out = out;
    }

    /**
     * A sink for file descriptor 1 or 2, or for a new connection to the log socket when the agent names
     * one (falling back to the descriptor when the socket cannot be reached).
     */
    static LogSink open(boolean stderr) {
        FileOutputStream fd = new FileOutputStream(stderr ? FileDescriptor.err : FileDescriptor.out);
        String socket = System.getenv("_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET");
        if (socket != null && !socket.isEmpty()) {
            try {
                SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX);
                ch.connect(UnixDomainSocketAddress.of(socket));
                return new LogSink(Channels.newOutputStream(ch));
            } catch (IOException | RuntimeException e) {
                String warn = JsonLog.record("WARN", "cannot connect to log socket " + socket + ": " + e,
                        JsonLog.RUNTIME_LOGGER, null, null);
                writeTo(fd, warn);
            }
        }
        return new LogSink(fd);
    }

    /** Writes one record (a JSON object without its newline). Failures are dropped: logs never fail an invoke. */
    void write(String record) {
        writeTo(out, record);
    }

    private static void writeTo(OutputStream out, String record) {
        byte[] line = (record + "\n").getBytes(StandardCharsets.UTF_8);
        synchronized (out) {
            try {
                out.write(line);
                out.flush();
            } catch (IOException e) {
                // Nobody reads our logs any more; nothing sensible is left to do with the record.
            }
        }
    }
}
