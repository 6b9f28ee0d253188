using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;
using System.Threading;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>
    /// JSON log records (<c>{"timestamp","level","message","logger"?,"requestId"?}</c>, one per line) and the invoke
    /// each piece of code runs for, carried by an <see cref="AsyncLocal{T}"/> so that it follows the handler's
    /// awaits, continuations and the tasks it starts.
    /// </summary>
    internal static class JsonLog
    {
        /// <summary>The <c>logger</c> field of the shim's own diagnostics.</summary>
        public const string RuntimeLogger = "lmi-runtime";

        private static readonly Dictionary<string, int> Levels = new Dictionary<string, int>
        {
            { "TRACE", 0 }, { "DEBUG", 1 }, { "INFO", 2 }, { "WARN", 3 }, { "ERROR", 4 }, { "FATAL", 5 },
        };

        private static readonly AsyncLocal<InvokeScope> Current = new AsyncLocal<InvokeScope>();
        private static readonly object SinkLock = new object();
        private static LogSink _out;
        private static LogSink _err;
        private static int _minLevel = 2;

        /// <summary>Opens the sinks and reads <c>AWS_LAMBDA_LOG_LEVEL</c>.</summary>
        public static void Init()
        {
            lock (SinkLock)
            {
                _out = LogSink.Open(false);
                _err = LogSink.Open(true);
            }
            string level = Environment.GetEnvironmentVariable("AWS_LAMBDA_LOG_LEVEL");
            int min;
            if (level != null && Levels.TryGetValue(level.Trim().ToUpperInvariant(), out min))
            {
                _minLevel = min;
            }
        }

        /// <summary>The invoke the calling code runs for, or null.</summary>
        public static InvokeScope Scope
        {
            get { return Current.Value; }
            set { Current.Value = value; }
        }

        /// <summary>True when records of <paramref name="level"/> pass the log level (unknown levels pass).</summary>
        public static bool Enabled(string level)
        {
            int l;
            return !Levels.TryGetValue(level, out l) || l >= _minLevel;
        }

        /// <summary>One record as JSON text; <paramref name="extra"/> (JSON members, or null) is appended.</summary>
        public static string Record(string level, string message, string logger, string requestId, string extra)
        {
            var b = new StringBuilder((message ?? "").Length + 96);
            b.Append("{\"timestamp\":\"")
                .Append(DateTime.UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture))
                .Append("\",\"level\":");
            Json.Quote(b, level);
            b.Append(",\"message\":");
            Json.Quote(b, message ?? "");
            if (logger != null)
            {
                b.Append(",\"logger\":");
                Json.Quote(b, logger);
            }
            if (requestId != null)
            {
                b.Append(",\"requestId\":");
                Json.Quote(b, requestId);
            }
            if (!string.IsNullOrEmpty(extra))
            {
                b.Append(',').Append(extra);
            }
            return b.Append('}').ToString();
        }

        public static void Stdout(string record)
        {
            Sink(false).Write(record);
        }

        public static void Stderr(string record)
        {
            Sink(true).Write(record);
        }

        /// <summary>The shim's own diagnostics, on stderr, with the current invoke's request id.</summary>
        public static void Diag(string level, string message)
        {
            var scope = Scope;
            Stderr(Record(level, message, RuntimeLogger, scope == null ? null : scope.RequestId, null));
        }

        private static LogSink Sink(bool stderr)
        {
            lock (SinkLock)
            {
                if (_out == null)
                {
                    _out = LogSink.Open(false);
                    _err = LogSink.Open(true);
                }
                return stderr ? _err : _out;
            }
        }
    }

    /// <summary>One invoke's request id and its partial lines of console output.</summary>
    internal sealed class InvokeScope
    {
        public InvokeScope(string requestId)
        {
            RequestId = requestId;
            PendingOut = new StringBuilder();
            PendingErr = new StringBuilder();
        }

        public string RequestId { get; private set; }
        public StringBuilder PendingOut { get; private set; }
        public StringBuilder PendingErr { get; private set; }
    }
}
