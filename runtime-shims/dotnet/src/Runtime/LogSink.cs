using System;
using System.IO;
using System.Net.Sockets;
using System.Text;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>
    /// One destination of log records: the process's stdout or stderr, or a connection to the agent's log socket
    /// (<c>_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET</c>). Each record is written whole, under a lock, as one line.
    /// </summary>
    internal sealed class LogSink
    {
        private static readonly Encoding Utf8 = new UTF8Encoding(false);
        private readonly Stream _out;
        private readonly object _lock = new object();

        private LogSink(Stream output)
        {
            _out = output;
        }

        /// <summary>
        /// A sink for stdout or stderr, or for a new connection to the log socket when the agent names one
        /// (falling back to the standard stream when it cannot be reached).
        /// </summary>
        public static LogSink Open(bool stderr)
        {
            Stream std = stderr ? Console.OpenStandardError() : Console.OpenStandardOutput();
            string path = Environment.GetEnvironmentVariable("_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET");
            if (!string.IsNullOrEmpty(path))
            {
                try
                {
                    var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    socket.Connect(UnixSocketEndPoint.Create(path));
                    return new LogSink(new NetworkStream(socket, true));
                }
                catch (Exception e)
                {
                    new LogSink(std).Write(JsonLog.Record("WARN", "cannot connect to log socket " + path + ": " + e.Message,
                        JsonLog.RuntimeLogger, null, null));
                }
            }
            return new LogSink(std);
        }

        /// <summary>Writes one record (a JSON object, without newline). Failures are dropped: logs never fail an invoke.</summary>
        public void Write(string record)
        {
            byte[] line = Utf8.GetBytes(record + "\n");
            lock (_lock)
            {
                try
                {
                    _out.Write(line, 0, line.Length);
                    _out.Flush();
                }
                catch (IOException)
                {
                    // Nobody reads our logs any more.
                }
                catch (ObjectDisposedException)
                {
                }
            }
        }
    }
}
