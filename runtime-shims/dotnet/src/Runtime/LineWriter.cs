using System;
using System.IO;
using System.Text;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>
    /// The writer behind <c>Console.Out</c> and <c>Console.Error</c>: each complete line becomes one JSON record
    /// carrying the request id of the invoke whose code wrote it (see <see cref="JsonLog.Scope"/>).
    /// </summary>
    /// <remarks>
    /// Each invoke has its own pending partial line, so lines written at once by concurrent invokes never mix;
    /// output outside any invoke shares one buffer. A partial line is written when its invoke ends
    /// (<see cref="DrainScope"/>) or when it grows past <see cref="MaxPending"/> characters.
    /// </remarks>
    internal sealed class LineWriter : TextWriter
    {
        public const int MaxPending = 256 * 1024;

        private static LineWriter _stdout;
        private static LineWriter _stderr;

        private readonly string _level;
        private readonly bool _isStderr;
        private readonly StringBuilder _global = new StringBuilder();

        private LineWriter(string level, bool isStderr)
        {
            _level = level;
            _isStderr = isStderr;
        }

        public override Encoding Encoding
        {
            get { return Encoding.UTF8; }
        }

        /// <summary>Replaces Console.Out (records at INFO) and Console.Error (records at ERROR).</summary>
        public static void Install()
        {
            _stdout = new LineWriter("INFO", false);
            _stderr = new LineWriter("ERROR", true);
            Console.SetOut(_stdout);
            Console.SetError(_stderr);
        }

        /// <summary>Writes the partial lines an invoke left, if any (called when the invoke ends).</summary>
        public static void DrainScope(InvokeScope scope)
        {
            if (_stdout != null)
            {
                _stdout.Emit(scope.PendingOut, scope.RequestId);
            }
            if (_stderr != null)
            {
                _stderr.Emit(scope.PendingErr, scope.RequestId);
            }
        }

        public override void Write(char value)
        {
            Write(value.ToString());
        }

        public override void Write(char[] buffer, int index, int count)
        {
            Write(new string(buffer, index, count));
        }

        public override void Write(string value)
        {
            if (string.IsNullOrEmpty(value))
            {
                return;
            }
            var scope = JsonLog.Scope;
            StringBuilder pending = scope == null ? _global : (_isStderr ? scope.PendingErr : scope.PendingOut);
            string requestId = scope == null ? null : scope.RequestId;
            lock (pending)
            {
                int start = 0;
                for (int i = 0; i < value.Length; i++)
                {
                    if (value[i] == '\n')
                    {
                        pending.Append(value, start, i - start);
                        EmitLocked(pending, requestId);
                        start = i + 1;
                    }
                }
                pending.Append(value, start, value.Length - start);
                if (pending.Length > MaxPending)
                {
                    EmitLocked(pending, requestId);
                }
            }
        }

        public override void Flush()
        {
            // Partial lines wait for their newline or the end of their invoke.
        }

        private void Emit(StringBuilder pending, string requestId)
        {
            lock (pending)
            {
                EmitLocked(pending, requestId);
            }
        }

        private void EmitLocked(StringBuilder pending, string requestId)
        {
            if (pending.Length == 0)
            {
                return;
            }
            string line = pending.ToString();
            pending.Length = 0;
            if (line.EndsWith("\r", StringComparison.Ordinal))
            {
                line = line.Substring(0, line.Length - 1);
            }
            string record = JsonLog.Record(_level, line, null, requestId, null);
            if (_isStderr)
            {
                JsonLog.Stderr(record);
            }
            else
            {
                JsonLog.Stdout(record);
            }
        }
    }
}
