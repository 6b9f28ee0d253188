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
    /// asynchronous processing loops poll <c>/next</c> and start each invoke as a task, up to
    /// <c>AWS_LAMBDA_MAX_CONCURRENCY</c> invokes in flight at once in this one process.
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
            // Handlers that block (Thread.Sleep, synchronous I/O) each hold a pool thread: have one per slot at
            // hand instead of waiting for the pool's slow growth.
            int workers, io;
            ThreadPool.GetMinThreads(out workers, out io);
            int threads = Math.Max(tasks, concurrency) + 4;
            ThreadPool.SetMinThreads(Math.Max(workers, threads), Math.Max(io, threads));

            // A connection for every poller's long poll and for every held invoke's answer.
            var client = new RuntimeApiClient(api, tasks + concurrency + 4);
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
            var loop = new InvokeLoop(client, invoker, FunctionInfo.FromEnvironment(), concurrency);
            Task<int>[] loops = Enumerable.Range(0, tasks).Select(_ => Task.Run(() => loop.RunAsync()))
                .Concat(new[] { loop.Fatal }).ToArray();
            JsonLog.Diag("INFO", "started " + tasks + " processing task(s) for up to " + concurrency + " invoke(s)");
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

    /// <summary>
    /// The processing loops. Each loop takes a free slot, polls <c>/next</c>, starts the invoke as a task and polls
    /// again at once, without waiting for it; the slots (<c>AWS_LAMBDA_MAX_CONCURRENCY</c>) bound the invokes the
    /// process holds, whatever the number of loops.
    /// </summary>
    internal sealed class InvokeLoop
    {
        private readonly RuntimeApiClient _client;
        private readonly Invoker _invoker;
        private readonly FunctionInfo _function;
        private readonly SemaphoreSlim _slots;
        private readonly TaskCompletionSource<int> _fatal = new TaskCompletionSource<int>();

        public InvokeLoop(RuntimeApiClient client, Invoker invoker, FunctionInfo function, int slots)
        {
            _client = client;
            _invoker = invoker;
            _function = function;
            _slots = new SemaphoreSlim(slots, slots);
        }

        /// <summary>Completes with the exit status when an invoke hits a fatal Runtime API failure.</summary>
        public Task<int> Fatal
        {
            get { return _fatal.Task; }
        }

        /// <summary>One processing loop; runs until a fatal condition and returns the exit status.</summary>
        public async Task<int> RunAsync()
        {
            try
            {
                while (true)
                {
                    await _slots.WaitAsync();
                    NextInvocation next;
                    try
                    {
                        next = await _client.NextAsync();
                    }
                    catch
                    {
                        _slots.Release();
                        throw;
                    }
                    if (next.Status != 200)
                    {
                        _slots.Release();
                        JsonLog.Diag(next.Status == 500 ? "INFO" : "ERROR",
                            "GET /runtime/invocation/next answered " + next.Status + "; exiting");
                        return 1;
                    }
                    _ = RunInvokeAsync(next); // not awaited: this loop polls again at once
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

        private async Task RunInvokeAsync(NextInvocation next)
        {
            try
            {
                await HandleAsync(next);
            }
            catch (RuntimeApiException e)
            {
                JsonLog.Diag("ERROR", "runtime API unavailable: " + e.Message);
                _fatal.TrySetResult(1);
            }
            catch (Exception e)
            {
                JsonLog.Diag("ERROR", "invoke failed in the runtime: " + e);
                _fatal.TrySetResult(1);
            }
            finally
            {
                _slots.Release();
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
                string path = error == null ? "/response" : "/error";
                if (error != null)
                {
                    JsonLog.Stdout(JsonLog.Record("ERROR", error.Message, null, requestId, error.Members()));
                }
                try
                {
                    status = error == null
                        ? await _client.RespondAsync(requestId, body, "application/json")
                        : await _client.ErrorAsync(requestId, error);
                }
                catch (Exception e)
                {
                    // The answer could not be delivered (the connection broke while it was posted): the invoke is
                    // the Runtime API's to end; this loop goes on polling. If the Runtime API itself is gone, the
                    // next /next says so.
                    JsonLog.Diag("WARN", "answer not delivered: " + e.Message);
                    return;
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
