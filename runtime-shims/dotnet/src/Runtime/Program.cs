using System;
using System.Globalization;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>
    /// The .NET runtime of lmi-agent (Lambda Runtime API 2018-06-01, LMI concurrency model). The handler is
    /// loaded once; then <c>AWS_LAMBDA_DOTNET_PROCESSING_TASKS</c> (default <c>AWS_LAMBDA_MAX_CONCURRENCY</c>)
    /// asynchronous processing loops each poll <c>/next</c> and run the invoke as a task, so up to that many
    /// invokes are in flight at once in this one process.
    /// </summary>
    /// <remarks>
    /// Exit status 1 after an init error, when <c>/next</c> answers anything but 200 (500: the environment is
    /// going away), when the Runtime API stays unreachable, or when a POST answers 5xx.
    /// </remarks>
    public static class Program
    {
        public static int Main(string[] args)
        {
            JsonLog.Init();
            LineWriter.Install();
            string api = Environment.GetEnvironmentVariable("AWS_LAMBDA_RUNTIME_API");
            if (string.IsNullOrEmpty(api))
            {
                JsonLog.Diag("ERROR", "AWS_LAMBDA_RUNTIME_API is not set");
                return 1;
            }
            int concurrency = Count(Environment.GetEnvironmentVariable("AWS_LAMBDA_MAX_CONCURRENCY"), 1);
            int tasks = Count(Environment.GetEnvironmentVariable("AWS_LAMBDA_DOTNET_PROCESSING_TASKS"), concurrency);
            // Handlers that block (Thread.Sleep, synchronous I/O) each hold a pool thread: have that many at hand
            // instead of waiting for the pool's slow growth.
            int workers, io;
            ThreadPool.GetMinThreads(out workers, out io);
            ThreadPool.SetMinThreads(Math.Max(workers, tasks + 4), Math.Max(io, tasks + 4));

            var client = new RuntimeApiClient(api, tasks + 4);
            string root = Environment.GetEnvironmentVariable("LAMBDA_TASK_ROOT");
            string taskRoot = string.IsNullOrEmpty(root) ? Environment.CurrentDirectory : root;
            Invoker invoker;
            try
            {
                invoker = HandlerResolver.Resolve(Environment.GetEnvironmentVariable("_HANDLER"), taskRoot);
            }
            catch (Exception e)
            {
                ReportInitError(client, e);
                return 1;
            }
            var loop = new InvokeLoop(client, invoker, FunctionInfo.FromEnvironment());
            Task<int>[] loops = Enumerable.Range(0, tasks).Select(_ => Task.Run(() => loop.RunAsync())).ToArray();
            JsonLog.Diag("INFO", "started " + tasks + " processing task(s)");
            // The loops only end on a fatal condition; the first one ends the process.
            int code = loops[Task.WaitAny(loops)].Result;
            Environment.Exit(code);
            return code;
        }

        private static int Count(string value, int fallback)
        {
            int n;
            return int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out n) && n > 0 ? n : fallback;
        }

        private static void ReportInitError(RuntimeApiClient client, Exception e)
        {
            ErrorReport report = ErrorReport.Of(e);
            JsonLog.Stdout(JsonLog.Record("ERROR", "Init error: " + report.Message, null, null, report.Members()));
            try
            {
                int status = client.InitErrorAsync(report).GetAwaiter().GetResult();
                if (status != 202 && status != 403) // 403: already reported
                {
                    JsonLog.Diag("WARN", "POST /runtime/init/error answered " + status);
                }
            }
            catch (RuntimeApiException x)
            {
                JsonLog.Diag("ERROR", "cannot report the init error: " + x.Message);
            }
        }
    }

    /// <summary>One processing loop: <c>/next</c>, run the invoke as a task, answer, repeat.</summary>
    internal sealed class InvokeLoop
    {
        private readonly RuntimeApiClient _client;
        private readonly Invoker _invoker;
        private readonly FunctionInfo _function;

        public InvokeLoop(RuntimeApiClient client, Invoker invoker, FunctionInfo function)
        {
            _client = client;
            _invoker = invoker;
            _function = function;
        }

        /// <summary>Runs until a fatal condition; returns the exit status.</summary>
        public async Task<int> RunAsync()
        {
            try
            {
                while (true)
                {
                    NextInvocation next = await _client.NextAsync();
                    if (next.Status != 200)
                    {
                        JsonLog.Diag(next.Status == 500 ? "INFO" : "ERROR",
                            "GET /runtime/invocation/next answered " + next.Status + "; exiting");
                        return 1;
                    }
                    await HandleAsync(next);
                }
            }
            catch (RuntimeApiException e)
            {
                JsonLog.Diag("ERROR", "runtime API unavailable: " + e.Message);
                return 1;
            }
            catch (Exception e)
            {
                JsonLog.Diag("ERROR", "processing task failed: " + e);
                return 1;
            }
        }

        private async Task HandleAsync(NextInvocation next)
        {
            string requestId;
            if (!next.Headers.TryGetValue("Lambda-Runtime-Aws-Request-Id", out requestId) || string.IsNullOrEmpty(requestId))
            {
                JsonLog.Diag("ERROR", "invoke without Lambda-Runtime-Aws-Request-Id header; dropped");
                return;
            }
            // The scope flows into the handler's task and everything it awaits or starts; it is this method's own
            // change to the execution context, so it ends with this method.
            var scope = new InvokeScope(requestId);
            JsonLog.Scope = scope;
            try
            {
                byte[] body = null;
                ErrorReport error = null;
                try
                {
                    var context = new LambdaContext(_function, requestId, next.Headers);
                    body = await Task.Run(() => _invoker(next.Body, context));
                }
                catch (Exception e)
                {
                    error = ErrorReport.Of(e);
                }
                LineWriter.DrainScope(scope);
                int status;
                string path;
                if (error == null)
                {
                    path = "/response";
                    status = await _client.RespondAsync(requestId, body, "application/json");
                }
                else
                {
                    JsonLog.Stdout(JsonLog.Record("ERROR", error.Message, null, requestId, error.Members()));
                    path = "/error";
                    status = await _client.ErrorAsync(requestId, error);
                }
                if (status >= 500)
                {
                    throw new RuntimeApiException("POST " + path + " answered " + status, null);
                }
                if (status != 202) // 400 unknown/answered, 410 timed out, 413 too large: the invoke is gone
                {
                    JsonLog.Diag("WARN", "POST " + path + " for " + requestId + " answered " + status);
                }
            }
            finally
            {
                LineWriter.DrainScope(scope);
                JsonLog.Scope = null;
            }
        }
    }
}
