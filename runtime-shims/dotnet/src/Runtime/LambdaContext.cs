using System;
using System.Collections.Generic;
using System.Globalization;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>Facts about the function, read once from the environment.</summary>
    internal sealed class FunctionInfo
    {
        public string Name { get; private set; }
        public string Version { get; private set; }
        public int MemoryMb { get; private set; }
        public string LogGroup { get; private set; }
        public string LogStream { get; private set; }

        public static FunctionInfo FromEnvironment()
        {
            int memory;
            if (!int.TryParse(Environment.GetEnvironmentVariable("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), NumberStyles.Integer,
                    CultureInfo.InvariantCulture, out memory))
            {
                memory = 0;
            }
            return new FunctionInfo
            {
                Name = Environment.GetEnvironmentVariable("AWS_LAMBDA_FUNCTION_NAME"),
                Version = Environment.GetEnvironmentVariable("AWS_LAMBDA_FUNCTION_VERSION"),
                MemoryMb = memory,
                LogGroup = Environment.GetEnvironmentVariable("AWS_LAMBDA_LOG_GROUP_NAME"),
                LogStream = Environment.GetEnvironmentVariable("AWS_LAMBDA_LOG_STREAM_NAME"),
            };
        }
    }

    /// <summary>The <see cref="ILambdaContext"/> of one invoke: its <c>/next</c> headers plus the function's facts.</summary>
    internal sealed class LambdaContext : ILambdaContext
    {
        private static readonly DateTime Epoch = new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc);
        private readonly FunctionInfo _function;

        public LambdaContext(FunctionInfo function, string requestId, IDictionary<string, string> headers)
        {
            _function = function;
            AwsRequestId = requestId;
            long deadline;
            DeadlineMs = long.TryParse(Header(headers, "Lambda-Runtime-Deadline-Ms"), NumberStyles.Integer,
                CultureInfo.InvariantCulture, out deadline) ? deadline : 0;
            InvokedFunctionArn = Header(headers, "Lambda-Runtime-Invoked-Function-Arn");
            TraceId = Header(headers, "Lambda-Runtime-Trace-Id");
            ClientContextJson = Header(headers, "Lambda-Runtime-Client-Context");
            IdentityJson = Header(headers, "Lambda-Runtime-Cognito-Identity");
            Logger = new ContextLogger(requestId);
        }

        public string AwsRequestId { get; private set; }
        public long DeadlineMs { get; private set; }
        public string InvokedFunctionArn { get; private set; }
        public string TraceId { get; private set; }
        public string ClientContextJson { get; private set; }
        public string IdentityJson { get; private set; }
        public ILambdaLogger Logger { get; private set; }
        public string FunctionName { get { return _function.Name; } }
        public string FunctionVersion { get { return _function.Version; } }
        public int MemoryLimitInMB { get { return _function.MemoryMb; } }
        public string LogGroupName { get { return _function.LogGroup; } }
        public string LogStreamName { get { return _function.LogStream; } }

        public TimeSpan RemainingTime
        {
            get
            {
                long now = (long)(DateTime.UtcNow - Epoch).TotalMilliseconds;
                return TimeSpan.FromMilliseconds(Math.Max(DeadlineMs - now, 0));
            }
        }

        private static string Header(IDictionary<string, string> headers, string name)
        {
            string v;
            return headers.TryGetValue(name, out v) ? v : null;
        }

        /// <summary>Records on stdout with this invoke's request id, whatever thread or task logs.</summary>
        private sealed class ContextLogger : ILambdaLogger
        {
            private readonly string _requestId;

            public ContextLogger(string requestId)
            {
                _requestId = requestId;
            }

            public void Log(string message)
            {
                Log("INFO", message);
            }

            public void LogLine(string message)
            {
                Log("INFO", message);
            }

            public void Log(string level, string message)
            {
                string l = string.IsNullOrEmpty(level) ? "INFO" : level.Trim().ToUpperInvariant();
                if (JsonLog.Enabled(l))
                {
                    JsonLog.Stdout(JsonLog.Record(l, message ?? "", null, _requestId, null));
                }
            }
        }
    }
}
