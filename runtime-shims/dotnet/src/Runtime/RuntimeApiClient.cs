using System;
using System.Collections.Generic;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>An answer of <c>GET /invocation/next</c>.</summary>
    internal sealed class NextInvocation
    {
        public int Status { get; set; }
        public IDictionary<string, string> Headers { get; set; }
        public byte[] Body { get; set; }
    }

    /// <summary>
    /// The Runtime API (2018-06-01) over one shared <see cref="HttpClient"/>. Its connection limit per server is
    /// raised so that every poller's long poll and every held invoke's answer has a connection of its own (the
    /// .NET Framework/Mono default is 2). Requests that cannot reach the API are retried with a back-off.
    /// </summary>
    internal sealed class RuntimeApiClient
    {
        public const string ErrorContentType = "application/vnd.aws.lambda.error+json";
        private const int Attempts = 4;
        private readonly HttpClient _http;
        private readonly string _base;

        public RuntimeApiClient(string address, int connections)
        {
            var handler = new HttpClientHandler
            {
                UseProxy = false,
                AllowAutoRedirect = false,
                MaxConnectionsPerServer = Math.Max(connections, 2),
            };
            _http = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan };
            _base = "http://" + address + "/2018-06-01/runtime";
        }

        /// <summary>Waits for the agent to hand over an invoke.</summary>
        public async Task<NextInvocation> NextAsync()
        {
            using (var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Get, _base + "/invocation/next")))
            {
                var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
                foreach (var h in response.Headers)
                {
                    headers[h.Key] = string.Join(",", h.Value);
                }
                foreach (var h in response.Content.Headers)
                {
                    headers[h.Key] = string.Join(",", h.Value);
                }
                byte[] body = await response.Content.ReadAsByteArrayAsync();
                return new NextInvocation { Status = (int)response.StatusCode, Headers = headers, Body = body };
            }
        }

        /// <summary><c>POST /invocation/{id}/response</c>; returns the status.</summary>
        public Task<int> RespondAsync(string requestId, byte[] body, string contentType)
        {
            return PostAsync("/invocation/" + Uri.EscapeDataString(requestId) + "/response", body, contentType, null);
        }

        /// <summary><c>POST /invocation/{id}/error</c>; returns the status.</summary>
        public Task<int> ErrorAsync(string requestId, ErrorReport report)
        {
            return PostAsync("/invocation/" + Uri.EscapeDataString(requestId) + "/error",
                Encoding.UTF8.GetBytes(report.ToJson(requestId)), ErrorContentType, report.Type);
        }

        /// <summary><c>POST /init/error</c>; returns the status.</summary>
        public Task<int> InitErrorAsync(ErrorReport report)
        {
            return PostAsync("/init/error", Encoding.UTF8.GetBytes(report.ToJson(null)), ErrorContentType, report.Type);
        }

        private async Task<int> PostAsync(string path, byte[] body, string contentType, string errorType)
        {
            Func<HttpRequestMessage> request = () =>
            {
                var r = new HttpRequestMessage(HttpMethod.Post, _base + path) { Content = new ByteArrayContent(body) };
                r.Content.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
                r.Headers.ExpectContinue = false;
                if (errorType != null)
                {
                    r.Headers.TryAddWithoutValidation("Lambda-Runtime-Function-Error-Type", HeaderValue(errorType));
                }
                return r;
            };
            using (var response = await SendAsync(request))
            {
                return (int)response.StatusCode;
            }
        }

        private async Task<HttpResponseMessage> SendAsync(Func<HttpRequestMessage> request)
        {
            Exception last = null;
            for (int attempt = 0; attempt < Attempts; attempt++)
            {
                if (attempt > 0)
                {
                    await Task.Delay(50 << attempt); // back-off before trying the connection again
                }
                try
                {
                    return await _http.SendAsync(request(), HttpCompletionOption.ResponseContentRead);
                }
                catch (HttpRequestException e)
                {
                    last = e;
                }
            }
            throw new RuntimeApiException("Runtime API request failed: " + (last == null ? "" : last.Message), last);
        }

        /// <summary>A header value every HTTP stack accepts: printable ASCII only.</summary>
        private static string HeaderValue(string s)
        {
            var b = new StringBuilder(s.Length);
            foreach (char c in s)
            {
                b.Append(c >= 0x20 && c < 0x7f ? c : '?');
            }
            return b.ToString();
        }
    }

    /// <summary>The Runtime API cannot be reached, or answered a request with 5xx.</summary>
    internal sealed class RuntimeApiException : Exception
    {
        public RuntimeApiException(string message, Exception inner) : base(message, inner)
        {
        }
    }
}
