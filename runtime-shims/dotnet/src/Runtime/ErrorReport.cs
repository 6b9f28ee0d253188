using System;
using System.Collections.Generic;
using System.Reflection;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>
    /// The body of <c>/error</c> and <c>/init/error</c>:
    /// <c>{"errorMessage","errorType","stackTrace":[...],"cause"?,"requestId"?}</c>.
    /// </summary>
    /// <remarks>
    /// The error type is the exception's class name without namespace (<c>ArgumentException</c>), as AWS's .NET
    /// runtime reports it; a <see cref="Fault"/> gives its <c>Runtime.*</c> type. Reflection and task wrappers
    /// (<see cref="TargetInvocationException"/>, a one-exception <see cref="AggregateException"/>) are unwrapped,
    /// and frames of the shim and of reflection are left out of the stack trace.
    /// </remarks>
    internal sealed class ErrorReport
    {
        private const int MaxCauses = 5;
        private const int MaxFrames = 256;
        private const int MaxMessage = 64 * 1024;

        public string Type { get; private set; }
        public string Message { get; private set; }
        public IList<string> StackTrace { get; private set; }
        private ErrorReport _cause;

        public static ErrorReport Of(Exception e)
        {
            return Of(Unwrap(e), 0);
        }

        /// <summary>The exception the user's code threw, out of reflection and task wrappers.</summary>
        public static Exception Unwrap(Exception e)
        {
            while (true)
            {
                if (e is TargetInvocationException && e.InnerException != null)
                {
                    e = e.InnerException;
                }
                else if (e is TypeInitializationException && e.InnerException != null)
                {
                    e = e.InnerException;
                }
                else if (e is AggregateException && ((AggregateException)e).InnerExceptions.Count == 1)
                {
                    e = ((AggregateException)e).InnerExceptions[0];
                }
                else
                {
                    return e;
                }
            }
        }

        private static ErrorReport Of(Exception e, int depth)
        {
            var fault = e as Fault;
            if (fault != null)
            {
                return new ErrorReport { Type = fault.Type, Message = fault.Message, StackTrace = new List<string>() };
            }
            string message = e.Message ?? "";
            if (message.Length > MaxMessage)
            {
                message = message.Substring(0, MaxMessage);
            }
            var report = new ErrorReport { Type = e.GetType().Name, Message = message, StackTrace = Frames(e.StackTrace) };
            if (e.InnerException != null && depth < MaxCauses)
            {
                report._cause = Of(e.InnerException, depth + 1);
            }
            return report;
        }

        /// <summary>The frames of user code, one string each, without the shim's and reflection's frames.</summary>
        public static IList<string> Frames(string trace)
        {
            var frames = new List<string>();
            if (string.IsNullOrEmpty(trace))
            {
                return frames;
            }
            foreach (string raw in trace.Split('\n'))
            {
                string line = raw.Trim();
                if (line.Length == 0 || IsRuntimeFrame(line))
                {
                    continue;
                }
                if (frames.Count == MaxFrames)
                {
                    frames.Add("...");
                    break;
                }
                frames.Add(line);
            }
            return frames;
        }

        private static bool IsRuntimeFrame(string line)
        {
            string f = line.StartsWith("at ", StringComparison.Ordinal) ? line.Substring(3) : line;
            return f.StartsWith("Lmi.Lambda.RuntimeSupport.", StringComparison.Ordinal)
                || f.StartsWith("System.Reflection.", StringComparison.Ordinal)
                || f.StartsWith("System.RuntimeMethodHandle.", StringComparison.Ordinal)
                || f.StartsWith("System.Runtime.CompilerServices.", StringComparison.Ordinal)
                || f.StartsWith("System.Runtime.ExceptionServices.", StringComparison.Ordinal)
                || f.StartsWith("System.Threading.", StringComparison.Ordinal)
                || f.StartsWith("(wrapper ", StringComparison.Ordinal)
                || f.StartsWith("--- End of ", StringComparison.Ordinal);
        }

        /// <summary>The members of this report without braces, to merge into a log record.</summary>
        public string Members()
        {
            string json = ToJson(null);
            return json.Substring(1, json.Length - 2);
        }

        /// <summary>The JSON body, with <c>requestId</c> when given.</summary>
        public string ToJson(string requestId)
        {
            var j = Json.Object().Field("errorMessage", Message).Field("errorType", Type).Field("stackTrace", StackTrace);
            if (_cause != null)
            {
                j.Raw("cause", _cause.ToJson(null));
            }
            return j.Field("requestId", requestId).ToString();
        }
    }
}
